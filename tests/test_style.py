"""The code reads one way: ruff, configured in pyproject.toml, finds nothing in the tree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from opslab.config import CHECKOUT


def test_ruff_finds_nothing():
    ruff = Path(sys.executable).parent / "ruff"
    result = subprocess.run([str(ruff), "check", "--no-cache", "--output-format", "concise", "."], cwd=CHECKOUT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
