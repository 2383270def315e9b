#!/usr/bin/env bash
# What a session with a lent GPU (H100/H200; torch 2.11, triton 3.6, no package
# registry) runs, writing everything under $OUT. The device tool allows 10 minutes
# per command and hands the machine back 30 s after a call, so every call is
# self-contained: it builds the extension when the machine has no current build
# (about 2 min on 16 cores for the GPU's own arch only), then runs its phases.
#
#   bash bench/gpu_session.sh                 # = build gpu-tests bench-quick  (one ~9 min call)
#   bash bench/gpu_session.sh build all-tests # the whole suite on the GPU
#   BENCH_MIN=7 bash bench/gpu_session.sh build bench
#
# Phases:
#   build       pip install --no-build-isolation -e . (skipped when _C is current), info
#   gpu-tests   the tests that exercise the GPU: kernels, extension ops, fast model on CUDA
#   all-tests   the whole test suite (CPU-side tests included)
#   bench-quick the harness's quick set on CUDA (a few shapes, both models of the table)
#   bench       the harness within BENCH_MIN minutes
# Logs: $OUT/build.log, $OUT/info.txt, $OUT/tests_<phase>.log, $OUT/bench/ (JSON, md, PNG).
# Afterwards copy $OUT/bench/* into bench/results/ and commit them.
set -uo pipefail
OUT=${OUT:-/tmp/wrn_fast_gpu}
mkdir -p "$OUT/bench"
BENCH_MIN=${BENCH_MIN:-6}
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(build gpu-tests bench-quick)

{
  nvidia-smi || true
  python -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  git rev-parse HEAD 2>/dev/null || true
} > "$OUT/env.txt" 2>&1

ext_is_current() {  # _C loads with CUDA kernels and is newer than every C++/CUDA source
  local so
  so=$(ls wrn_fast/_C*.so 2>/dev/null | head -1)
  [ -n "$so" ] || return 1
  [ -z "$(find csrc setup.py -newer "$so" -type f 2>/dev/null | head -1)" ] || return 1
  python -c "import wrn_fast, sys; sys.exit(0 if wrn_fast.build_info()['extension_cuda_kernels'] else 1)" 2>/dev/null
}

build() {
  local t0=$SECONDS
  if ext_is_current; then
    echo "build: _C is current, skipped"
  else
    # Only this GPU's arch: half the compile time of the default 8.0;9.0.
    local arch
    arch=$(python -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2>/dev/null || echo 9.0)
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-16} WRN_FAST_REQUIRE_CUDA=1 \
      pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1 \
      || { echo "BUILD FAILED"; tail -60 "$OUT/build.log"; return 1; }
    echo "build: $(( SECONDS - t0 )) s"
  fi
  python -m wrn_fast info > "$OUT/info.txt" 2>&1
  head -30 "$OUT/info.txt"
}

run_tests() {  # $1 = log name, $2 = time limit (s), rest = pytest targets
  local name=$1 limit=$2 t0=$SECONDS
  shift 2
  timeout "$limit" python -m pytest -q -p no:cacheprovider -rs "$@" > "$OUT/tests_$name.log" 2>&1
  echo "tests ($name): rc=$? in $(( SECONDS - t0 )) s"
  tail -25 "$OUT/tests_$name.log"
}

GPU_TESTS=(tests/test_model_gpu.py tests/test_bn_act_conv.py tests/test_bn_act_dropout.py
           tests/test_bn_act_dropout_cpu.py tests/test_batch_norm_act.py tests/test_channel_stats.py
           tests/test_bn_finalize.py tests/test_bn_finalize_partials.py tests/test_bn_backward.py tests/test_bitmask.py
           tests/test_build_info.py)

for phase in "${PHASES[@]}"; do
  case "$phase" in
    build) build || exit 1 ;;
    gpu-tests) run_tests gpu 300 "${GPU_TESTS[@]}" ;;
    all-tests) run_tests all 540 tests ;;
    bench-quick)
      timeout 240 python -m bench.run --device cuda --quick --out "$OUT/bench" > "$OUT/bench_quick.log" 2>&1
      echo "bench-quick: rc=$?"; tail -40 "$OUT/bench_quick.log" ;;
    bench)
      timeout $(( BENCH_MIN * 60 + 60 )) python -m bench.run --device cuda --budget-min "$BENCH_MIN" \
        --out "$OUT/bench" > "$OUT/bench.log" 2>&1
      echo "bench: rc=$?"; tail -40 "$OUT/bench.log" ;;
    *) echo "unknown phase: $phase (build gpu-tests all-tests bench-quick bench)"; exit 2 ;;
  esac
done
