#!/usr/bin/env bash
# The GPU session protocol of issue 14, planned for the device tool's budget: about 15 minutes
# of device time in all (machine starts included), at most 10 minutes per command, 8 files back
# per command, no .git and no package registry there (python3 = torch 2.11 / triton 3.6).
# The plan, with the time of every phase and the exact tool calls: bench/README.md, "GPU session".
#
#   here, before the first call:  bash bench/gpu_session.sh prepare   # commit record -> bench/.session_commit
#   device call 1 (~6 min):       bash bench/gpu_session.sh check     # build sm_90, GPU test selection, table smoke
#   device call 2 (~6 min):       bash bench/gpu_session.sh table     # the table rows (layers, models, MFU)
#   later sessions:               bash bench/gpu_session.sh compile | sweep | grid
#   here, after each call:        bash bench/gpu_session.sh unpack /work/.device/<...>/wrn_fast_<phase>_<commit>.tar.gz
#
# Each phase has a wall-clock budget (PHASE_S, default per phase below) and runs its steps under
# `timeout`, each limited to what is left of it minus a margin (MARGIN_S) for packing. Everything
# a phase writes goes to $WORK (logs, commit record, JSON, streamed JSONL rows, markdown) and is
# packed into ONE archive, $OUT/wrn_fast_<phase>_<commit>.tar.gz, after every step and every 20 s
# in the background (atomically), so a command killed at any point still returns what it measured.
# $OUT also gets summary_<phase>.md (printed at the end too): 2 files of the 8 allowed.
#
# WRN_FAST_SESSION_DRY_RUN=1: the same phases on this CPU (no pip build, the test selection only
# collected, the table at toy sizes under TRITON_INTERPRET=1); tests/test_gpu_session.py runs it.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PHASE=${1:-}
[ $# -gt 0 ] && shift

case "$PHASE" in
  prepare) exec "$PY" -m bench.session prepare ;;
  unpack)
    for a in "$@"; do
      d=$("$PY" -m bench.session unpack "$a") || exit 1
      echo "unpacked into $d"
      cat "$d"/summary.md 2>/dev/null | head -40
    done
    exit 0 ;;
  check) DEFAULT_S=300 ;;
  table | compile | sweep | grid) DEFAULT_S=330 ;;
  *) echo "usage: bash bench/gpu_session.sh prepare|check|table|compile|sweep|grid|unpack ARCHIVE..." >&2; exit 2 ;;
esac

DRY=${WRN_FAST_SESSION_DRY_RUN:-0}
PHASE_S=${PHASE_S:-$DEFAULT_S}
MARGIN_S=${MARGIN_S:-20}
T0=$SECONDS
OUT=${OUT:-/tmp/wrn_fast_out}
WORK=${SESSION_WORK:-/tmp/wrn_fast_session}/$PHASE
rm -rf "$WORK"
mkdir -p "$WORK" "$OUT"
export PYTHONUNBUFFERED=1
# One tile config per kernel, picked per shape by the kernels' heuristic: no exhaustive autotuning.
export WRN_FAST_AUTOTUNE=${WRN_FAST_AUTOTUNE:-0}
# Compiled kernels kept in ignored folders of the tree: a warm machine reuses them in the next call.
mkdir -p build
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-$PWD/build/triton-cache}
export TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-$PWD/build/inductor-cache}
if [ "$DRY" = 1 ]; then
  export TRITON_INTERPRET=1
  DEVICE=cpu
else
  DEVICE=cuda
fi

"$PY" -m bench.session verify > "$WORK/commit.json" 2> "$WORK/commit.err"
SHORT=$("$PY" -c "import json,sys; print((json.load(open(sys.argv[1])).get('short_commit') or 'unknown-commit'))" \
        "$WORK/commit.json" 2>/dev/null || echo unknown-commit)
[ -f bench/.session_commit ] && cp bench/.session_commit "$WORK/session_commit.json"
ARCHIVE="$OUT/wrn_fast_${PHASE}_${SHORT}.tar.gz"
SUMMARY="$OUT/summary_${PHASE}.md"

left() { echo $(( PHASE_S - (SECONDS - T0) - MARGIN_S )); }
pack() { "$PY" -m bench.session pack "$WORK" "$ARCHIVE" > /dev/null 2>> "$WORK/pack.err"; }

