#!/usr/bin/env bash
# The course's checks on a CUDA GPU, in one command, for a machine whose
# python3 has a CUDA build of torch, Triton (the one torch's CUDA wheels bring;
# 3.6 or later), numpy, matplotlib and pytest (the rest comes as wheels from
# .whl/, see tests/gpu/wheels.sh):
#
#     bash tests/gpu/check.sh OUT_DIR
#
# 1. the benchmark: OUT_DIR/bench.json and OUT_DIR/bench.png, which go to
#    solutions/05_cache_benchmark/results/<device>/ and then `make release`
#    (first, because it is what the GPU time is for): six mechanisms, the
#    fused Triton MLA kernel included, at batches 8 and 64; its summary states
#    the fused kernel's share of its roofline and its speedup over PyTorch's
#    absorbed step against the targets (60 %, 2.5x);
# 2. tests/test_gpu.py: the benchmark's GPU path (bf16 at DeepSeek-V3's sizes,
#    both batches, the fused kernel's rows and split counts, the allocator's
#    bytes against the formula, the full-size prefill within memory), naive
#    against absorbed MLA, and the fused MLA decode kernel (workbook 07's
#    paged_mla_decode) against the absorbed PyTorch step in bf16 and fp32
#    (shuffled pages, sequences ending mid-page, several split counts);
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
try:
    import triton
    tri = f"triton {triton.__version__}"
except ImportError:
    tri = "NO triton (the fused kernel is skipped)"
if torch.cuda.is_available():
    print(f"python {sys.version.split()[0]}, torch {torch.__version__}, {tri}, {torch.cuda.get_device_name()}")
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
