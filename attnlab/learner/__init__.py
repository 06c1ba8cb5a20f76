"""What a self-paced learner runs: the workspace in work/, the start page, make check."""
