"""Module 02, deployment procedures, end to end against the live lab.

The committed student version is what the source generates; the instructor version runs headless
with `opslab run`; nbgrader grades three submissions as it should (the instructor version full
marks, the untouched release zero, a partly right one in between, the written answer left for a
person); each lab's hidden test fails when nothing is done and passes with `!kubectl` (the
instructor version) and with the Python client (the partly right one); and a cell broken on
purpose is named in the run's report.

Every notebook runs with a namespace suffix of its own, so the shared mlops-staging and
mlops-production are never touched, and the namespaces the runs make are deleted at the end. The
four executions run at once: the module's waits are mostly for pods and scrapes, not for CPU.
"""

from __future__ import annotations

import json
import secrets
import shutil
from concurrent.futures import ThreadPoolExecutor

import nbformat
import pytest

from opslab import cli, grading, platform
from opslab.run import CHECKOUT

pytestmark = pytest.mark.timeout(600)

MODULE = "02-deployment"
NOTEBOOK = f"{MODULE}.ipynb"
SOURCE = CHECKOUT / "source" / MODULE / NOTEBOOK
RELEASE = CHECKOUT / "release" / MODULE / NOTEBOOK
LABS = ["lab1-test", "lab2-verdict", "lab2-test", "lab3-test", "lab4-test"]
QUESTIONS = ["q1-test", "q2-test", "q3-test", "q4-test"]
WRITTEN = "q5-plan"

# The partly right submission: the labs it does, with the Python client instead of kubectl, and
# answers that are right, wrong, or only look right to the visible tests.
PARTLY_RIGHT = {
    "lab1-deploy": """
apps.patch_namespaced_deployment("api-server", staging, {"spec": {"template": {"spec": {"containers": [
    {"name": "api-server", "image": "registry.local/mlops/api-server:1.5.0"}]}}}})
""",
    "lab2-canary": 'verdict = "promote"  # without looking, and without acting',
    "lab3-rollback": """
apps.patch_namespaced_deployment("api-server", production, {"spec": {"template": {"spec": {"containers": [
    {"name": "api-server", "image": "registry.local/mlops/api-server:1.4.2"}]}}}})
""",
    "lab4-renew": """
import yaml
certificates = kubernetes.client.CustomObjectsApi(api)
certificates.delete_namespaced_custom_object("cert-manager.io", "v1", production, "certificates", "mlops-platform-cert")
certificates.create_namespaced_custom_object("cert-manager.io", "v1", production, "certificates",
                                             yaml.safe_load(certificates_yaml.read_text()))
""",
    "q1-answer": "most_pods, fewest_available = 12, 7",
    "q2-answer": "canary_share = 0.25",
    "q3-answer": 'rollback_command = "kubectl rollout restart deployment/api-server -n mlops-production"',
    "q4-answer": 'secret_field = "secretGenerator"',
    WRITTEN: "Roll back when the errors go up.",
}
PARTLY_RIGHT_POINTS = {"lab1-test": 3, "lab2-verdict": 1, "lab2-test": 0, "lab3-test": 4, "lab4-test": 3,
                       "q1-test": 0, "q2-test": 1, "q3-test": 0, "q4-test": 1}


def cells_by_id(notebook) -> dict:
    return {c.metadata.nbgrader["grade_id"]: c for c in notebook.cells if "nbgrader" in c.metadata}


def partly_right(path):
    notebook = nbformat.read(RELEASE, as_version=4)
    for grade_id, source in PARTLY_RIGHT.items():
        cells_by_id(notebook)[grade_id].source = source.strip()
    nbformat.write(notebook, path)
    return path


def run_headless(root, output, suffix: str) -> dict:
    """`opslab run 02-deployment` on the running lab; its report."""
    code = cli.main(["run", MODULE, "--no-lab", "--root", str(root), "--output", str(output),
                     "--param", f"namespace_suffix={suffix}"])
    report = json.loads((output / "report.json").read_text())
    report["exit_code"] = code
    return report


@pytest.fixture(scope="module")
def outcomes(lab, tmp_path_factory):
    """The headless run and the three gradings, all at once, each in namespaces of its own."""
    submissions = {"instructor": SOURCE, "untouched": RELEASE,
                   "partly-right": partly_right(tmp_path_factory.mktemp("partly-right") / NOTEBOOK)}
    suffixes = {name: f"t{secrets.token_hex(3)}" for name in ("run", *submissions)}
    try:
        with ThreadPoolExecutor(max_workers=len(suffixes)) as pool:
            run = pool.submit(run_headless, CHECKOUT, tmp_path_factory.mktemp("run"), suffixes["run"])
            graded = {student: pool.submit(grading.autograde, path, student, MODULE,
                                           parameters={"namespace_suffix": suffixes[student]})
                      for student, path in submissions.items()}
            yield {"run": run.result(), **{student: future.result().set_index("grade_id")
                                            for student, future in graded.items()}}
    finally:
        platform.delete(*(platform.namespace_for(environment, suffix) for suffix in suffixes.values()
                          for environment in platform.ENVIRONMENTS), timeout=120)


