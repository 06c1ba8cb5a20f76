# The efficient-attention course. `make lab` and `make test` set up everything
# they need; the other targets are for instructors.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
# nbgrader runs some of its tools (alembic) as commands: they must be on PATH.
export PATH := $(abspath $(BIN)):$(PATH)
# nbgrader reads autograde/nbgrader_config.py from its working directory.
# (SQLAlchemy inside nbgrader warns about its own session handling: not the instructor's business.)
NBGRADER := PYTHONWARNINGS=ignore ../$(BIN)/nbgrader
ASSIGNMENTS := $(notdir $(wildcard solutions/[0-9][0-9]_*))
# Extra arguments for JupyterLab and pytest, e.g. make lab LAB_ARGS=--no-browser
LAB_ARGS ?=
# Notebooks for make check (default: every workbook in work/)
NOTEBOOKS ?=
PYTEST_ARGS ?=

.PHONY: help env lab formgrader test check notebooks release collect grade regrade summary clean-grading gradescope

help:
	@echo "make lab      set up the environment if needed, copy new workbooks into work/, open it in JupyterLab"
	@echo "make formgrader  (instructors) JupyterLab with nbgrader's formgrader"
	@echo "make test     set up the environment if needed, then run the whole test suite"
	@echo "make check    run the visible tests of your notebooks in work/ (they are not changed)"
	@echo "make release  rebuild solutions/*.ipynb from their .py sources and course/ from solutions/"
	@echo "make collect FROM=dir  copy per-student folders or zips from dir into autograde/submitted"
	@echo "make grade    autograde what was submitted (in parallel, JOBS=n), write feedback, grades.csv and the summary"
	@echo "make regrade STUDENT=id  autograde one student again"
	@echo "make summary  students x workbooks: scores and failing test cells"
	@echo "make gradescope  write autograde/gradescope/<NN_topic>.zip: one Gradescope autograder per workbook"

# The virtual environment, rebuilt when a pin changes.
$(STAMP): requirements.txt constraints.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints.txt
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
	@# jsonschema's optional IRI check (pulled in by jupyter-events) builds a grammar on every
	@# import of nbformat: 2.6 of nbformat's 2.9 s, in every grading process. Nothing here checks IRIs.
	$(BIN)/python -m pip uninstall --quiet --disable-pip-version-check -y rfc3987-syntax
	@# Build matplotlib's font cache now: the first import otherwise warns on stderr inside a notebook.
	MPLBACKEND=Agg $(BIN)/python -c "import matplotlib.pyplot"
	touch $(STAMP)

env: $(STAMP)

# JupyterLab refuses to run as root (containers, Binder-like hosts) without --allow-root.
ALLOW_ROOT := $(if $(filter 0,$(shell id -u)),--allow-root,)

# Learners work in work/ (git-ignored): each workbook of course/ not there yet is
# copied in, and nothing ever overwrites one that is (attnlab/learner/workspace.py). JupyterLab
# opens on the start page, with a learner's configuration (attnlab/jupyter/learner):
# nbgrader's Validate button, not its instructor and exchange pages, nor the grading kernel.
lab: $(STAMP)
	@$(BIN)/python -m attnlab.learner.workspace course work
	JUPYTER_CONFIG_PATH=$(CURDIR)/attnlab/jupyter/learner $(BIN)/jupyter lab --ServerApp.root_dir=work --LabApp.default_url=/lab/tree/START.ipynb $(ALLOW_ROOT) $(LAB_ARGS)

# Instructors: JupyterLab on the repository with nbgrader's formgrader (it finds the
# course's config, autograde/nbgrader_config.py, through JUPYTER_CONFIG_PATH).
formgrader: $(STAMP)
	JUPYTER_CONFIG_PATH=$(CURDIR)/autograde $(BIN)/jupyter lab --ServerApp.root_dir=. --LabApp.default_url=/formgrader $(ALLOW_ROOT) $(LAB_ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# A learner's own check: the visible tests of course/*, run on copies. An edited or
# deleted test cell scores nothing; it fails only for what was attempted or changed.
check: $(STAMP)
	@$(BIN)/python -m attnlab.learner.selfcheck $(NOTEBOOKS)

notebooks: $(STAMP)
	$(BIN)/python -m attnlab.instructor.notebooks

# make check tells an edited test cell by the checksums recorded here (attnlab/data/release_test_cells.json).
release: notebooks
	@cd autograde && for a in $(ASSIGNMENTS); do $(NBGRADER) generate_assignment "$$a" --force --log-level=ERROR || exit 1; done
	@$(BIN)/python -m attnlab.learner.selfcheck --record

collect: $(STAMP)
	@test -n "$(FROM)" || (echo "usage: make collect FROM=folder-of-student-folders-or-zips" && exit 2)
	@$(BIN)/python -m attnlab.instructor.grading collect "$(FROM)"

# Grading processes for make grade (default: one per core); FORCE=1 grades again what is graded.
JOBS  ?=
FORCE ?=

# One process grades, writes grades.csv (the course's exporter: empty, not 0, where
# nothing was graded) and prints the summary. ATTNLAB_SANDBOX=off grades without the
# sandbox; the summary flags what was graded so.
grade: $(STAMP)
	@$(BIN)/python -m attnlab.instructor.grading grade $(if $(JOBS),--jobs $(JOBS)) $(if $(FORCE),--force)

regrade: $(STAMP)
	@test -n "$(STUDENT)" || (echo "usage: make regrade STUDENT=id" && exit 2)
	@$(BIN)/python -m attnlab.instructor.grading grade --student "$(STUDENT)" --force

summary: $(STAMP)
	@$(BIN)/python -m attnlab.instructor.grading summary

# One Gradescope autograder per workbook, from the same sources (attnlab/instructor/gradescope.py).
gradescope: $(STAMP)
	@$(BIN)/python -m attnlab.instructor.gradescope build

clean-grading:
	rm -rf autograde/submitted autograde/autograded autograde/feedback autograde/gradebook.db autograde/grades.csv autograde/summary.csv autograde/skipped.json autograde/unsandboxed.json autograde/graded.json autograde/grading.log autograde/.grading.lock autograde/.feedback-staging
