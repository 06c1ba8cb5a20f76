"""What only instructors run: notebook building, grading through nbgrader, the grading sandbox,
feedback, flags, Gradescope, and the planted mistakes that prove the tests."""