def test_the_committed_release_is_what_the_source_generates():
    assert grading.release_differences(MODULE) == [], "run `opslab release 02-deployment` and commit release/"


def test_the_module_runs_headless_on_the_lab(outcomes):
    report = outcomes["run"]
    [result] = report["notebooks"]
    assert (report["exit_code"], result["status"]) == (0, "passed"), result
    assert result["path"] == f"source/{MODULE}/{NOTEBOOK}"


def test_the_instructor_version_scores_full_marks(outcomes):
    auto = outcomes["instructor"].loc[LABS + QUESTIONS]
    assert list(auto.points) == list(auto.max_points)
    assert auto.max_points.sum() == 19


def test_the_untouched_student_version_scores_zero(outcomes):
    frame = outcomes["untouched"]
    assert frame.points.sum() == 0
    assert not frame.tampered.any()


def test_a_partly_right_submission_scores_in_between(outcomes):
    frame = outcomes["partly-right"]
    assert frame.loc[list(PARTLY_RIGHT_POINTS), "points"].to_dict() == PARTLY_RIGHT_POINTS
    assert 0 < frame.points.sum() < frame.max_points.sum()
    assert not frame.tampered.any()


def test_each_lab_passes_with_kubectl_and_the_python_client_and_fails_when_nothing_is_done(outcomes):
    hidden = ["lab1-test", "lab2-test", "lab3-test", "lab4-test"]
    assert (outcomes["untouched"].loc[hidden].points == 0).all()  # nothing done
    instructor = outcomes["instructor"].loc[hidden]  # !kubectl throughout
    assert (instructor.points == instructor.max_points).all()
    python = outcomes["partly-right"].loc[["lab1-test", "lab3-test", "lab4-test"]]  # the Python client
    assert (python.points == python.max_points).all()


def test_the_written_answer_is_left_for_manual_grading(outcomes):
    for student in ("instructor", "partly-right"):
        written = outcomes[student].loc[WRITTEN]
        assert written.needs_manual_grade and written.points == 0 and written.max_points == 4
    for student in outcomes.keys() - {"run"}:
        assert not outcomes[student].loc[LABS + QUESTIONS].needs_manual_grade.any()


def test_a_broken_cell_is_named_in_the_report(lab, tmp_path):
    root = tmp_path / "curriculum"
    copy = root / "source" / MODULE / NOTEBOOK
    copy.parent.mkdir(parents=True)
    shutil.copy(SOURCE, copy)
    notebook = nbformat.read(copy, as_version=4)
    setup = next(i for i, c in enumerate(notebook.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "setup")
    notebook.cells[setup].source = notebook.cells[setup].source.replace("platform.namespace_for(", "platform.namespace_of(")
    nbformat.write(notebook, copy)

    report = run_headless(root, tmp_path / "out", f"t{secrets.token_hex(3)}")

    [result] = report["notebooks"]
    assert report["exit_code"] == 1 and result["status"] == "failed"
    assert result["cell_index"] == setup
    assert result["error_name"] == "AttributeError" and "namespace_of" in result["error_message"]
    assert "namespace_of" in (tmp_path / "out" / "report.html").read_text()


def test_the_module_runs_in_the_guides_own_namespaces_and_reset_puts_them_back(lab, tmp_path):
    """A trainee in JupyterLab keeps the default, no suffix: the notebook then changes the shared
    mlops-staging and mlops-production, and `opslab lab reset` is how a class starts over."""
    def api_server(environment: str) -> tuple[int, list[str]]:
        current = platform.revision(platform.namespace_for(environment), "api-server")
        return current["revision"], current["images"]

    before = {environment: api_server(environment) for environment in platform.ENVIRONMENTS}
    try:
        report = run_headless(CHECKOUT, tmp_path / "out", "")
        [result] = report["notebooks"]
        assert (report["exit_code"], result["status"]) == (0, "passed"), result
        assert api_server("staging")[0] > before["staging"][0]  # Lab 1 rolled out a release there
    finally:
        lab.reset()
        for environment in platform.ENVIRONMENTS:
            platform.wait_ready(platform.namespace_for(environment))
    after = {environment: api_server(environment) for environment in platform.ENVIRONMENTS}
    assert {env: images for env, (_, images) in after.items()} == {env: images for env, (_, images) in before.items()}
    assert after["staging"][0] == 1  # recreated by reset: its rollout history starts over
