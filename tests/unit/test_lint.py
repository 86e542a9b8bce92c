"""The operator package stays typed (mypy --strict) and lint-clean (ruff)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_mypy_strict() -> None:
    proc = run("mypy", "--config-file", "operator/pyproject.toml", "operator/gemma_operator")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_ruff() -> None:
    proc = run("ruff", "check", "--config", "operator/pyproject.toml", "operator/gemma_operator")
    assert proc.returncode == 0, proc.stdout + proc.stderr
