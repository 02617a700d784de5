"""Run a Python script in a fresh interpreter, for tests that need their own node."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def run_python(code: str, timeout: float = 60) -> str:
    """Run `code` (dedented) with this interpreter; assert it succeeded, return stdout."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout
