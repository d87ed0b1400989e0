"""The ``modelexport`` command run as a user runs it: a real subprocess, offline."""
from __future__ import annotations

import os
import subprocess
import sys

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
CLI = [sys.executable, "-m", "modelexport"]


def run_cli(*args, cwd=None, timeout=900, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([*CLI, *map(str, args)], capture_output=True, text=True, env=ENV, cwd=cwd,
                          timeout=timeout, **kwargs)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The single ``modelexport: error:`` line of a refused command (exit 1, no traceback)."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("modelexport: error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]
