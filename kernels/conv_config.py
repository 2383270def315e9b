"""Tile configs and routing of the BN-act-dropout -> conv kernels (``kernels.bn_act_conv``).

What the launchers of ``conv_fwd`` / ``conv_dgrad`` / ``conv_wgrad`` decide before a
launch, read from the sm_90a SASS (``python -m bench.sass``), not timed:

  default_config   the per-shape tile (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps) used
                   without autotuning (WRN_FAST_AUTOTUNE=0, the interpreter)
  ALL_CONFIGS      every config an autotuner may try, per kind; ``AUTOTUNE_KEY`` /
                   ``prune_by`` are its key and pruning
  two_pass_layer   which narrow layers run as an elementwise pass + a plain GEMM
  conv_route       every layer's route (fused, two_pass, or the pass for the forward only)
  launch           autotuned launch or the default config's
  _dot_modes       tl.dot precision per dtype (TF32 / ieee; the interpreter's bf16 upcast)

The module-level flags are read at call time through this module (``conv_config.X``),
so a harness that flips one (tests/_triton_aot.py, bench/sass.py, tests) flips it for
every launcher.
"""
import os

import torch
import triton

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
# Tile decisions are fixed at import: compile-only harnesses (tests/_triton_aot.py,
# bench/sass.py) flip INTERPRET afterwards to accept CPU tensors, and must still get
# the GPU's configs.
_GPU_TILES = not INTERPRET

# Rows of the forward GEMM (output pixels) per partial-stats record. Fixed (not
# tied to the autotuned BLOCK_M) so the number of partials is a function of the
# shape alone, which the fake kernel needs; every BLOCK_M is a multiple of it.
STATS_M = 64


# --------------------------------------------------------------------------- configs

def _cfg(bm, bn, bk, stages, warps):
    return triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk}, num_stages=stages, num_warps=warps)


# WRN_FAST_AUTOTUNE=0: no autotuning, one config per launch from ``default_config``
# (fast first calls; the GPU test suite and protocol set it). Default: autotune;
# timings are cached on disk by Triton (cache_results), so a restarted run does not
# re-time its shapes.
AUTOTUNE = os.environ.get("WRN_FAST_AUTOTUNE", "1") != "0"

# The interpreter's one config: BLOCK_N = 16 so the small test channel counts (12, 20)
# span several, partially masked tiles; BLOCK_K = 32 (one dropout-bitmask word).
_INTERPRET_CONFIGS = {"fwd": _cfg(64, 16, 32, 1, 4), "dgrad": _cfg(64, 16, 32, 1, 4),
                      "wgrad": _cfg(16, 32, 32, 1, 4)}

# GPU lists (Hopper / Ampere). 16-bit operands: wgmma tiles; BLOCK_K = 64 halves the
# per-iteration overhead of the K loop against 32. fp32 (TF32 or exact) and fp64 hold
# twice the bytes per operand: their own, smaller list, free of spills.
_CONFIGS_16 = {
    "fwd": [_cfg(128, 256, 64, 3, 8), _cfg(128, 128, 64, 3, 8), _cfg(128, 128, 32, 4, 8), _cfg(128, 256, 32, 4, 8),
            _cfg(256, 64, 64, 3, 8), _cfg(256, 32, 64, 3, 8), _cfg(256, 64, 32, 4, 8), _cfg(256, 32, 32, 4, 8),
            _cfg(128, 64, 64, 3, 4), _cfg(64, 128, 64, 3, 4), _cfg(64, 64, 64, 4, 4), _cfg(128, 32, 64, 4, 4),
            _cfg(64, 32, 64, 4, 4), _cfg(256, 32, 32, 4, 4), _cfg(512, 16, 32, 3, 4), _cfg(128, 256, 16, 3, 8),
            _cfg(128, 128, 16, 3, 8), _cfg(256, 32, 16, 4, 4), _cfg(64, 32, 16, 4, 4), _cfg(512, 16, 16, 3, 4)],
    "wgrad": [_cfg(320, 64, 64, 3, 8), _cfg(256, 32, 128, 3, 8), _cfg(256, 128, 64, 3, 8), _cfg(128, 128, 64, 3, 8),
              _cfg(128, 128, 32, 4, 8), _cfg(64, 128, 64, 3, 4),
              _cfg(128, 64, 64, 3, 4), _cfg(128, 32, 64, 4, 4), _cfg(64, 64, 64, 4, 4), _cfg(64, 32, 64, 4, 4),
              _cfg(32, 64, 64, 4, 4), _cfg(64, 64, 128, 3, 4), _cfg(64, 32, 128, 3, 4), _cfg(128, 16, 128, 3, 4),
              _cfg(64, 16, 128, 3, 4), _cfg(256, 64, 64, 3, 8), _cfg(192, 32, 128, 3, 8)],
}
_CONFIGS_16["dgrad"] = list(_CONFIGS_16["fwd"])
# Tiles whose side is a sum of two powers of two, two accumulators (the forward's
# BLOCK_N = 128 + 32 over Cout = 160 / 320 and 256 + 64 over 320, the dgrad's over Cin = 160; the wgrad's
# BLOCK_M = 256 + 64 over Cout = 320 / 640 and 128 + 64 over Cout = 160, in its list above).
_CONFIGS_16["fwd"] += [_cfg(128, 160, 64, 3, 8), _cfg(128, 160, 32, 4, 8), _cfg(128, 160, 16, 3, 8), _cfg(64, 320, 32, 4, 8),
                       _cfg(64, 32, 32, 4, 4)]  # (the stem: K = 27 in one 32-deep step)
