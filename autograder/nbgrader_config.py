"""The opslab nbgrader course.

The course root is the checkout, so `source/` (instructor notebooks) and `release/` (student
versions, committed) are its top-level folders. Everything grading produces (the gradebook,
submissions, autograded and feedback copies) lives in the git-ignored `.opslab/grading/`.

nbgrader finds this file when it runs in this folder, or anywhere with this folder on the Jupyter
config path: `JUPYTER_CONFIG_PATH=autograder nbgrader generate_assignment 02-deployment`.
`opslab release` and `opslab grade` run nbgrader here; `opslab grade` overrides the root, the
gradebook and the submission folders with a temporary course per submission, so that many
submissions can be graded at once.
"""

from pathlib import Path

c = get_config()  # noqa: F821 - provided by traitlets when it loads this file

checkout = Path(__file__).resolve().parent.parent
work = ".opslab/grading"

c.CourseDirectory.course_id = "opslab"
c.CourseDirectory.root = str(checkout)
c.CourseDirectory.source_directory = "source"
c.CourseDirectory.release_directory = "release"
c.CourseDirectory.submitted_directory = f"{work}/submitted"
c.CourseDirectory.autograded_directory = f"{work}/autograded"
c.CourseDirectory.feedback_directory = f"{work}/feedback"
c.CourseDirectory.solution_directory = f"{work}/solution"
c.CourseDirectory.source_with_tests_directory = f"{work}/source_with_tests"
c.CourseDirectory.db_url = f"sqlite:///{checkout / work / 'gradebook.db'}"

# Hands-on labs wait for rollouts and alerts; each of those waits is bounded in the notebook,
# so a cell that runs longer than this is stuck.
c.Execute.timeout = 300
# A test cell the student deleted is put back and run, rather than silently skipped.
c.OverwriteCells.add_missing_cells = True
