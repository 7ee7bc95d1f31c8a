"""Grading round trip through nbgrader itself, tampering, and the committed release kept in sync."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import nbformat
import pytest
from nbgrader.coursedir import CourseDirectory
from traitlets.config.loader import PyFileConfigLoader

from opslab import cli, grading
from tests.harness.conftest import FIXTURES, SAMPLE

SOURCE = FIXTURES / "source" / SAMPLE / "sample.ipynb"
RELEASE = FIXTURES / "release" / SAMPLE / "sample.ipynb"
PARTLY_RIGHT = ("def replicas_needed(requests_per_second, capacity_per_replica):\n"
                "    return requests_per_second // capacity_per_replica  # forgets to round up, and the minimum")
TESTS, HIDDEN_TESTS, ANSWER, WRITTEN = "replicas-tests", "replicas-hidden-tests", "replicas-answer", "why-two"


def cell(notebook, grade_id):
    return next(c for c in notebook.cells if c.metadata.get("nbgrader", {}).get("grade_id") == grade_id)


def partly_right():
    """The release with an answer that passes the visible tests but not the hidden ones."""
    notebook = nbformat.read(RELEASE, as_version=4)
    cell(notebook, ANSWER).source = PARTLY_RIGHT
    cell(notebook, WRITTEN).source = "If the only replica crashes, nothing serves."
    return notebook


def tampered():
    """The release, unanswered, with its visible tests deleted and its hidden tests emptied and
    made worth more: unprotected, that would earn 10 points."""
    notebook = nbformat.read(RELEASE, as_version=4)
    notebook.cells.remove(cell(notebook, TESTS))
    cell(notebook, HIDDEN_TESTS).source = "pass  # no tests here"
    cell(notebook, HIDDEN_TESTS).metadata.nbgrader["points"] = 10
    return notebook


SUBMISSIONS = {"instructor": SOURCE, "untouched": RELEASE, "partly-right": partly_right, "tampered": tampered}


@pytest.fixture(scope="module")
def scores(tmp_path_factory):
    """Every submission graded at once, each in a course of its own; by student id."""
    paths = {}
    for student, made in SUBMISSIONS.items():
        if callable(made):
            paths[student] = tmp_path_factory.mktemp(student) / "sample.ipynb"
            nbformat.write(made(), paths[student])
        else:
            paths[student] = made
    with ThreadPoolExecutor(max_workers=3) as pool:
        graded = pool.map(lambda student: grading.autograde(paths[student], student, SAMPLE, FIXTURES), paths)
        return {student: frame.set_index("grade_id") for student, frame in zip(paths, graded)}


def test_the_instructor_version_scores_full_marks_on_every_autograded_item(scores):
    auto = scores["instructor"].loc[[TESTS, HIDDEN_TESTS]]
    assert list(auto.points) == list(auto.max_points) == [1, 2]


def test_the_untouched_student_version_scores_zero(scores):
    frame = scores["untouched"]
    assert list(frame.points) == [0, 0, 0]
    assert not frame.tampered.any()


def test_a_partly_right_submission_scores_in_between(scores):
    frame = scores["partly-right"]
    assert frame.loc[TESTS, "points"] == 1 and frame.loc[HIDDEN_TESTS, "points"] == 0
    assert not frame.tampered.any()


def test_written_answers_are_left_for_manual_grading(scores):
    for student in ("instructor", "partly-right"):
        written = scores[student].loc[WRITTEN]
        assert written.needs_manual_grade and written.points == 0 and written.max_points == 2
    assert not scores["partly-right"].loc[[TESTS, HIDDEN_TESTS]].needs_manual_grade.any()


def test_tampering_with_locked_tests_earns_nothing_and_is_reported(scores):
    tests = scores["tampered"].loc[[TESTS, HIDDEN_TESTS]]
    assert list(tests.points) == [0, 0]  # nbgrader put the deleted and the emptied tests back, and ran them
    assert list(tests.max_points) == [1, 2]  # the inflated points too
    assert not tests.needs_manual_grade.any()  # a deleted test is not left for a person to score
    assert tests.tampered.all()


def test_a_submission_that_is_not_a_notebook_is_refused(tmp_path, capsys):
    broken = tmp_path / "sample.ipynb"
    broken.write_text("not a notebook")
    assert cli.main(["grade", SAMPLE, str(broken), "--student", "s1", "--root", str(FIXTURES)]) == 1
    assert "cannot grade the submission" in capsys.readouterr().err
    with pytest.raises(grading.GradingError, match="not a notebook of 99-sample"):
        grading.autograde(tmp_path / "other.ipynb", "s1", SAMPLE, FIXTURES)
    with pytest.raises(grading.GradingError, match="student id"):
        grading.autograde(SOURCE, "../s1", SAMPLE, FIXTURES)


def test_the_committed_sample_release_is_current():
    assert grading.release_differences(SAMPLE, FIXTURES) == []
    assert cli.main(["release", "--check", "--root", str(FIXTURES)]) == 0


def test_a_changed_source_makes_the_release_stale_until_regenerated(course):
    source = course / "source" / SAMPLE / "sample.ipynb"
    notebook = nbformat.read(source, as_version=4)
    cell(notebook, HIDDEN_TESTS).source += "\nassert replicas_needed(0, 50) == 2"
    nbformat.write(notebook, source)

    assert grading.release_is_stale(SAMPLE, course)
    assert grading.release_differences(SAMPLE, course) == ["sample.ipynb: cell 6 differs from what source makes"]
    grading.generate_release(SAMPLE, course)
    assert not grading.release_is_stale(SAMPLE, course)


def test_the_course_keeps_what_grading_produces_out_of_the_repository():
    config = PyFileConfigLoader("nbgrader_config.py", path=str(grading.COURSE_CONFIG)).load_config()
    course = CourseDirectory(config=config)
    work = grading.CHECKOUT / ".opslab" / "grading"
    assert course.course_id == "opslab" and course.root == str(grading.CHECKOUT)
    for step in (course.source_directory, course.release_directory):
        assert Path(course.format_path(step, ".", "02-deployment")) == grading.CHECKOUT / step / "02-deployment"
    for step in (course.submitted_directory, course.autograded_directory, course.feedback_directory):
        assert Path(course.format_path(step, "s1", "02-deployment")).is_relative_to(work)
    assert course.db_url == f"sqlite:///{work / 'gradebook.db'}"
    assert ".opslab/" in (grading.CHECKOUT / ".gitignore").read_text().split()
