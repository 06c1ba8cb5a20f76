"""nbgrader configuration for the course.

The course root is the repository root: nbgrader reads the sources from
solutions/ and writes the student release to course/. Everything grading
produces (submissions, autograded copies, feedback, the gradebook) lives under
autograde/ and is ignored by git.
"""
import os

c = get_config()  # noqa: F821  (nbgrader provides get_config)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

c.CourseDirectory.course_id = "efficient-attention"
c.CourseDirectory.root = ROOT
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.CourseDirectory.submitted_directory = "autograde/submitted"
c.CourseDirectory.autograded_directory = "autograde/autograded"
c.CourseDirectory.feedback_directory = "autograde/feedback"
c.CourseDirectory.solution_directory = "autograde/release_solution"
c.CourseDirectory.db_url = "sqlite:///" + os.path.join(HERE, "gradebook.db")
# solutions/NN/NN.py is the text source of NN.ipynb and holds the answers:
# it must never be copied into the release.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "*.py"]

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
# A cell that runs longer than this is interrupted and the next one runs.
c.Execute.timeout = 120
c.Execute.kernel_name = "python3"