# background packer: its output to /dev/null and its sleep killed with it (nothing holds our stdout)
( trap 'kill $s 2> /dev/null; exit 0' TERM; while :; do sleep 20 & s=$!; wait $s; pack; done ) > /dev/null 2>&1 &
PACKER=$!
finish() {
  kill "$PACKER" 2> /dev/null
  wait "$PACKER" 2> /dev/null
  echo "phase $PHASE: $(( SECONDS - T0 )) s of $PHASE_S" >> "$WORK/steps.tsv"
  "$PY" -m bench.session summary "$WORK" --out "$WORK/summary.md" --out "$SUMMARY" > /dev/null 2>&1
  pack
  rm -f "$OUT"/*.part* 2> /dev/null
  cat "$SUMMARY" 2> /dev/null | head -150
  echo "archive: $ARCHIVE ($(du -h "$ARCHIVE" 2> /dev/null | cut -f1))"
}
trap finish EXIT
trap 'exit 143' TERM INT

# step NAME MAX_S CMD...: CMD under `timeout` for min(MAX_S, time left), output to $WORK/NAME.log,
# one line in $WORK/steps.tsv (name, rc, seconds, limit; rc 124 = timed out), then a pack.
step() {
  local name=$1 max=$2
  shift 2
  local lim
  lim=$(left)
  [ "$max" -lt "$lim" ] && lim=$max
  if [ "$lim" -lt 5 ]; then
    printf '%s\t-\t0\t%s\tnot run: no time left\n' "$name" "$lim" >> "$WORK/steps.tsv"
    return 124
  fi
  local t=$SECONDS rc
  echo "[session] $name (limit ${lim} s)"
  timeout -k 10 "$lim" bash -c '"$@"' "$name" "$@" > "$WORK/$name.log" 2>&1
  rc=$?
  local note=""
  [ "$rc" = 124 ] && note="timed out"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$(( SECONDS - t ))" "$lim" "$note" >> "$WORK/steps.tsv"
  echo "[session] $name: rc=$rc in $(( SECONDS - t )) s"
  pack
  return $rc
}

env_info() {
  nvidia-smi 2>&1 || echo "(no nvidia-smi)"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'gpu', torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)"
  command -v nvcc && nvcc --version | tail -2
  echo "nproc $(nproc)"
  cat "$WORK/commit.json"
}

# Sources of the extension; the stamp lives in build/ (ignored: kept on a warm machine, never sent).
EXT_STAMP=build/wrn_fast_ext.sha256
ext_sources_hash() { cat setup.py csrc/*.cpp csrc/*.h csrc/cuda/* 2> /dev/null | sha256sum | cut -d' ' -f1; }
ext_is_current() {
  [ -f "$EXT_STAMP" ] && [ "$(cat "$EXT_STAMP")" = "$(ext_sources_hash)" ] || return 1
  "$PY" -c "import wrn_fast, sys; sys.exit(0 if wrn_fast.build_info()['extension_cuda_kernels'] else 1)" 2> /dev/null
}

build() {
  local arch
  arch=$("$PY" -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())" 2> /dev/null || echo 9.0)
  local cmd=("$PY" -m pip install --no-index --no-build-isolation --no-deps -e .)
  if [ "$DRY" = 1 ]; then
    echo "dry run: would run: TORCH_CUDA_ARCH_LIST=$arch MAX_JOBS=$(nproc) WRN_FAST_REQUIRE_CUDA=1 ${cmd[*]}"
  elif ext_is_current; then
    echo "build: _C is current (stamp $EXT_STAMP), skipped"
  else
    local t=$SECONDS
    # Only this GPU's arch (sm_90 on H100/H200): half the compile of the default "8.0;9.0".
    TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-$arch} MAX_JOBS=${MAX_JOBS:-$(nproc)} WRN_FAST_REQUIRE_CUDA=1 \
      "${cmd[@]}" || { echo "BUILD FAILED"; return 1; }
    ext_sources_hash > "$EXT_STAMP"
    echo "build: $(( SECONDS - t )) s"
  fi
  "$PY" -m wrn_fast info
}

pytest_args() {  # common pytest options. On the GPU image (pytest-timeout and pytest-xdist installed): a
  # per-test cap, and worker processes, so that the Triton compiles (seconds each, one CPU core
  # each) run side by side instead of one after the other.
  local a=(-v -p no:cacheprovider -rfEs --durations=20 --junitxml="$WORK/$1.xml")
  "$PY" -c "import pytest_timeout" 2> /dev/null && a+=(--timeout=120)
  if [ "$DRY" != 1 ] && "$PY" -c "import xdist" 2> /dev/null; then
    local n=$(( $(nproc) / 2 ))
    [ "$n" -gt 8 ] && n=8
    [ "$n" -ge 2 ] && a+=(-n "$n")
  fi
  echo "${a[@]}"
}

tests_quick() {
  # The tests that touch the GPU. Order: the C++/CUDA ops (precompiled, fast), then the whole model
  # (the path the table times), then the Triton ops (each specialization a compile).
  local files=(tests/test_build_info.py tests/test_bitmask.py tests/test_channel_stats.py tests/test_bn_finalize.py
               tests/test_bn_finalize_partials.py tests/test_bn_backward.py tests/test_batch_norm_act.py
               tests/test_bn_act_dropout_cpu.py tests/test_model_gpu.py tests/test_bn_act_conv.py
               tests/test_bn_act_dropout.py)
  local mode=()
  [ "$DRY" = 1 ] && mode=(--collect-only -q)  # the CPU dry run checks the selection; CI runs the tests
  # shellcheck disable=SC2046
  WRN_FAST_GPU_QUICK=1 "$PY" -m pytest $(pytest_args tests_quick) "${mode[@]}" \
    -k "not test_every_gpu_tile_config" "${files[@]}"
}

tests_sweep() {  # every tile config of every Triton conv kernel (~92 compiles), then the rest unselected
  local mode=()
  [ "$DRY" = 1 ] && mode=(--collect-only -q)
  # shellcheck disable=SC2046
  "$PY" -m pytest $(pytest_args tests_sweep) "${mode[@]}" -k test_every_gpu_tile_config tests/test_bn_act_conv.py
}

tests_grid() {  # the full GPU files (the correctness grid of Part 2 step 2 lives in test_model_gpu.py)
  local mode=()
  [ "$DRY" = 1 ] && mode=(--collect-only -q)
  # shellcheck disable=SC2046
  "$PY" -m pytest $(pytest_args tests_grid) "${mode[@]}" -k "not test_every_gpu_tile_config" \
    tests/test_model_gpu.py tests/test_bn_act_conv.py tests/test_bn_act_dropout.py
}

warm() {  # compile the table's Triton kernels in parallel processes, one per section / model row
  # (Triton caches them on disk, in $TRITON_CACHE_DIR: the timed run then compiles nothing)
  local groups=("--only layers" "--only models --rows 0" "--only models --rows 1" "--only models --rows 2"
                "--only models --rows 3")
  local extra=()
  if [ "$DRY" = 1 ]; then groups=("--only models --rows 0"); extra=(--tiny); fi
  local pids=() g i=0 rc=0
  for g in "${groups[@]}"; do
    # shellcheck disable=SC2086
    "$PY" -m bench.gpu_table --device "$DEVICE" --warm $g "${extra[@]}" > "$WORK/warm_$i.log" 2>&1 &
    pids+=($!)
    i=$(( i + 1 ))
  done
  for g in "${pids[@]}"; do wait "$g" || rc=1; done
  cat "$WORK"/warm_*.log
  return $rc
}

tests_and_warm() {  # the test selection, with the table's kernels compiling beside it (16 cores)
  warm > /dev/null 2>&1 &
  local w=$!
  tests_quick
  local rc=$?
  wait "$w" || echo "warm: some group failed (see warm_*.log)"
  return $rc
}

table() {  # table ONLY DEADLINE_S [extra...]: bench.gpu_table, stopping new rows DEADLINE_S after its start
  local only=$1 deadline=$2
  shift 2
  local tiny=()
  [ "$DRY" = 1 ] && tiny=(--tiny)
  "$PY" -m bench.gpu_table --device "$DEVICE" --out "$WORK/bench" --only "$only" --deadline-s "$deadline" \
    "${tiny[@]}" "$@"
}

export PY WORK DRY DEVICE EXT_STAMP
export -f env_info ext_sources_hash ext_is_current build pytest_args tests_quick tests_sweep tests_grid warm \
  tests_and_warm table

step env 30 env_info
case "$PHASE" in
  check)
    step build 200 build || exit 1
    # the tests (and the table's compiles beside them) get what is left after the table's smoke run (60 s)
    smoke_s=${SMOKE_S:-60}
    step tests_quick $(( $(left) - smoke_s )) tests_and_warm
    step table_smoke "$smoke_s" table layers,models,compile $(( smoke_s - 20 )) --tiny ;;
  table)
    step build 200 build || exit 1
    # seconds when call 1 left the machine warm, ~2 min of compiles when not; the table keeps >= 90 s
    warm_s=$(( $(left) - 90 ))
    [ "$warm_s" -gt 150 ] && warm_s=150
    step warm "$warm_s" warm
    lim=$(left)
    step table "$lim" table layers,models $(( lim - 25 )) ;;
  compile)
    step build 200 build || exit 1
    lim=$(left)
    step table_compile "$lim" table compile $(( lim - 25 )) ;;
  sweep)
    step build 200 build || exit 1
    step tests_sweep "$(left)" tests_sweep ;;
  grid)
    step build 200 build || exit 1
    step tests_grid "$(left)" tests_grid ;;
esac
exit 0