_CONFIGS_16["dgrad"] += [_cfg(128, 160, 64, 3, 8), _cfg(128, 160, 32, 4, 8), _cfg(256, 32, 64, 3, 4)]
_CONFIGS_32 = {
    "fwd": [_cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8), _cfg(64, 64, 32, 3, 4), _cfg(128, 32, 32, 3, 4),
            _cfg(64, 32, 32, 4, 4)],
    "wgrad": [_cfg(128, 64, 32, 3, 8), _cfg(64, 128, 32, 3, 8), _cfg(64, 64, 32, 3, 4), _cfg(64, 32, 32, 4, 4),
              _cfg(32, 64, 32, 4, 4)],
}
_CONFIGS_32["dgrad"] = list(_CONFIGS_32["fwd"])
# Every config a GPU may use (the GPU tests run each once, whatever AUTOTUNE says).
ALL_CONFIGS = {k: _CONFIGS_16[k] + _CONFIGS_32[k] for k in ("fwd", "dgrad", "wgrad")}


# 16-bit tiles the default chooses between, with the issue ceiling their K loop reaches
# in the sm_90a SASS (WRN-28-10 shapes): (with a ReLU prologue, the same with dropout,
# without a prologue: the routes that read a written activation, see ``conv_route``,
# measured at WRN-28-10 / WRN-28-2 shapes; None = not measured, not chosen there). The
# prologue costs instructions per element of the x operand, so its ceiling grows with the
# other side of the tile (BLOCK_N = Cout for fwd, BLOCK_M = Cout for wgrad). Non-power-of-
# two sides run as two accumulators (see the kernels): fwd 128x160 fills Cout = 160 / 320
# (a 256-wide tile: 62.5%), wgrad 320 rows fill Cout = 320 / 640, 192 rows (128 + 64) 83%
# of Cout = 160 (256: 62.5%).
_WIDE_16 = {
    "fwd": [((128, 256, 64, 3, 8), (1.0, 1.0, 1.0)), ((128, 128, 64, 3, 8), (0.65, 0.65, 1.0)),
            ((128, 160, 64, 3, 8), (0.79, 0.65, 1.0)), ((128, 160, 32, 4, 8), (0.68, 0.57, 1.0)),
            # 256 + 64 columns over Cout = 320 with the prologue (WRN-28-10's stride-2 160 -> 320,
            # measured there): its per-element cost spread over twice the columns of 128x160;
            # 128 rows spill in the statistics epilogue (480 B), on 4 warps too (68 B)
            ((64, 320, 32, 4, 8), (0.84, 0.70, 1.0))],
    "wgrad": [((256, 128, 64, 3, 8), (1.0, 1.0, 1.0)), ((128, 128, 64, 3, 8), (0.73, 0.73, 1.0)),
              ((256, 64, 64, 3, 8), (1.0, 0.94, 1.0)), ((320, 64, 64, 3, 8), (1.0, 1.0, 1.0)),
              ((256, 32, 128, 3, 8), (1.0, 0.74, 1.0)),
              # for prologue-free wgrads at Cout = 160 (with the prologue and dropout 0.59 x 83%:
              # no better than 256x64x64's 0.94 x 62.5% x 83%, left to it)
              ((192, 32, 128, 3, 8), (None, None, 0.95))],
    # dgrad (hoisted plain loop, at stride > 1 per phase; the score also counts the K
    # steps' fill, Cout per tap over BLOCK_K): 256x64 first, ties go to it (fp16's 128x128
    # epilogue spills 8 B, at stride 2 too); 128x160 (128 + 32 columns) fills Cin = 160,
    # 64 deep where Cout per tap fills it (the 160 -> 320 stride-2 dgrad: 128x160x32 spills
    # 24 B there). dgrad has no prologue: one ceiling serves every route.
    "dgrad": [((256, 64, 64, 3, 8), (1.0, 1.0, 1.0)), ((128, 128, 64, 3, 8), (1.0, 1.0, 1.0)),
              ((256, 64, 32, 4, 8), (1.0, 1.0, 1.0)), ((128, 160, 64, 3, 8), (1.0, 1.0, 1.0)),
              ((128, 160, 32, 4, 8), (1.0, 1.0, 1.0))],
}


