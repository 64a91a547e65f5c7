"""Checks the shape of the code: ``python -m xpatch_core.tools.check_structure``.

It reads the source (it imports nothing of xpatch) and fails, listing each
problem, when:

-   **an import cycle** joins modules of ``xpatch_core`` (every import
    counts, also one inside a function; ``from a.b import c`` is an edge to
    ``a.b.c`` when that is a module, else to ``a.b``; a package's own
    ``__init__`` is not implied by importing its submodules);
-   **a function is too long**: more than :data:`MAX_FUNCTION_LINES` lines
    of body, its docstring excluded (nested functions count in their
    parent);
-   **a module is too long**: more than :data:`MAX_MODULE_LINES` lines;
-   **a private name crosses modules**: ``from xpatch_core.m import _x`` or
    ``m._x`` on an imported xpatch module, in ``xpatch_core/`` or
    ``plugin/``;
-   **a default is defined twice**: a parameter, a CLI option or an App form
    field named like a key of :data:`xpatch_core.defaults.SALIENCY` or
    :data:`~xpatch_core.defaults.PATCHES` whose default is a literal equal
    to the table's value, anywhere but ``defaults.py`` (read it from the
    table instead). A different literal is a different default (the
    sampler's own ``temperature=1.0``, say) and is allowed; the NumPy
    layers (:data:`OWN_DEFAULTS`: the sampler and the metrics) document
    defaults of their own, at their level, and are not checked.

Exit status 0 when clean, 1 with the list of problems.
"""

from __future__ import annotations

import ast
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass

#: The longest function body allowed, in lines, docstring excluded.
MAX_FUNCTION_LINES = 80
#: The longest module allowed, in lines.
MAX_MODULE_LINES = 800

#: Modules whose functions keep defaults of their own (pure NumPy APIs).
OWN_DEFAULTS = ("xpatch_core.sampler", "xpatch_core.metrics")

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_TABLES = ("SALIENCY", "PATCHES")


@dataclass(frozen=True)
class Problem:
    """One finding.

    Attributes:
        path: the file, relative to the repository
        line: the line number
        message: what is wrong
    """

    path: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.message}"


def _modules(root: str, package: str) -> dict[str, str]:
    """Module name -> file path, for every ``.py`` file of a package."""
    out = {}
    base = os.path.join(root, package)
    for folder, _dirs, files in os.walk(base):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(folder, name)
            rel = os.path.relpath(path, root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join(rel)] = path
    return out


def _parse(path: str) -> ast.Module:
    with open(path, encoding="utf-8") as f:
        return ast.parse(f.read(), filename=path)


