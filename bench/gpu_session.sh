#!/usr/bin/env bash
# Everything a session with a lent GPU (H100/H200; torch 2.11, triton 3.6, no
# package registry) should run, in one device call, writing under $OUT:
#   1. build the extension against the machine's torch (CUDA kernels included),
#   2. the whole test suite on the GPU (kernel suites run on CUDA tensors; the
#      tests/test_model_gpu.py checks run), log -> $OUT/gpu_tests.log,
#   3. the benchmark harness within a time budget -> $OUT/bench/.
# Usage (device tool):  bash bench/gpu_session.sh            (BENCH_MIN=15 by default)
# Then copy $OUT/bench/* into bench/results/ and commit them.
set -uo pipefail
OUT=${OUT:-/tmp/wrn_fast_gpu}
mkdir -p "$OUT/bench"
BENCH_MIN=${BENCH_MIN:-15}
{
  nvidia-smi || true
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1
t0=$(date +%s)
pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 || { echo "BUILD FAILED"; tail -50 "$OUT/build.log"; exit 1; }
echo "build: $(( $(date +%s) - t0 )) s"
python -m wrn_fast info > "$OUT/info.txt" 2>&1; cat "$OUT/info.txt" | head -30
t0=$(date +%s)
timeout 1200 python -m pytest -q -p no:cacheprovider tests > "$OUT/gpu_tests.log" 2>&1
tail -25 "$OUT/gpu_tests.log"
echo "tests: $(( $(date +%s) - t0 )) s"
python -m bench.run --device cuda --budget-min "$BENCH_MIN" --out "$OUT/bench" > "$OUT/bench.log" 2>&1
tail -40 "$OUT/bench.log"
