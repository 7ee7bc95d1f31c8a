"""The module contract: every module of the curriculum, held to the same promises.

For each `tests/modules/<module>.yaml`: the committed student version is what the source
generates; a trainee's Validate tells the truth (`nbgrader validate` passes on the instructor's
version, and `--invert` passes on the untouched student version: no test of it passes); nbgrader
gives the instructor's version full marks and the untouched one zero; a submission that does
every lab with the Python client (the instructor's uses `!kubectl`) and gets the quiz partly
wrong scores exactly what the data file says, strictly between; written answers wait for a
person; and a cell broken on purpose is named in the headless run's report.

Each module's six notebook runs go three at a time (more at once on two cores stretches every
bounded wait in them past its bound), each in namespaces of its own (its own `namespace_suffix`),
so the guide's mlops-staging and mlops-production are never touched; the namespaces they made are
deleted at the end.
"""

from __future__ import annotations

import json
import secrets
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
import yaml

from opslab import cli, environments, grading
from opslab.config import CHECKOUT

pytestmark = pytest.mark.timeout(3000)

CONTRACTS = Path(__file__).parent / "modules"
MODULES = sorted(path.stem for path in CONTRACTS.glob("*.yaml"))
PARALLEL_RUNS = 3


def contract(module: str) -> dict:
    data = yaml.safe_load((CONTRACTS / f"{module}.yaml").read_text())
    data["notebook"] = f"{module}.ipynb"
    data["source"] = CHECKOUT / "source" / module / data["notebook"]
    data["release"] = CHECKOUT / "release" / module / data["notebook"]
    data["autograded"] = {**data["labs"], **data["questions"]}
    return data


def cells_by_id(notebook) -> dict:
    return {c.metadata.nbgrader["grade_id"]: c for c in notebook.cells if "nbgrader" in c.metadata}


def with_cells(template: Path, sources: dict[str, str], path: Path) -> Path:
    """A copy of the notebook `template` with the cells named by grade id given new sources."""
    notebook = nbformat.read(template, as_version=4)
    cells = cells_by_id(notebook)
    unknown = sorted(set(sources) - set(cells))
    assert not unknown, f"the contract names cells the notebook does not have: {unknown}"
    for grade_id, source in sources.items():
        cells[grade_id].source = source.strip()
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def run_headless(module: str, root: Path, output: Path, suffix: str) -> dict:
    """`opslab run <module>` on the running lab; its report, with the command's exit code."""
    code = cli.main(["run", module, "--no-lab", "--root", str(root), "--output", str(output),
                     "--param", f"namespace_suffix={suffix}"])
    report = json.loads((output / "report.json").read_text())
    report["exit_code"] = code
    return report


def broken_copy(data: dict, root: Path) -> Path:
    """A curriculum holding only the module, with the contract's cell broken."""
    broken = data["broken"]
    source = nbformat.read(data["source"], as_version=4)
    cell = cells_by_id(source)[broken["cell"]]
    old, new = broken["replace"]
    assert old in cell.source, f"the cell {broken['cell']} has no {old!r} to break"
    copy = root / "source" / data["module"] / data["notebook"]
    with_cells(data["source"], {broken["cell"]: cell.source.replace(old, new)}, copy)
    return root