# The forward at 16 channels per tap (BLOCK_K = 16, the first group's 16 -> 160 convs),
# (BLOCK_M, BLOCK_N) -> issue ceiling (without the prologue, the two-pass path; with a
# ReLU prologue): 128x160 fills Cout = 160 but its shorter K step leaves the prologue's
# cost per element exposed (0.50); 128x256 is 62.5% useful either way.
_FWD_K16 = {(128, 256): (1.0, 0.96), (128, 160): (0.91, 0.50)}


def default_config(kind: str, dtype: torch.dtype, cin: int, cout: int, *, dropout: bool = False,
                   prologue: bool = True, stride: int = 1):
    """The tile config used without autotuning: (BLOCK_M, BLOCK_N, BLOCK_K, num_stages, num_warps).

    A heuristic, not timed, read from the sm_90a SASS. 16-bit operands with 128 or more
    channels on the tiled sides: of the tiles in ``_WIDE_16``, the one with the highest
    (issue ceiling, without / with dropout, x share of the tile that falls inside the GEMM),
    e.g. fwd (Cout along N, Cin per tap along K): 160 channels take 128x160x32 (0.68 / 0.57
    x 100%; 128x256x64: 1.0 x 62.5% x 83%), 320 and 640 64x320x32 (0.84 / 0.70 x 100%;
    128x160x64 0.79 / 0.65, 128x256: 62.5% / 83%), 128 128x128x64 (0.65 x 100%);
    dgrad also scores the K steps' fill (Cout per tap over BLOCK_K): 160 channels take
    128x160x32 (1.0 x 100%; 256x64x32: 83% of N), 320 and 640 256x64x64 (100% x 100%),
    at stride 2 alike (its K loop runs per phase, as hoisted as at stride 1; 160 -> 320
    128x160x64, 100% x 100%); wgrad (Cout
    along M, Cin along N): 320 and 640 channels take 320x64x64 (1.0 / 1.0 x 100%; 256x64: 62.5% / 83%), 160
    256x32x128 without dropout (1.0 x 62.5% x 100%), 256x64x64 with it (0.94 x 62.5% x 83%;
    256x32x128: 0.74). Without the prologue (``prologue=False``: the pass routes of
    ``conv_route``) the table's third ceiling: fwd 160 128x160x32 (1.0 x 100%), 320
    128x160x64, 640 128x128x64 (1.0 x 100%; with the prologue 0.65); wgrad 160 192x32x128
    (0.95 x 83%), 320 / 640 320x64x64.
    32..127 channels: a plain K loop
    (dgrad's always; the forward's without the BN-act ``prologue``, as in the two-pass
    path), whose per-row address and padding math is hoisted out of the loop (a step adds
    a uniform offset and tests a tap bit per row, see conv_fwd / conv_dgrad), takes 256
    rows: 64 channels 256x64x64 on 8 warps (bf16 sm_90a issue ceiling 1.00), 32 channels
    256x32x32 on 4 warps (0.80-0.84; on 8 warps 0.54-0.58: the per-iteration fixed cost of
    the pipelined loop is spread over half the rows), BLOCK_K = 32 when the K side (Cin
    for fwd, Cout for dgrad) has <= 32 channels per tap (a 64-deep K step would be half
    masked), a 32-wide dgrad with a deeper K side 256x32x64 on 4 warps (WRN-28-2's 32 -> 64
    stride-2 dgrad: 0.98; on 8 warps 0.77). dgrad with Cin = 16: a 16-wide tile, 512x16x32 on 4 warps (0.54; the former
    64x32x64 reached 0.47 on a half-masked tile). wgrad without the prologue (the two-pass
    path, 3x3 stride 1: pointers advanced by 128 pixels per K step): 64x64x128 from 64
    channels (0.90), 64x32x128 at 32 (0.66, wgmma's 64 rows over Cout = 32), Cin = 16
    16-wide: 128x16x128 (0.64) under Cout >= 128, else 64x16x128, with the prologue too
    (1x1 shortcut 16->160: 0.51, the former 64x32x64 0.35 on a half-masked tile). fwd / dgrad
    with 16 channels per tap along K: BLOCK_K = 16 (fwd 16->160 3x3 128x256: 204 -> 84
    instructions per iteration, ceiling 1.00 either way but 3/4 of the 64-deep step was
    masked, i.e. 0.25 of useful work). With the prologue (whose cost per element does not
    shrink with more rows; WRN-28-2's downsampling convs, every considered config compiled):
    the forward over Cin <= 32 256 rows 32 deep (32 -> 64 stride 2: 256x64x32 on 8 warps,
    useful 0.18 -> 0.40; 1x1 16 -> 32 256x32x16, 0.12 -> 0.21), the wgrad one M tile over
    Cout = 128 (64 -> 128 stride 2: 128x64x64 on 4 warps, 0.40 -> 0.65) and 128 pixels per
    step under 64 channels (32 -> 64: 64x32x128, 0.29 -> 0.32); otherwise 64x64x64 on 4
    warps from 64 channels, else 64x32x64. fp32 (TF32 or exact) / fp64: smaller,
    spill-free tiles, 64 wide when that fills >= 80% of N. The WRN stem (Cin < 16): Cout
    <= 16 512x16x16, its K = 27 (tap, c) in two steps (64x32x32: half its columns masked,
    useful 0.05 -> 0.10), else 64x32x32, K in one step. ``dropout``: whether
    the layer has dropout (its bitmask costs more under some tiles than others).
    """
    if kind not in ("fwd", "dgrad", "wgrad"):
        raise ValueError(f"kind must be 'fwd', 'dgrad' or 'wgrad', got {kind!r}")
    if not _GPU_TILES:
        c = _INTERPRET_CONFIGS[kind]
        return (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages, c.num_warps)
    n = cout if kind == "fwd" else cin  # the GEMM's N side

    def fill(size, block):  # useful fraction of the tiles along one side
        return size / (triton.cdiv(size, block) * block)

    if dtype not in (torch.float16, torch.bfloat16):
        if dtype == torch.float64:
            return (64, 32, 16, 3, 4)
        return (128, 64, 32, 3, 8) if n >= 64 and fill(n, 64) >= 0.8 else (64, 32, 32, 4, 4)
    cfg = _tile_16(kind, cin, cout, n, prologue, fill, stride, dropout)
    k_side = cin if kind == "fwd" else cout  # channels per tap along K (fwd, dgrad)
    if kind != "wgrad" and k_side <= 16 and (kind == "dgrad" or cin >= 16):  # (cin < 16: the stem's flat K)
        cfg = (cfg[0], cfg[1], 16) + cfg[3:]  # a 64-deep K step would be 3/4 masked (Cin = 16: 0.25 useful)
    return cfg


