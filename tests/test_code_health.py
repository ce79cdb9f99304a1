"""Lint and type checks of the package, as part of the suite: ruff (pyproject.toml's
[tool.ruff]) on server/, recording/ and retention/, and mypy ([tool.mypy]) through
tools/typecheck, which lays the sources out as the evr package first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINTED = ["server", "recording", "retention"]


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})


def test_ruff_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED)
    assert result.returncode == 0, f"ruff check {' '.join(LINTED)}:\n{result.stdout}{result.stderr}"


def test_mypy_is_clean():
    result = run(str(ROOT / "tools" / "typecheck"))
    assert result.returncode == 0, f"tools/typecheck:\n{result.stdout}{result.stderr}"
