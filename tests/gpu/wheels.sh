#!/usr/bin/env bash
# Download into .whl/ (at the repository root, git-ignored) the Jupyter packages
# that tests/gpu/check.sh needs on a GPU machine whose python3 already has
# torch, numpy, matplotlib and pytest but no Jupyter (nor tqdm), and no network: the
# course's maintainers' device machine (Python 3.12). Versions come from
# constraints.txt. Run it here, on a machine that reaches PyPI:
#
#     bash tests/gpu/wheels.sh            # GPU_PYTHON=3.11 for a Python 3.11 machine
set -euo pipefail
cd "$(dirname "$0")/../.."
py=${GPU_PYTHON:-3.12}
rm -rf .whl
python3 -m pip download --quiet --disable-pip-version-check -d .whl -c constraints.txt \
    --only-binary=:all: --python-version "$py" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    nbformat nbclient ipykernel ipywidgets tqdm
echo "$(ls .whl | wc -l) wheels, $(du -sh .whl | cut -f1), in .whl/ for Python $py"