def _wide_choice(kind, cin, cout, prologue, dropout, stride=1):
    """(config, useful ceiling) of the best ``_WIDE_16`` tile for a wide 16-bit GEMM: the
    highest issue ceiling (with the prologue, without / with dropout, or without a
    prologue) x the share of the tile that falls inside the GEMM."""
    table = _WIDE_16[kind]

    def fill(size, block):
        return size / (triton.cdiv(size, block) * block)

    def score(item):  # fwd: Cout on N, Cin on K; wgrad: Cout on M, Cin on N; dgrad: Cin on N, Cout on K
        (bm, bn, bk, _, _), ceilings = item
        ceiling = ceilings[2 if not prologue else 1 if dropout else 0]
        if ceiling is None:  # not measured for this variant
            return -1.0
        if kind == "dgrad":
            return ceiling * fill(cin, bn) * fill(cout, bk)
        if kind == "wgrad":
            return ceiling * fill(cout, bm) * fill(cin, bn)
        if cin <= 16:  # BLOCK_K = 16 (see default_config)
            return _FWD_K16.get((bm, bn), (0.0, 0.0))[1 if prologue else 0] * fill(cout, bn)
        return ceiling * fill(cout, bn) * fill(cin, bk)
    best = max(table, key=score)
    return best[0], score(best)