def _resolve_from(module: str, node: ast.ImportFrom, is_package: bool) -> str | None:
    if node.level == 0:
        return node.module
    parts = module.split(".")
    base = parts if is_package else parts[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def import_edges(modules: dict[str, str]) -> dict[str, set[str]]:
    """The import graph among ``modules`` (see the module docstring).

    Args:
        modules: module name -> file path

    Returns:
        module name -> the modules it imports
    """
    edges: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        is_package = path.endswith("__init__.py")
        for node in ast.walk(_parse(path)):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                src = _resolve_from(mod, node, is_package)
                if src is None:
                    continue
                targets = [f"{src}.{a.name}" if f"{src}.{a.name}" in modules else src for a in node.names]
            for t in targets:
                if t in modules and t != mod:
                    edges[mod].add(t)
    return edges


def find_cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module.

    Args:
        edges: an import graph

    Returns:
        a list of cycles, each a sorted list of module names
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:  # Tarjan's algorithm
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    body = fn.body
    if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
            and isinstance(body[0].value.value, str):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    """Top-level functions and methods (nested functions count in their parent)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node
        elif isinstance(node, ast.ClassDef):
            yield from _functions(node)


def check_lengths(path: str, rel: str) -> list[Problem]:
    """Functions and a module over the limits.

    Args:
        path: the file
        rel: its name in messages

    Returns:
        a list of problems
    """
    problems = []
    with open(path, encoding="utf-8") as f:
        n = sum(1 for _ in f)
    if n > MAX_MODULE_LINES:
        problems.append(Problem(rel, 1, f"module has {n} lines (limit {MAX_MODULE_LINES})"))
    for fn in _functions(_parse(path)):
        lines = _body_lines(fn)
        if lines > MAX_FUNCTION_LINES:
            problems.append(Problem(rel, fn.lineno, f"function {fn.name} has {lines} lines of body "
                                                    f"(limit {MAX_FUNCTION_LINES})"))
    return problems


def check_private(path: str, rel: str, modules: dict[str, str]) -> list[Problem]:
    """Private names of xpatch modules used from another module.

    Args:
        path: the file
        rel: its name in messages
        modules: the xpatch modules by name

    Returns:
        a list of problems
    """
    tree = _parse(path)
    aliases: set[str] = set()
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name in modules and a.asname:
                    aliases.add(a.asname)
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "xpatch_core":
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    problems.append(Problem(rel, node.lineno, f"imports private name {a.name} from {node.module}"))
                elif f"{node.module}.{a.name}" in modules:
                    aliases.add(a.asname or a.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in aliases
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            problems.append(Problem(rel, node.lineno, f"uses private name {node.value.id}.{node.attr}"))
    return problems


def _literal(node: ast.AST | None) -> object:
    try:
        return ast.literal_eval(node) if node is not None else _MISSING
    except (ValueError, TypeError, SyntaxError):
        return _MISSING


_MISSING = object()


def _same(value: object, table_value: object) -> bool:
    if value is _MISSING or table_value is None or isinstance(table_value, bool) != isinstance(value, bool):
        return False
    if isinstance(table_value, tuple) and isinstance(value, (tuple, list)):
        return tuple(value) == table_value
    return type(value) in (int, float, str) and value == table_value


def _defaults_table(root: str) -> dict[str, object]:
    tree = _parse(os.path.join(root, "xpatch_core", "defaults.py"))
    table: dict[str, object] = {}
    for node in tree.body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id in _TABLES:
            for k, v in ast.literal_eval(node.value).items():
                table.setdefault(k, v)
    return table


def _named_defaults(tree: ast.AST) -> Iterator[tuple[int, str, ast.AST]]:
    """``(line, name, default)`` of parameters, CLI options and form fields."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            positional = args.posonlyargs + args.args
            for a, d in zip(positional[len(positional) - len(args.defaults):], args.defaults):
                yield d.lineno, a.arg, d
            for a, d in zip(args.kwonlyargs, args.kw_defaults):
                if d is not None:
                    yield d.lineno, a.arg, d
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant) \
                and isinstance(node.args[0].value, str):
            default = next((k.value for k in node.keywords if k.arg == "default"), None)
            if default is not None:
                yield node.lineno, node.args[0].value.lstrip("-").replace("-", "_"), default


def check_defaults(path: str, rel: str, table: dict[str, object]) -> list[Problem]:
    """Literal defaults equal to the defaults table's.

    Args:
        path: the file
        rel: its name in messages
        table: the defaults table (``SALIENCY`` and ``PATCHES`` merged)

    Returns:
        a list of problems
    """
    problems = []
    for line, name, node in _named_defaults(_parse(path)):
        if name in table and _same(_literal(node), table[name]):
            problems.append(Problem(rel, line, f"default of {name!r} repeats the defaults table's "
                                               f"{table[name]!r}: read it from xpatch_core.defaults"))
    return problems


def check(root: str = _ROOT) -> list[Problem]:
    """Runs every check on a repository.

    Args:
        root: the repository's root folder

    Returns:
        the problems found (empty when clean)
    """
    modules = _modules(root, "xpatch_core")
    problems: list[Problem] = []
    for cycle in find_cycles(import_edges(modules)):
        problems.append(Problem(os.path.relpath(modules[cycle[0]], root), 1,
                                "import cycle: " + " -> ".join(cycle)))
    table = _defaults_table(root)
    plugin = _modules(root, "plugin")
    for name, path in sorted({**modules, **plugin}.items()):
        rel = os.path.relpath(path, root)
        if name in modules:
            problems.extend(check_lengths(path, rel))
        problems.extend(check_private(path, rel, modules))
        if name != "xpatch_core.defaults" and not name.startswith(OWN_DEFAULTS):
            problems.extend(check_defaults(path, rel, table))
    return problems


def main(argv: list[str] | None = None) -> int:
    """Prints the problems; returns 0 when clean, 1 otherwise.

    Args:
        argv: ``[root]`` (default: this repository)

    Returns:
        the exit status
    """
    args = sys.argv[1:] if argv is None else argv
    problems = check(args[0] if args else _ROOT)
    for p in problems:
        print(p)
    print(f"check_structure: {len(problems)} problem(s)" if problems else "check_structure: clean")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
