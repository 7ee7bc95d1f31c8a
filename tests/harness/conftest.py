"""Fixtures of the harness tests: a tiny curriculum and course that need no cluster.

`fixtures/` holds one assignment, `99-sample`: its nbgrader source and the release generated from
it. These tests never request the lab, api or namespace fixtures and never start the lab.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

FIXTURES = Path(__file__).parent / "fixtures"
SAMPLE = "99-sample"


def write_notebook(path: Path, *sources: str) -> Path:
    """A notebook of code cells, the first of them its papermill parameters cell."""
    cells = [new_code_cell(source) for source in sources]
    cells[0].metadata["tags"] = ["parameters"]
    notebook = new_notebook(cells=cells, metadata={"kernelspec": {
        "name": "python3", "display_name": "Python 3", "language": "python"}})
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


@pytest.fixture
def course(tmp_path) -> Path:
    """A copy of the fixture course that a test may change."""
    return Path(shutil.copytree(FIXTURES, tmp_path / "course"))