def _tile_16(kind, cin, cout, n, prologue, fill, stride, dropout):
    """default_config's 16-bit tile before the K depth is fitted to 16 channels per tap."""
    if n >= 128 and (kind != "wgrad" or cout >= 128):
        return _wide_choice(kind, cin, cout, prologue, dropout, stride)[0]
    plain_loop = kind == "dgrad" or (kind == "fwd" and not prologue)
    if plain_loop and n >= 32:
        k_side = cin if kind == "fwd" else cout  # channels per tap along K
        if k_side <= 32:  # BLOCK_K = 64 would leave half of each K step masked
            return (256, 64, 32, 4, 8) if n >= 64 else (256, 32, 32, 4, 4)
        if n < 64 and kind == "dgrad":  # 32 wide: 4 warps (the 32 -> 64 stride-2 dgrad: 0.77 -> 0.98)
            return (256, 32, 64, 3, 4)
        return (256, 64 if n >= 64 else 32, 64, 3, 8)
    if kind == "dgrad" and n <= 16:
        return (512, 16, 32, 3, 4)  # Cin = 16: a 16-wide tile (a 32-wide one is half masked)
    if kind == "fwd" and cin < 16 and n <= 16:  # the WRN stem (3 -> 16): K = (tap, c) = 27 in two 16-deep steps
        return (512, 16, 16, 3, 4)  # (64x32x32: half the columns masked, useful 0.05 -> 0.10)
    if kind == "fwd" and cin < 16 and n < 64:  # K = (tap, c) in one 32-deep step
        return (64, 32, 32, 4, 4)  # (64-deep: 42% of the step useful and fp16 spills 36 B)
    if kind == "wgrad" and n < 16:  # the stem: N = (tap, c) flattened (27 columns at 3x3, Cin = 3)
        return (64, 32, 128, 3, 4)
    if kind == "wgrad" and n <= 16:  # Cin = 16 (first block's convs): 16 wide, 128 pixels per K step
        return (128 if cout >= 128 else 64, 16, 128, 3, 4)
    if kind == "wgrad" and not prologue:  # the two-pass path (3x3 stride 1): 128 pixels per K step
        return (64, 64 if n >= 64 else 32, 128, 3, 4)
    if kind == "wgrad":  # with the prologue (WRN-28-2's downsampling convs, every config compiled):
        if cout >= 128 and n >= 64:  # one M tile over Cout = 128: the prologue once (64 -> 128 s2: 0.40 -> 0.65)
            return (128, 64, 64, 3, 4)
        if n < 64:  # 128 pixels per step (32 -> 64 s2: 0.29 -> 0.32)
            return (64, 32, 128, 3, 4)
    if kind == "fwd" and cin <= 32:  # 256 rows, BLOCK_K = 32 (a 64-deep step is half masked over Cin = 32):
        return (256, 64, 32, 4, 8) if n >= 64 else (256, 32, 32, 4, 4)  # 32 -> 64 s2 0.18 -> 0.40, 1x1 16 -> 32 0.21
    if n >= 64:
        return (64, 64, 64, 4, 4)
    return (64, 32, 64, 4, 4)


# Narrow 16-bit layers run as two kernels (``two_pass_layer``): the BN-act-dropout
# prologue costs a fixed number of instructions per element of the activation while the
# tensor work per element scales with the GEMM's other side (Cout for the forward and
# wgrad), so below this many output channels the fused prologue, not the tensor cores,
# bounds the K loop. sm_90a SASS, bf16, N=960, WRN-28-2 widths (default tiles, K loops
# with the hoisted address math), issue ceiling of the forward / wgrad K loop with the
# prologue -> without it (identity; the forward then also takes 256-row tiles, the wgrad
# 128-pixel steps, see default_config):
#   width 32 @ 32x32   fwd 0.18 -> 0.84   wgrad 0.34 -> 0.66
#   width 64 @ 16x16   fwd 0.39 -> 1.00   wgrad 0.42 -> 0.90
#   width 128 @ 8x8    fwd 0.80 -> 1.00   wgrad 0.83 -> 1.00
# dgrad keeps its fused epilogue (its K loop has no prologue). The price: one
# elementwise pass (read x, write a: 4 bytes per bf16 element, ~0.9 ps at 4.3 TB/s) and
# the activation a kept for wgrad. It pays where the tensor work per element of x is
# large: a 3x3 stride-1 conv does 18*Cout FLOPs per element (Cout = 32: 0.73 ps at
# 790 TFLOP/s, 4.1 ps at ceiling 0.18, 0.9 ps at 0.84 without the prologue); a 1x1 conv
# (2*Cout) or a stride-2 conv (a quarter of that per element) loses more to the pass
# than the prologue costs it.
TWO_PASS_MAX_COUT = 128


