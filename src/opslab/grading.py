"""Grading with nbgrader: student versions from source, and autograding in isolated courses.

The course is configured in `autograder/nbgrader_config.py`; every nbgrader command here runs in
that folder so nbgrader finds it, and overrides the course root and gradebook where it must.

Autograding never touches the class gradebook: each module is generated once (per version of its
source) into a prepared course holding its source, its release and a gradebook that knows its
cells, and each submission is graded in a temporary copy of that course, so many can be graded at
once. Before it runs a submission, nbgrader restores every locked cell (tests included) from that
gradebook, and puts back a deleted one (the course sets `OverwriteCells.add_missing_cells`), so an
edited, emptied or deleted test cannot earn points; `tampered_cells` also says which locked cells
a student changed.
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterable
from pathlib import Path

import nbformat
import pandas as pd
from nbgrader.api import Gradebook
from papermill.iorw import load_notebook_node
from papermill.parameterize import parameterize_notebook

from opslab.config import CHECKOUT
from opslab.errors import OpslabError
from opslab.run import InvalidNotebook, new_namespace_suffix, notebook_environment, read_notebook

COURSE_CONFIG = CHECKOUT / "autograder"
GENERATE_TIMEOUT = 120  # s, `nbgrader generate_assignment` for one module
AUTOGRADE_TIMEOUT = 1800  # s, one submission: every cell, each bounded by the course's Execute.timeout
STUDENT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@-]*\Z")
# Cell metadata that editors change without changing the cell
VOLATILE_METADATA = {"collapsed", "scrolled", "execution", "jupyter", "trusted", "ExecuteTime"}
SCORE_COLUMNS = ["notebook", "grade_id", "points", "max_points", "needs_manual_grade", "tampered"]

log = logging.getLogger(__name__)


class GradingError(OpslabError):
    """A module, submission or nbgrader run that cannot be graded; the message says why."""


def assignments(root: Path = CHECKOUT) -> list[str]:
    """The modules that are nbgrader assignments: the folders of `source/`."""
    source = root / "source"
    return sorted(p.name for p in source.iterdir() if p.is_dir()) if source.is_dir() else []


def _check_module(module: str, root: Path) -> None:
    if module not in assignments(root):
        raise GradingError(f"unknown module {module!r}; the modules under {root / 'source'} are: "
                           f"{', '.join(assignments(root)) or 'none'}")


def _course(root: Path, gradebook: Path | None) -> list[str]:
    """nbgrader options for the course at `root`; `gradebook` None means none is kept."""
    return [f"--CourseDirectory.root={root.resolve()}",
            f"--CourseDirectory.db_url=sqlite:///{gradebook}" if gradebook else "--no-db"]


def _nbgrader(*arguments: str, timeout: float) -> str:
    """One nbgrader command, run where it finds the course's configuration; what it printed."""
    command = [sys.executable, "-m", "nbgrader", *arguments]
    try:
        finished = subprocess.run(command, cwd=COURSE_CONFIG, env=notebook_environment(),
                                  capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise GradingError(f"`nbgrader {arguments[0]}` did not finish within {timeout:.0f}s") from error
    if finished.returncode != 0:
        log_tail = "\n".join(finished.stderr.strip().splitlines()[-15:])
        raise GradingError(f"`nbgrader {' '.join(arguments)}` failed:\n{log_tail}")
    return finished.stdout


def generate_release(module: str, root: Path = CHECKOUT) -> Path:
    """Regenerate `release/<module>/` (the student version) from `source/<module>/`; returns it."""
    _check_module(module, root)
    _nbgrader("generate_assignment", module, "--force", *_course(root, None), timeout=GENERATE_TIMEOUT)
    return root / "release" / module


_prepared: dict[tuple[str, str, str], tempfile.TemporaryDirectory] = {}
_preparing = threading.Lock()


def _digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def prepared_course(module: str, root: Path = CHECKOUT) -> Path:
    """A course holding the module's source, its freshly generated release and a gradebook that
    knows its cells; made once per version of the source and removed when this process exits."""
    _check_module(module, root)
    key = (str(root.resolve()), module, _digest(root / "source" / module))
    with _preparing:  # submissions graded at once wait for one preparation rather than each making one
        if key not in _prepared:
            folder = tempfile.TemporaryDirectory(prefix=f"opslab-course-{module}-")
            course = Path(folder.name)
            shutil.copytree(root / "source" / module, course / "source" / module)
            _nbgrader("generate_assignment", module, "--force", *_course(course, course / "gradebook.db"),
                      timeout=GENERATE_TIMEOUT)
            _prepared[key] = folder
        return Path(_prepared[key].name)


def _cell_content(cell: nbformat.NotebookNode) -> dict:
    metadata = {k: v for k, v in cell.metadata.items() if k not in VOLATILE_METADATA}
    return {"cell_type": cell.cell_type, "source": cell.source, "metadata": metadata}


def _notebook_differences(name: str, fresh: Path, committed: Path) -> list[str]:
    try:
        committed_cells = [_cell_content(c) for c in read_notebook(committed).cells]
    except InvalidNotebook as error:
        return [str(error)]
    fresh_cells = [_cell_content(c) for c in read_notebook(fresh).cells]
    if len(fresh_cells) != len(committed_cells):
        return [f"{name}: source makes {len(fresh_cells)} cells, the release has {len(committed_cells)}"]
    return [f"{name}: cell {index} differs from what source makes"
            for index, (made, kept) in enumerate(zip(fresh_cells, committed_cells)) if made != kept]


def _files(folder: Path) -> dict[str, Path]:
    files = (p for p in folder.rglob("*") if p.is_file() and ".ipynb_checkpoints" not in p.parts)
    return {str(p.relative_to(folder)): p for p in files}


def release_differences(module: str, root: Path = CHECKOUT) -> list[str]:
    """How the committed `release/<module>/` differs from what its source generates now; cells are
    compared by type, source and metadata, ignoring editor state such as collapsed outputs."""
    fresh = _files(prepared_course(module, root) / "release" / module)
    committed_folder = root / "release" / module
    if not committed_folder.is_dir():
        return [f"release/{module}/ does not exist"]
    committed = _files(committed_folder)
    differences = []
    for name in sorted(fresh.keys() | committed.keys()):
        if name not in committed:
            differences.append(f"{name}: made from source but missing from release/{module}/")
        elif name not in fresh:
            differences.append(f"{name}: in release/{module}/ but no longer made from source")
        elif name.endswith(".ipynb"):
            differences += _notebook_differences(name, fresh[name], committed[name])
        elif fresh[name].read_bytes() != committed[name].read_bytes():
            differences.append(f"{name}: differs from source")
    return differences


def release_is_stale(module: str, root: Path = CHECKOUT) -> bool:
    """True when `release/<module>/` is not what `opslab release <module>` would make now."""
    return bool(release_differences(module, root))


def tampered_cells(submission: nbformat.NotebookNode, release: nbformat.NotebookNode) -> list[str]:
    """The grade ids of locked cells (tests, instructions) that a submission changed or removed,
    compared with the release the student was given."""
    submitted = {c.metadata.nbgrader.get("grade_id"): c for c in submission.cells
                 if "nbgrader" in c.metadata}
    changed = []
    for cell in release.cells:
        given = cell.metadata.get("nbgrader", {})
        if not given.get("locked"):
            continue
        theirs = submitted.get(given["grade_id"])
        if theirs is None or _cell_content(theirs) != _cell_content(cell):
            changed.append(given["grade_id"])
    return changed


def _read_submission(path: Path, module: str, notebooks: list[str]) -> nbformat.NotebookNode:
    if path.name not in notebooks:
        raise GradingError(f"{path.name} is not a notebook of {module}; its notebooks are: "
                           f"{', '.join(notebooks)}")
    try:
        return read_notebook(path)
    except InvalidNotebook as error:
        raise GradingError(f"cannot grade the submission: {error}") from error


def _with_parameters(path: Path, parameters: dict) -> nbformat.NotebookNode:
    """The notebook at `path` with papermill's injected-parameters cell after its parameters cell."""
    notebook = load_notebook_node(str(path))
    return parameterize_notebook(notebook, parameters, kernel_name="python3", language="python")


VALIDATE_TIMEOUT = AUTOGRADE_TIMEOUT  # s, one notebook run by `nbgrader validate`, bounded like a grading
VALIDATE_PASSED = {False: "Success! Your notebook passes all the tests.",
                   True: "Success! The notebook does not pass any tests."}


def validate(notebook: Path, *, invert: bool = False, parameters: dict | None = None) -> tuple[bool, str]:
    """What a trainee's Validate button says of `notebook`: `nbgrader validate` (with `--invert`,
    which complains of every test that passes), run on a copy that gets the papermill
    `parameters` (by default a `namespace_suffix` of its own). Returns whether it passed, and its
    report."""
    parameters = {"namespace_suffix": new_namespace_suffix(), **(parameters or {})}
    with tempfile.TemporaryDirectory(prefix="opslab-validate-") as folder:
        copy = Path(folder) / Path(notebook).name
        nbformat.write(_with_parameters(Path(notebook), parameters), copy)
        report = _nbgrader("validate", str(copy), *(["--invert"] if invert else []), timeout=VALIDATE_TIMEOUT)
    return VALIDATE_PASSED[invert] in report, report


def autograde(submission: Path | Iterable[Path], student_id: str, module: str, root: Path = CHECKOUT,
              parameters: dict | None = None) -> pd.DataFrame:
    """Autograde one student's notebook(s) of `module` in a course of their own.

    Each notebook gets the papermill `parameters` (by default its own `namespace_suffix`) injected
    after its parameters cell, so submissions graded at once against one cluster keep apart.
    Returns one row per graded cell, in notebook order: notebook, grade_id, points, max_points,
    needs_manual_grade, and tampered (the student changed that locked cell; nbgrader graded the
    cell as released).
    """
    if not STUDENT_ID.match(student_id):
        raise GradingError(f"student id {student_id!r} must be letters, digits, '.', '_', '@' or '-'")
    paths = [Path(submission)] if isinstance(submission, (str, Path)) else [Path(p) for p in submission]
    course = prepared_course(module, root)
    releases = {p.name: read_notebook(p) for p in sorted((course / "release" / module).glob("*.ipynb"))}
    submissions = {p.name: _read_submission(p, module, list(releases)) for p in paths}
    parameters = {"namespace_suffix": new_namespace_suffix(), **(parameters or {})}
    parameterized = {p.name: _with_parameters(p, parameters) for p in paths}
    rows = _grade_in_a_copy(course, module, student_id, parameterized)

    tampered = {(name, grade_id) for name, notebook in submissions.items()
                for grade_id in tampered_cells(notebook, releases[name])}
    if tampered:
        log.warning("%s changed locked cells %s; nbgrader graded them as released", student_id,
                    ", ".join(f"{name}:{grade_id}" for name, grade_id in sorted(tampered)))
    position = {(name, cell.metadata.nbgrader["grade_id"]): index for name, notebook in releases.items()
                for index, cell in enumerate(notebook.cells) if "nbgrader" in cell.metadata}
    rows.sort(key=lambda row: (row["notebook"], position.get((row["notebook"], row["grade_id"]), 0)))
    for row in rows:
        row["tampered"] = (row["notebook"], row["grade_id"]) in tampered
    return pd.DataFrame(rows, columns=SCORE_COLUMNS)


def _grade_in_a_copy(course: Path, module: str, student_id: str,
                     notebooks: dict[str, nbformat.NotebookNode]) -> list[dict]:
    """Autograde `notebooks` in a temporary copy of the prepared `course`; one dict per graded cell."""
    with tempfile.TemporaryDirectory(prefix=f"opslab-grade-{student_id}-") as folder:
        own = Path(folder)
        shutil.copytree(course, own, dirs_exist_ok=True)
        submitted = own / "submitted" / student_id / module
        submitted.mkdir(parents=True)
        for name, notebook in notebooks.items():
            nbformat.write(notebook, submitted / name)
        _nbgrader("autograde", module, f"--student={student_id}", "--force",
                  "--CourseDirectory.submitted_directory=submitted",
                  "--CourseDirectory.autograded_directory=autograded",
                  *_course(own, own / "gradebook.db"), timeout=AUTOGRADE_TIMEOUT)
        with Gradebook(f"sqlite:///{own / 'gradebook.db'}") as gradebook:
            graded = gradebook.find_submission(module, student_id).notebooks
            return [{"notebook": f"{notebook.name}.ipynb", "grade_id": grade.name, "points": grade.score,
                     "max_points": grade.max_score, "needs_manual_grade": grade.needs_manual_grade}
                    for notebook in graded for grade in notebook.grades]
