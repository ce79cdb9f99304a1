"""Lint and type checks of the package, as part of the suite: ruff (pyproject.toml's
[tool.ruff]) on the core and every feature package, and mypy ([tool.mypy]) through
tools/typecheck, which lays the sources out as the evr package first."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The core and every feature package, as pyproject.toml maps them (the pages are not Python).
LINTED = sorted({path for name, path in tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
                 ["package-dir"].items() if name != "evr.web"})


def run(*command: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": sys.executable})


def test_ruff_is_clean():
    result = run(sys.executable, "-m", "ruff", "check", "--no-cache", *LINTED)
    assert result.returncode == 0, f"ruff check {' '.join(LINTED)}:\n{result.stdout}{result.stderr}"


def test_mypy_is_clean():
    result = run(str(ROOT / "tools" / "typecheck"))
    assert result.returncode == 0, f"tools/typecheck:\n{result.stdout}{result.stderr}"