def two_pass_layer(dtype: torch.dtype, cin: int, cout: int, taps: int = 9, stride: int = 1) -> bool:
    """Whether a BN-act(-dropout) -> conv of this shape should run as a standalone
    elementwise pass writing the activation ``a`` (``kernels.bn_act_dropout``) followed by
    this module's kernels without a prologue (forward, wgrad on ``a``; dgrad still fused
    on x). ``taps`` = kh*kw. True for fp16/bf16 on the GPU with Cout <= TWO_PASS_MAX_COUT
    or Cin <= 16 (the first block after the 16-channel stem: the pass over 16 channels is
    cheap and its wgrad, whose prologue runs on the Cin side, goes 0.25 -> 0.55), at least
    9 taps and stride 1 (see above); False in the interpreter, whose tests pick either
    path explicitly."""
    return (_GPU_TILES and dtype in (torch.float16, torch.bfloat16) and (cout <= TWO_PASS_MAX_COUT or cin <= 16)
            and taps >= 9 and stride == 1)


# Routes of a BN-act(-dropout) -> conv (``conv_route``; wrn_fast.ops.conv runs them):
#   fused           one kernel: the prologue in the forward and in wgrad (recomputed from x)
#   two_pass        an elementwise pass writes a = dropout(act(bn(x))), kept for backward;
#                   forward and wgrad read a without prologue (the narrow layers above)
#   pass_fwd        the pass writes a for the forward GEMM only (freed after it: no more
#                   activation memory than ``fused``); wgrad fused on x
#   pass_fwd_wgrad  as pass_fwd, and the backward runs the pass again for a prologue-free wgrad
# dgrad is fused on x in every route (its K loop has no prologue).
ROUTES = ("fused", "two_pass", "pass_fwd", "pass_fwd_wgrad")

# The pass's cost against the GEMM's: it moves 2 x elsize bytes per element of x (read x,
# write a) where a stride-1 conv does 2 x taps x Cout FLOPs per element, so at the H200's
# peaks (790 TFLOP/s bf16 dense, 4.3 TB/s; bench.roofline's defaults) it costs
# PASS_COST / (taps x Cout) of the GEMM's time at the tensor-core peak, PASS_COST =
# elsize x 790 / 4.3 (2 bytes: 367; Cout = 160, 3x3: 0.26).
PASS_COST_PER_BYTE = 790.0 / 4.3


def conv_route(dtype: torch.dtype, cin: int, cout: int, taps: int = 9, stride: int = 1,
               dropout: bool = False) -> str:
    """How a BN-act(-dropout) -> conv of this shape runs (one of ``ROUTES``, see above),
    decided from the sm_90a issue ceilings in ``_WIDE_16``: the forward (and the wgrad)
    leave the prologue to the elementwise pass when the time the prologue costs the GEMM,
    1/useful ceiling with it - 1/without it (in units of the GEMM at peak), exceeds the
    pass's (PASS_COST_PER_BYTE x elsize / (taps x Cout)). bf16, WRN-28-10 widths: 160
    channels fwd 0.68 / 0.57 (dropout) -> 1.00 with 128x160x32, wgrad 0.62 / 0.49 -> 0.79
    (192x32x128: 0.95 x 160/192): pass_fwd_wgrad; 320 fwd 0.79 / 0.65 -> 1.00, its wgrad
    is 1.00 either way: pass_fwd; 640 fwd 0.83 (128x256 with the prologue) -> 1.00 (128x128
    without): pass_fwd; WRN-70-16's 256-1024 (128x256 fills them at 1.00): fused. Narrow
    layers (``two_pass_layer``): two_pass. Only 16-bit on the GPU, 3x3-or-larger stride-1 convs
    (the pass's cost per FLOP is 9x and 4x higher at 1x1 and stride 2); 'fused' in the
    interpreter, whose tests choose routes explicitly."""
    if two_pass_layer(dtype, cin, cout, taps, stride):
        return "two_pass"
    if not (_GPU_TILES and dtype in (torch.float16, torch.bfloat16) and taps >= 9 and stride == 1
            and cout >= 128 and cin >= 128):
        return "fused"
    pass_cost = PASS_COST_PER_BYTE * dtype.itemsize / (taps * cout)

    def saved(kind):  # 1/useful ceiling with the prologue - without it
        with_p = _wide_choice(kind, cin, cout, True, dropout)[1]
        without = _wide_choice(kind, cin, cout, False, dropout)[1]
        return 1.0 / with_p - 1.0 / without if with_p > 0 and without > 0 else 0.0
    if saved("fwd") <= pass_cost:
        return "fused"
    return "pass_fwd_wgrad" if saved("wgrad") > pass_cost else "pass_fwd"


def _configs_for(kind):
    return _CONFIGS_16[kind] + _CONFIGS_32[kind]


