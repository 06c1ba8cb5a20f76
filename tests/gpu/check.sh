#!/usr/bin/env bash
# The course's checks on a CUDA GPU, in one command, for a machine whose
# python3 has a CUDA build of torch, numpy, matplotlib and pytest (the rest
# comes as wheels from .whl/, see tests/gpu/wheels.sh):
#
#     bash tests/gpu/check.sh OUT_DIR
#
# 1. the benchmark: OUT_DIR/bench.json and OUT_DIR/bench.png, which go to
#    solutions/05_cache_benchmark/results/<device>/ and then `make release`
#    (first, because it is what the GPU time is for);
# 2. tests/test_gpu.py: the benchmark's GPU path (bf16 at DeepSeek-V3's sizes,
#    the allocator's bytes against the formula, the full-size prefill within
#    memory) and naive against absorbed MLA on the GPU;
# 3. tests/test_execution.py: every solution notebook top to bottom, hidden
#    tests included, on the GPU (the notebooks pick CUDA when it is there).
#
# GPU_CHECK_ALLOW_CPU=1 lets it run without a GPU (a dry run of the script).
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:?usage: bash tests/gpu/check.sh OUT_DIR}
site=${TMPDIR:-/tmp}/attnlab-gpu-site
if compgen -G ".whl/*.whl" > /dev/null; then
    python3 -m pip install --quiet --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$site" .whl/*.whl \
        || { echo "the wheels in .whl/ are for another Python: run GPU_PYTHON=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")') bash tests/gpu/wheels.sh"; exit 2; }
    export PYTHONPATH=$site
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
python3 - <<'PY'
import os, sys, torch
if torch.cuda.is_available():
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {torch.cuda.get_device_name()}")
elif os.environ.get("GPU_CHECK_ALLOW_CPU"):
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}: NO GPU, a dry run on the CPU")
else:
    sys.exit("torch sees no CUDA GPU: this script is for a GPU machine (GPU_CHECK_ALLOW_CPU=1 for a dry run)")
PY
status=0
start=$SECONDS
python3 -m attnlab.lesson.bench --out "$out" || status=$?
echo "benchmark: $((SECONDS - start)) s"
start=$SECONDS
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py || status=$?
echo "GPU tests: $((SECONDS - start)) s"
start=$SECONDS
if python3 -c "import nbclient, ipykernel, ipywidgets" 2> /dev/null; then
    python3 -m pytest -q -p no:cacheprovider --durations=8 tests/test_execution.py || status=$?
else
    echo "nbclient, ipykernel or ipywidgets missing (bash tests/gpu/wheels.sh puts them in .whl/): notebooks NOT run"
    status=1
fi
echo "notebooks: $((SECONDS - start)) s"
exit $status
