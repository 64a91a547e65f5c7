"""Runs the ``xpatch`` console script as a user would, in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys

BIN = os.path.join(os.path.dirname(sys.executable), "xpatch")


def xpatch(*args: str, cwd: str | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs ``xpatch ARGS`` (the installed console script, else ``python -m xpatch_core.cli``).

    Args:
        *args: the command's arguments
        cwd (None): the working folder
        timeout (900): seconds

    Returns:
        the completed process, with text stdout and stderr
    """
    exe = [BIN] if os.path.exists(BIN) else [sys.executable, "-m", "xpatch_core.cli"]
    return subprocess.run([*exe, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout,
                          env=os.environ.copy())