def prune_by(key_n):
    """Keep the configs of the operand width (16-bit vs 32/64-bit lists) whose BLOCK_N
    is not far wider than the GEMM's N (stem, thin layers)."""
    def prune(configs, named_args, **kwargs):
        def arg(name):
            return named_args[name] if name in named_args else kwargs[name]
        n = int(arg(key_n))
        wide = arg("w_ptr" if "w_ptr" in named_args else "gy_ptr").dtype in (torch.float16, torch.bfloat16)
        kind_cfgs = [c for c in configs if (c in _CONFIGS_16_ALL) == wide]
        cap = max(32, triton.next_power_of_2(n))
        kept = [c for c in kind_cfgs if c.kwargs["BLOCK_N"] <= cap]
        return kept or kind_cfgs or configs
    return {"early_config_prune": prune}


_CONFIGS_16_ALL = [c for k in _CONFIGS_16 for c in _CONFIGS_16[k]]

# The autotune key: the shape and every compile-time variant (tensor dtypes are added
# by Triton itself).
AUTOTUNE_KEY = ["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "STRIDE", "PT", "PL", "ACT", "HAS_AFFINE",
                "HAS_DROPOUT", "IS_FP64", "IN_PREC"]  # (wgrad's POW2_OUT is a function of Ho, Wo)


def even_k(c_name):
    """Heuristic of the fwd / dgrad kernels: EVEN_K = the K loop's channels per tap (Cin
    for fwd, Cout for dgrad) are a multiple of BLOCK_K, so no step needs a channel mask
    (one select fewer per row and step)."""
    return lambda args: args[c_name] % args["BLOCK_K"] == 0


def even_rows(args):
    """Heuristic of the wgrad kernel: EVEN_R = its split-K chunk and the N*Ho*Wo rows are
    multiples of BLOCK_K, so no K step needs a row mask."""
    return args["M"] % args["BLOCK_K"] == 0 and args["K_CHUNK"] % args["BLOCK_K"] == 0


def launch(kernel, grid, args, consts, kind, dtype, cin, cout, dropout):
    """Launch ``kernel`` (an autotuner) with autotuning, or its jit function with the
    default config (WRN_FAST_AUTOTUNE=0, interpreter)."""
    if AUTOTUNE and _GPU_TILES:
        kernel[grid](*args, **consts)
        return
    bm, bn, bk, stages, warps = default_config(kind, dtype, cin, cout, dropout=dropout,
                                               prologue=bool(consts.get("HAS_AFFINE", True)),
                                               stride=int(consts.get("STRIDE", 1)))
    kernel.fn[grid](*args, **consts, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_stages=stages, num_warps=warps)


# The tap-stacked wgrad (conv_wgrad._wgrad_taps_kernel: narrow Cin, no prologue, dense
# pixels at stride 1): TAPS taps x BLOCK_C channels = 64 rows on M, Cout on N, BLOCK_K pixels.
TAPS_CONFIGS = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk}, num_stages=st, num_warps=4)
                for bn, bk, st in ((32, 128, 3), (64, 128, 3), (32, 64, 4), (64, 64, 4), (16, 128, 3))]
_INTERPRET_TAPS = (16, 32)  # (BLOCK_N, BLOCK_K)
TAPS_KEY = ["Cin", "Cout", "H", "W", "Ho", "Wo", "KH", "KW", "PT", "PL", "TAPS", "BLOCK_C", "K_CHUNK", "IN_PREC"]


def prune_taps():
    """Keep the tap-stacked wgrad's configs whose BLOCK_N is not wider than Cout needs."""
    def prune(configs, named_args, **kwargs):
        cap = max(16, triton.next_power_of_2(int(named_args["Cout"])))
        return [c for c in configs if c.kwargs["BLOCK_N"] <= cap] or configs
    return {"early_config_prune": prune}


def wgrad_taps(dtype: torch.dtype, cin: int, cout: int, taps: int):
    """(TAPS, BLOCK_C) when the weight gradient of a prologue-free conv (the two-pass path's
    wgrad on the saved activation) should stack taps along the GEMM's M, else None: 16-bit
    on the GPU, 16 <= Cin <= 32 (2 taps x 32 or 4 x 16 channels fill wgmma's 64 rows, where
    Cout on M pads Cout = 32 to 64), at least 2 taps. The launcher also requires dense
    pixels at stride 1 (its LINEAR offsets), and takes ``wgrad_tapgrid`` first where it
    applies (Cout <= 32, 3x3). bf16 sm_90a, WRN-28-2 (N = 960), useful issue ceiling (SASS
    ceiling x tile fill): 32 -> 32 0.33 (64x32x128 with Cout on M: 0.66 x 50%) -> 0.49
    (2 taps: 0.54 x 9/10), 16 -> 32 0.19 -> 0.40 (4 taps: 0.53 x 9/12); 32 -> 64: 0.96 x 9/10."""
    if not (_GPU_TILES and dtype in (torch.float16, torch.bfloat16) and 16 <= cin <= 32 and taps >= 2):
        return None
    block_c = 16 if cin <= 16 else 32
    return 64 // block_c, block_c