@pytest.fixture(scope="module", params=MODULES)
def outcomes(request, lab, tmp_path_factory):
    data = contract(request.param)
    module = data["module"]
    work = tmp_path_factory.mktemp(module)
    submissions = {"instructor": data["source"], "untouched": data["release"],
                   "python-client": with_cells(data["release"], data["python_client"]["cells"],
                                               work / "python-client" / data["notebook"])}
    runs = ("validate", "validate-invert", "broken", *submissions)
    suffixes = {name: f"t{secrets.token_hex(3)}" for name in runs}
    try:
        with ThreadPoolExecutor(max_workers=PARALLEL_RUNS) as pool:
            futures = {
                "validate": pool.submit(grading.validate, data["source"],
                                        parameters={"namespace_suffix": suffixes["validate"]}),
                "validate-invert": pool.submit(grading.validate, data["release"], invert=True,
                                               parameters={"namespace_suffix": suffixes["validate-invert"]}),
                "broken": pool.submit(run_headless, module, broken_copy(data, work / "broken"), work / "broken-run",
                                      suffixes["broken"]),
                **{student: pool.submit(grading.autograde, path, student, module,
                                        parameters={"namespace_suffix": suffixes[student]})
                   for student, path in submissions.items()},
            }
            results = {name: future.result() for name, future in futures.items()}
        for student in submissions:
            results[student] = results[student].set_index("grade_id")
        yield data, results
    finally:
        environments.delete(*(environments.namespace_for(environment, suffix) for suffix in suffixes.values()
                              for environment in environments.ENVIRONMENTS), timeout=180)


@pytest.mark.parametrize("module", MODULES)
def test_the_committed_release_is_what_the_source_generates(module):
    assert grading.release_differences(module) == [], f"run `opslab release {module}` and commit release/"


def test_validate_passes_on_the_instructors_version(outcomes):
    _, results = outcomes
    passed, report = results["validate"]
    assert passed, report


def test_validate_on_the_untouched_student_version_finds_no_test_passing(outcomes):
    """What the trainee's Validate button says before any work is done: nothing passes yet."""
    _, results = outcomes
    passed, report = results["validate-invert"]
    assert passed, report


def test_the_instructors_version_scores_full_marks(outcomes):
    data, results = outcomes
    graded = results["instructor"]
    assert graded.loc[list(data["autograded"]), "max_points"].to_dict() == data["autograded"]
    assert graded.loc[list(data["autograded"]), "points"].to_dict() == data["autograded"]


def test_the_untouched_student_version_scores_zero(outcomes):
    _, results = outcomes
    assert results["untouched"].points.sum() == 0
    assert not results["untouched"].tampered.any()


def test_every_lab_passes_with_the_python_client_and_a_partly_right_quiz_scores_in_between(outcomes):
    data, results = outcomes
    graded = results["python-client"]
    expected = data["python_client"]["points"]
    assert graded.loc[list(expected), "points"].to_dict() == expected
    assert all(expected[lab] == points for lab, points in data["labs"].items()), \
        "the python_client submission must do every lab right"
    assert 0 < graded.points.sum() < sum(data["autograded"].values())
    assert not graded.tampered.any()


def test_every_lab_fails_when_nothing_is_done_and_passes_with_kubectl(outcomes):
    data, results = outcomes
    labs = list(data["labs"])
    assert (results["untouched"].loc[labs].points == 0).all()
    assert results["instructor"].loc[labs, "points"].to_dict() == data["labs"]


def test_written_answers_are_left_for_manual_grading(outcomes):
    data, results = outcomes
    for student in ("instructor", "python-client"):
        for grade_id, points in data["written"].items():
            written = results[student].loc[grade_id]
            assert written.needs_manual_grade and written.points == 0 and written.max_points == points
    for student in ("instructor", "untouched", "python-client"):
        assert not results[student].loc[list(data["autograded"])].needs_manual_grade.any()


def test_a_broken_cell_is_named_in_the_report(outcomes):
    data, results = outcomes
    report = results["broken"]
    [result] = report["notebooks"]
    source = nbformat.read(data["source"], as_version=4)
    index = next(i for i, cell in enumerate(source.cells)
                 if cell.metadata.get("nbgrader", {}).get("grade_id") == data["broken"]["cell"])
    assert report["exit_code"] == 1 and result["status"] == "failed"
    assert result["cell_index"] == index
    broken_name = data["broken"]["replace"][1].rstrip("(").rpartition(".")[2]
    assert result["error_name"] == data["broken"]["error"] and broken_name in result["error_message"]


def test_every_module_has_a_contract():
    assert set(MODULES) == set(grading.assignments()), "add tests/modules/<module>.yaml for every module"
