"""The code's shape: no import cycle, short functions and modules, no private
name across modules, one table of defaults (``xpatch_core.tools.check_structure``)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

from xpatch_core.tools import check_structure as cs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_repository_is_clean():
    problems = cs.check(ROOT)
    assert problems == [], "\n".join(map(str, problems))


def test_the_command_exits_zero_on_this_repository():
    out = subprocess.run([sys.executable, "-m", "xpatch_core.tools.check_structure"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "clean" in out.stdout


def _tree(tmp_path, files: dict[str, str]) -> str:
    """A copy of the defaults table plus the given files, as a repository."""
    root = tmp_path / "repo"
    (root / "xpatch_core").mkdir(parents=True)
    (root / "plugin").mkdir()
    shutil.copy(os.path.join(ROOT, "xpatch_core", "defaults.py"), root / "xpatch_core" / "defaults.py")
    (root / "xpatch_core" / "__init__.py").write_text('"""pkg"""\n')
    for rel, text in files.items():
        (root / rel).write_text(textwrap.dedent(text))
    return str(root)


def test_an_import_cycle_is_found_even_inside_functions(tmp_path):
    root = _tree(tmp_path, {
        "xpatch_core/a.py": "from xpatch_core.b import g\n\ndef f():\n    return g()\n",
        "xpatch_core/b.py": "def g():\n    from xpatch_core import a\n    return a\n",
    })
    problems = [str(p) for p in cs.check(root)]
    assert any("import cycle" in p and "xpatch_core.a" in p and "xpatch_core.b" in p for p in problems), problems
    assert cs.main([root]) == 1


def test_long_functions_and_modules_are_found(tmp_path):
    body = "".join(f"    x{i} = {i}\n" for i in range(cs.MAX_FUNCTION_LINES + 1))
    short = "".join(f"    x{i} = {i}\n" for i in range(cs.MAX_FUNCTION_LINES))
    doc = '    """' + "doc\n" * 50 + '    """\n'
    root = _tree(tmp_path, {
        "xpatch_core/long.py": f"def too_long():\n{body}\n\ndef fine():\n{doc}{short}",
        "xpatch_core/big.py": "x = 1\n" * (cs.MAX_MODULE_LINES + 1),
    })
    problems = [str(p) for p in cs.check(root)]
    assert any("too_long" in p for p in problems) and not any("fine" in p for p in problems), problems
    assert any("big.py" in p and "module has" in p for p in problems), problems


def test_a_private_name_across_modules_is_found(tmp_path):
    root = _tree(tmp_path, {
        "xpatch_core/m.py": "def _hidden():\n    return 1\n",
        "xpatch_core/user.py": "from xpatch_core.m import _hidden\n",
        "plugin/op.py": "from xpatch_core import m\n\nm._hidden()\n",
    })
    problems = [str(p) for p in cs.check(root)]
    assert any("user.py" in p and "_hidden" in p for p in problems), problems
    assert any("op.py" in p and "m._hidden" in p for p in problems), problems


def test_a_default_defined_twice_is_found(tmp_path):
    from xpatch_core.defaults import PATCHES

    t = PATCHES["temperature"]
    root = _tree(tmp_path, {
        "xpatch_core/api.py": f"def run(temperature={t!r}, n=3):\n    return n\n",
        "xpatch_core/cli2.py": f"def build(g):\n    g.add_argument('--max-iou', default={PATCHES['max_iou']!r})\n",
        "plugin/form.py": f"def form(inputs):\n    inputs.int('size', default={PATCHES['size']!r})\n",
        "xpatch_core/ok.py": "from xpatch_core.defaults import PATCHES\n\n"
                             "def run(temperature=PATCHES['temperature'], n=3):\n    return n\n",
    })
    problems = [str(p) for p in cs.check(root)]
    assert any("api.py" in p and "temperature" in p for p in problems), problems
    assert any("cli2.py" in p and "max_iou" in p for p in problems), problems
    assert any("form.py" in p and "'size'" in p for p in problems), problems
    assert not any("ok.py" in p for p in problems) and not any("'n'" in p for p in problems), problems