def launch_taps(kernel, grid, args, consts, cout):
    """Launch the tap-stacked wgrad: autotuned, or its default (BLOCK_N = Cout's power of two
    up to 64, 128 pixels per step; the interpreter's small one)."""
    if AUTOTUNE and _GPU_TILES:
        kernel[grid](*args, **consts)
        return
    if _GPU_TILES:
        bn, bk, stages = min(64, max(16, triton.next_power_of_2(cout))), 128, 3
    else:
        (bn, bk), stages = _INTERPRET_TAPS, 1
    kernel.fn[grid](*args, **consts, BLOCK_N=bn, BLOCK_K=bk, num_stages=stages, num_warps=4)


# The tap-grid wgrad (conv_wgrad._wgrad_tapgrid_kernel: narrow Cin and Cout, no prologue,
# dense pixels at stride 1): SW w-shifts x BLOCK_C channels = 64 rows on M, KH x BLOCK_CO on
# N, BLOCK_K pixels per step.
TAPGRID_CONFIGS = [triton.Config({"BLOCK_K": bk}, num_stages=st, num_warps=4)
                   for bk, st in ((64, 3), (128, 3), (64, 4), (32, 4))]
_INTERPRET_TAPGRID_K = 32
TAPGRID_KEY = ["Cin", "Cout", "H", "W", "KH", "KW", "PT", "PL", "SW", "BLOCK_C", "BLOCK_CO", "K_CHUNK", "IN_PREC"]


def wgrad_tapgrid(dtype: torch.dtype, cin: int, cout: int, kh: int, kw: int):
    """(SW, BLOCK_C, BLOCK_CO) when the weight gradient of a prologue-free 3x3 conv (the
    two-pass path's wgrad on the saved activation) should factor its taps over both sides of
    the GEMM (conv_wgrad._wgrad_tapgrid_kernel), else None: 16-bit on the GPU, 16 <= Cin <= 32
    (2 w-shifts x 32 or 4 x 16 channels on wgmma's 64 rows; 3 of 4 w-slots used), Cout <= 32
    (columns 3 h-shifts x 32 = 96, 64 + 32). Where Cout >= 64 the tap-stacked kernel's own N
    side is wide enough (wgrad_taps: 32 -> 64 issue ceiling 0.96 x 90% of its tap slots).
    bf16 sm_90a, WRN-28-2 (N = 960), useful issue ceiling (SASS ceiling x tile fill):
    32 -> 32 0.49 (taps stacked: 0.54 x 9/10) -> 0.70 (0.93 x 3/4), 16 -> 32 0.40 (0.53 x
    9/12) -> 0.70; fp16 alike, no spills."""
    if not (_GPU_TILES and dtype in (torch.float16, torch.bfloat16) and 16 <= cin <= 32 and cout <= 32
            and kh == 3 and kw == 3):
        return None
    block_c = 16 if cin <= 16 else 32
    return 64 // block_c, block_c, 32 if cout > 16 else 16


def launch_tapgrid(kernel, grid, args, consts):
    """Launch the tap-grid wgrad: autotuned, or its default (64 pixels per step, 3 stages;
    the interpreter's 32)."""
    if AUTOTUNE and _GPU_TILES:
        kernel[grid](*args, **consts)
        return
    bk, stages = (64, 3) if _GPU_TILES else (_INTERPRET_TAPGRID_K, 1)
    kernel.fn[grid](*args, **consts, BLOCK_K=bk, num_stages=stages, num_warps=4)


def min_block_m(kind, dtype, cin, cout, dropout, stride=1):
    """The smallest BLOCK_M a launch of ``kind`` may use (sizes per-M-tile partials)."""
    if AUTOTUNE and _GPU_TILES:
        return min(c.kwargs["BLOCK_M"] for c in _configs_for(kind))
    return default_config(kind, dtype, cin, cout, dropout=dropout, stride=stride)[0]


def _dot_modes(dtype, allow_tf32):
    """(input_precision, upcast) of the kernels' tl.dot for operands of ``dtype``."""
    if dtype == torch.float32:
        in_prec = "tf32" if allow_tf32 else "ieee"
    elif dtype == torch.float64:
        in_prec = "ieee"
    else:
        in_prec = "tf32"  # ignored for 16-bit operands (native MMA)
    upcast = INTERPRET and dtype == torch.bfloat16
    return in_prec, upcast

