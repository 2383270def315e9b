"""What a fused kernel will do on an H100, read from its sm_90a SASS (no GPU needed).

One *variant* = a kernel kind and everything that changes its code: dtype / precision
mode, shape, activation, dropout, residual, statistics, tile config. ``analyze`` compiles
it through the public launchers (``bn_act_conv_fwd/dgrad/wgrad``,
``bn_act_dropout_fwd/bwd``) on CPU tensors with a stand-in driver that reports
``cuda:90`` (the technique of tests/_triton_aot.py), in a subprocess where
TRITON_INTERPRET is not set, forcing one tile config on the launcher's autotuner (or
none: the launcher's DEFAULT config, i.e. what it picks with WRN_FAST_AUTOTUNE=0). Then:

  resources   registers, spilled bytes (ptxas -v), shared memory, H100 occupancy
  main loop   the longest backward branch of the SASS whose body holds the dot
              (HGMMA = wgmma, HMMA = mma.sync, else the FFMA loop); instructions per
              thread per iteration, grouped by class, counted statically (every
              instruction of the body once: predicated-off and skipped code included)
  ceiling     tensor-core clocks / iteration = FMAs / iteration / (FMA per clock per SM)
              warp-instructions / iteration  = instructions per thread x warps
              issue ceiling = min(1, 4 x clocks / warp-instructions): an SM issues at most
              4 warp-instructions per clock, so this is the fraction of the tensor-core
              (or FFMA) peak that instruction issue alone allows.

FMA per clock per SM (H100/H200 dense): bf16/fp16 2048, tf32 1024 (tensor cores);
fp32 "ieee" runs on the FP32 pipes, 128 FFMA per clock per SM (4 x 32 lanes), so its
ceiling is the share of issue slots left to the dot's own FFMAs, against a peak 16x
below bf16's. FMAs per iteration come from the MMA instructions of the loop body
(HGMMA mNnNkK per warpgroup, HMMA mNnNkK per warp), so a loop that does more or less
than BLOCK_M x BLOCK_N x BLOCK_K per iteration is counted as it is; the ieee FFMA loop
uses the tile (BM x BN x BK). mma.sync is rated at the wgmma peak (generous: on Hopper
it reaches less).

Results are cached on disk (key: sources of kernels/*.py and wrn_fast/ops, Triton
version, this file's ANALYSIS_VERSION, the variant), so reruns cost nothing.

CLI:
    python -m bench.sass --kind fwd --dtype bf16 --cin 160 --cout 160 --hw 32 --n 128 \\
        --act relu --dropout 0.3 --residual --stats --config 128,128,32,3,8
(no --config: the launcher's default config; --configs: every config it would consider).
"""
import argparse
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANALYSIS_VERSION = 7  # bump when the analysis below changes what it reports
CACHE_DIR = os.environ.get("WRN_FAST_SASS_CACHE",
                           os.path.join(os.path.expanduser("~"), ".cache", "wrn_fast", "sass"))
KINDS = ("fwd", "dgrad", "wgrad", "bnad_fwd", "bnad_bwd")
CONV_KINDS = ("fwd", "dgrad", "wgrad")
DTYPES = ("bf16", "fp16", "fp32-tf32", "fp32-ieee")

# H100 / H200 SXM (sm_90), per SM
H100 = dict(regs=65536, reg_alloc_unit=256, max_regs_thread=255, max_warps=64, max_blocks=32,
            smem_sm=233472, smem_block=232448, smem_reserved_block=1024, issue_per_clk=4)
FMA_PER_CLK = {"bf16": 2048, "fp16": 2048, "fp32-tf32": 1024, "fp32-ieee": 128}
TARGET_CEILING = 0.9
SHARD_JOBS = 16  # jobs per worker process


@dataclasses.dataclass(frozen=True)
class Variant:
    """One compile-time variant. Shapes are the layer's: x [n, cin, hw, hw] (square),
    weight [cout, cin, ksize, ksize], padding ksize // 2 (WRN's), stride."""
    kind: str
    dtype: str = "bf16"
    n: int = 128
    cin: int = 160
    cout: int = 160
    hw: int = 32
    stride: int = 1
    ksize: int = 3
    act: str = "relu"          # "identity": no BN-act prologue (the stem)
    dropout: float = 0.0
    residual: bool = False     # fwd only
    stats: bool = False        # fwd only

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.act == "identity" and self.dropout:
            raise ValueError("dropout needs the BN-act prologue (act != 'identity')")

    def label(self):
        extra = "".join([f"+drop{self.dropout:g}" if self.dropout else "", "+res" if self.residual else "",
                         "+stats" if self.stats else ""])
        return (f"{self.kind} {self.dtype} N{self.n} {self.cin}->{self.cout} {self.hw}x{self.hw} "
                f"k{self.ksize}s{self.stride} {self.act}{extra}")


def config_tuple(c):
    """(BLOCK_M, BLOCK_N, BLOCK_K, stages, warps) from '128,128,32,3,8' or a sequence."""
    if isinstance(c, str):
        c = [int(v) for v in c.split(",")]
    c = tuple(int(v) for v in c)
    if len(c) != 5:
        raise ValueError(f"config must be BLOCK_M,BLOCK_N,BLOCK_K,stages,warps, got {c}")
    return c


# --------------------------------------------------------------------------- cache

def source_tree(rev):
    """A directory holding kernels/ and wrn_fast/ as committed at ``rev`` (git archive),
    so a report can name the commit it describes while the working tree moves."""
    sha = subprocess.run(["git", "rev-parse", "--verify", rev + "^{commit}"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.strip()
    dest = os.path.join(CACHE_DIR, "src", sha)
    if not os.path.isdir(dest):
        tmp = dest + f".{os.getpid()}"
        os.makedirs(tmp)
        archive = subprocess.run(["git", "archive", sha, "kernels", "wrn_fast"], cwd=ROOT, capture_output=True,
                                 check=True).stdout
        subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
        os.replace(tmp, dest)
    return dest


def _source_hash(src_root=ROOT):
    h = hashlib.sha256()
    for d in ("kernels", os.path.join("wrn_fast", "ops")):
        full = os.path.join(src_root, d)
        for name in sorted(os.listdir(full)):
            if name.endswith(".py"):
                with open(os.path.join(full, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    return h.hexdigest()[:16]


def _triton_version(python):
    try:
        out = subprocess.run([python, "-c", "import triton; print(triton.__version__)"], capture_output=True,
                             text=True, timeout=120)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _cache_path(src_hash, triton_version, job):
    blob = json.dumps([ANALYSIS_VERSION, src_hash, triton_version, job], sort_keys=True)
    return os.path.join(CACHE_DIR, hashlib.sha256(blob.encode()).hexdigest()[:24] + ".json")


# --------------------------------------------------------------------------- public API

def analyze(variant, config=None, **kw):
    """Analysis of one variant at ``config`` (a 5-tuple, or None = the launcher's default)."""
    return analyze_many([(variant, config)], **kw)[0]


def list_configs(variant, **kw):
    """{"configs": the configs (5-tuples) the launcher's autotuner would consider for this
    variant, after its pruning}."""
    return analyze_many([(variant, "list")], **kw)[0]


def analyze_many(jobs, *, processes=2, python=None, progress=None, src_root=None):
    """[(Variant, config | None | "list")] -> list of result dicts, in order.

    ``src_root``: where kernels/ and wrn_fast/ are read from (default: this checkout;
    ``source_tree(rev)`` for a commit). Cache misses are compiled by ``processes`` worker
    subprocesses, in shards (the import of torch + triton is paid once per shard)."""
    python = python or sys.executable
    src_root = src_root or ROOT
    src_hash, tv = _source_hash(src_root), _triton_version(python)
    results, todo = [None] * len(jobs), []
    for i, (v, cfg) in enumerate(jobs):
        job = _job(v, cfg)
        path = _cache_path(src_hash, tv, job)
        if os.path.exists(path):
            with open(path) as f:
                results[i] = json.load(f)
        else:
            todo.append((i, job, path))
    if todo:
        os.makedirs(CACHE_DIR, exist_ok=True)
        # Default-config jobs need WRN_FAST_AUTOTUNE=0 at import, the others 1: separate
        # workers. Small shards: a crash or time-out loses little, results are cached as
        # they stream in.
        groups = {}
        for item in todo:
            groups.setdefault(item[1]["config"] is None, []).append(item)
        shards = []
        for default_mode, items in groups.items():
            per_shard = SHARD_JOBS * (8 if all(job["config"] == "list" for _, job, _ in items) else 1)
            n = max(processes, -(-len(items) // per_shard))
            shards += [(default_mode, items[k::n]) for k in range(n) if items[k::n]]
        done = [0]

        def store(item, res):
            i, job, path = item
            res["variant"], res["requested_config"] = job["variant"], job["config"]
            res["source_hash"], res["triton"] = src_hash, tv
            if "error" not in res or res.get("out_of_resources"):
                tmp = path + f".{os.getpid()}.{i}.tmp"
                with open(tmp, "w") as f:
                    json.dump(res, f)
                os.replace(tmp, path)
            results[i] = res
            done[0] += 1
            if progress:
                progress(done[0], len(todo), res)

        def run_shard(shard):
            default_mode, items = shard
            _run_worker(python, items, default_mode, store, src_root)

        with ThreadPoolExecutor(max_workers=max(1, processes)) as pool:
            list(pool.map(run_shard, shards))
    return results


def two_pass_routes(shapes, *, python=None, src_root=None):
    """[(dtype, cin, cout, taps, stride)] -> [bool]: whether the launcher runs each
    BN-act(-dropout) -> conv as two kernels (``kernels.bn_act_conv.two_pass_layer``, asked in
    a subprocess that imports the kernels of ``src_root`` as a GPU run would: no
    TRITON_INTERPRET). All False for kernels that predate the two-pass path."""
    shapes = [list(s) for s in shapes]
    if not shapes:
        return []
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["WRN_FAST_SASS_SRC"] = src_root or ROOT
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([python or sys.executable, "-m", "bench.sass", "--route", json.dumps(shapes)], env=env,
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("ROUTEJSON ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"two_pass_layer query failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("ROUTEJSON "):])


def _route_worker(shapes):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "routing is asked as a GPU run decides it"
    import torch
    conv, _ = _import_kernels()
    decide = getattr(conv, "two_pass_layer", None)
    out = [bool(decide(getattr(torch, _TORCH_DTYPE[dt]), cin, cout, taps, stride)) if decide else False
           for dt, cin, cout, taps, stride in shapes]
    print("ROUTEJSON " + json.dumps(out), flush=True)


def _job(variant, config):
    if config not in (None, "list"):
        config = list(config_tuple(config))
    return {"variant": dataclasses.asdict(variant), "config": config}


def _run_worker(python, items, default_mode, store, src_root):
    """Compile ``items`` [(index, job, cache path)] in one subprocess; ``store(item, result)``
    for each as its line arrives."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["WRN_FAST_AUTOTUNE"] = "0" if default_mode else "1"
    env["WRN_FAST_SASS_SRC"] = src_root
    env["TRITON_DUMP_PTXAS_LOG"] = "1"  # Triton prints its ptxas -v log: no second ptxas run
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump([job for _, job, _ in items], f)
        jobs_file = f.name
    got = 0
    try:
        with tempfile.TemporaryFile("w+") as err, subprocess.Popen(
                [python, "-m", "bench.sass", "--worker", jobs_file], env=env, cwd=ROOT, stdout=subprocess.PIPE,
                stderr=err, text=True) as proc:
            killer = threading.Timer(120 + 240 * len(items), proc.kill)  # a hung compile
            killer.start()
            for line in proc.stdout:
                if line.startswith("SASSJSON ") and got < len(items):
                    store(items[got], json.loads(line[len("SASSJSON "):]))
                    got += 1
            proc.wait()
            killer.cancel()
            err.seek(0)
            tail = err.read()[-3000:]
    finally:
        os.unlink(jobs_file)
    for item in items[got:]:
        store(item, {"error": f"worker exited {proc.returncode} before this job: {tail}"})


# --------------------------------------------------------------------------- SASS analysis

_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")

# instruction class by opcode (the part before the first '.')
_CLASSES = [
    ("mma", {"HGMMA", "HMMA", "IMMA", "DMMA", "BMMA"}),
    ("tma", {"UTMALDG", "UTMASTG", "UTMAPF", "UBLKCP", "UTMACCTL", "UTMACMDFLUSH"}),
    ("global_mem", {"LDG", "STG", "LDGSTS", "LDGDEPBAR", "DEPBAR", "RED", "REDG", "ATOM", "ATOMG", "LD", "ST",
                    "CCTL", "REDUX"}),
    ("shared_mem", {"LDS", "STS", "LDSM", "STSM", "ATOMS", "LDSMT"}),
    ("local_mem", {"LDL", "STL"}),
    ("fp32", {"FFMA", "FADD", "FMUL", "FMNMX", "FSEL", "FSETP", "FSET", "FCHK", "FSWZADD", "FMNMX3"}),
    ("fp16x2", {"HFMA2", "HADD2", "HMUL2", "HMNMX2", "HSETP2", "HSET2"}),
    ("fp64", {"DFMA", "DADD", "DMUL", "DSETP"}),
    ("convert", {"F2F", "F2FP", "I2F", "F2I", "I2FP", "F2IP", "FRND"}),
    ("mufu", {"MUFU"}),
    ("int", {"IMAD", "IADD3", "IADD", "LOP3", "LOP", "SHF", "SHL", "SHR", "ISETP", "LEA", "IABS", "SEL", "IMNMX",
             "VIMNMX", "VIADD", "PRMT", "SGXT", "BMSK", "POPC", "FLO", "IDP", "IMUL", "ISCADD", "BREV", "IMAD3",
             "VIADDMNMX", "IADD32I", "IMUL32I", "LOP32I"}),
    ("move_pred", {"MOV", "MOV32I", "CS2R", "S2R", "PLOP3", "P2R", "R2P", "SHFL", "VOTE", "VOTEU", "S2UR",
                   "R2UR", "MATCH", "LDC"}),
    ("sync", {"BAR", "SYNCS", "MEMBAR", "ERRBAR", "WARPSYNC", "BSSY", "BSYNC", "ELECT", "FENCE", "ARRIVES",
              "WARPGROUP", "ACQBULK", "CGAERRBAR", "USETMAXREG"}),
    ("control", {"BRA", "BRX", "EXIT", "CALL", "RET", "JMP", "NOP", "YIELD", "BPT", "KILL", "NANOSLEEP"}),
]
_OP_CLASS = {op: cls for cls, ops in _CLASSES for op in ops}


def _op_class(op):
    base = op.split(".")[0]
    if base in _OP_CLASS:
        return _OP_CLASS[base]
    if base.startswith("U"):
        return "uniform"
    return "other"


def parse_sass(text):
    """cuobjdump -sass text -> [(address, predicate, opcode-with-modifiers, operands)]."""
    instrs = []
    for m in _LINE.finditer(text):
        addr, body = int(m.group(1), 16), m.group(2).strip()
        pred = ""
        if body.startswith("@"):
            pred, body = body.split(None, 1)
        parts = body.split(None, 1)
        instrs.append((addr, pred, parts[0], parts[1] if len(parts) > 1 else ""))
    return instrs


def _mma_fmas(op, warps):
    """FMAs per CTA for one execution of an MMA instruction (HGMMA mMxNxK per warpgroup,
    HMMA.MNK per warp: .16816 = m16 n8 k16, .1688 = m16 n8 k8)."""
    m = re.search(r"\.(\d+)x(\d+)x(\d+)", op)
    if op.startswith("HGMMA") and m:
        return int(m.group(1)) * int(m.group(2)) * int(m.group(3)) * max(1, warps // 4)
    if op.startswith("HMMA"):
        shape = op.split(".")[1]
        for mm, nn in (("16", "8"), ("8", "8")):
            if shape.startswith(mm + nn) and shape[len(mm) + len(nn):].isdigit():
                return int(mm) * int(nn) * int(shape[len(mm) + len(nn):]) * warps
    return 0


def find_main_loop(instrs):
    """The main loop: (start, end) indices of the longest backward branch whose body holds
    an MMA; without one, the backward branch whose body holds the most FFMA; else None."""
    index = {addr: i for i, (addr, *_rest) in enumerate(instrs)}
    loops = []
    for i, (addr, pred, op, operands) in enumerate(instrs):
        if op.startswith("BRA"):
            t = re.search(r"0x([0-9a-f]+)", operands)
            if t and int(t.group(1), 16) < addr and int(t.group(1), 16) in index:
                loops.append((index[int(t.group(1), 16)], i))
    if not loops:
        return None

    def count(lo, hi, prefix):
        return sum(1 for k in range(lo, hi + 1) if instrs[k][2].startswith(prefix))

    with_mma = [lp for lp in loops if count(*lp, "HGMMA") or count(*lp, "HMMA")]
    if with_mma:
        return max(with_mma, key=lambda lp: lp[1] - lp[0])
    ffma = max(loops, key=lambda lp: (count(*lp, "FFMA"), lp[1] - lp[0]))
    return ffma if count(*ffma, "FFMA") else max(loops, key=lambda lp: lp[1] - lp[0])


def analyze_sass(text, *, warps, dtype, tile=None):
    """Main-loop statistics of one kernel's SASS (see the module docstring)."""
    instrs = parse_sass(text)
    ops = [op for _, _, op, _ in instrs]
    res = {
        "sass_instructions": len(instrs),
        "uses_wgmma": any(o.startswith("HGMMA") for o in ops),
        "uses_mma_sync": any(o.startswith("HMMA") for o in ops),
        "uses_tma": any(o.startswith("UTMALDG") for o in ops),
        "uses_cp_async": any(o.startswith("LDGSTS") for o in ops),
        "local_mem_instructions": sum(1 for o in ops if o.startswith(("LDL", "STL"))),
    }
    loop = find_main_loop(instrs)
    if loop is None:
        res["main_loop"] = None
        return res
    lo, hi = loop
    body = instrs[lo:hi + 1]
    mix = {}
    for _, _, op, _ in body:
        cls = _op_class(op)
        mix[cls] = mix.get(cls, 0) + 1
    top_ops = {}
    for _, _, op, _ in body:
        base = op.split(".")[0]
        top_ops[base] = top_ops.get(base, 0) + 1
    n_body = len(body)
    mma_ops = [op for _, _, op, _ in body if op.startswith(("HGMMA", "HMMA"))]
    if any(o.startswith("HGMMA") for o in mma_ops):
        engine = "wgmma"
    elif mma_ops:
        engine = "mma.sync"
    else:
        engine = "FFMA"
    fmas = sum(_mma_fmas(o, warps) for o in mma_ops)
    if not fmas and tile is not None:
        fmas = tile[0] * tile[1] * tile[2]  # the FFMA dot: the tile's FMAs
    clocks = fmas / FMA_PER_CLK[dtype] if fmas else 0.0
    warp_instr = n_body * warps
    res["main_loop"] = {
        "start": f"0x{body[0][0]:x}", "end": f"0x{body[-1][0]:x}",
        "engine": engine,
        "mma_instructions": len(mma_ops),
        "mma_shape": sorted(set(o for o in mma_ops)),
        "instr_per_thread_per_iter": n_body,
        "mix": dict(sorted(mix.items(), key=lambda kv: -kv[1])),
        "top_opcodes": dict(sorted(top_ops.items(), key=lambda kv: -kv[1])[:12]),
        "fma_per_iter": fmas,
        "tile_fma_per_iter": tile[0] * tile[1] * tile[2] if tile else None,
        "tc_clocks_per_iter": clocks,
        "warp_instr_per_iter": warp_instr,
        "issue_ceiling": min(1.0, H100["issue_per_clk"] * clocks / warp_instr) if warp_instr else 0.0,
        "has_ldgsts": any(o.startswith("LDGSTS") for _, _, o, _ in body),
        "has_utmaldg": any(o.startswith("UTMALDG") for _, _, o, _ in body),
        "has_ldg": any(o.startswith("LDG") and not o.startswith("LDGSTS") and not o.startswith("LDGDEPBAR")
                       for _, _, o, _ in body),
        "local_mem_in_loop": mix.get("local_mem", 0),
    }
    return res


def occupancy(regs, smem, warps):
    """Resident CTAs and warps per SM on an H100, and what limits them."""
    per_warp = -(-max(regs, 1) * 32 // H100["reg_alloc_unit"]) * H100["reg_alloc_unit"]
    by_regs = (H100["regs"] // per_warp) // warps
    by_smem = H100["smem_sm"] // (smem + H100["smem_reserved_block"]) if smem <= H100["smem_block"] else 0
    by_warps = H100["max_warps"] // warps
    blocks = min(by_regs, by_smem, by_warps, H100["max_blocks"])
    limiter = min((("registers", by_regs), ("shared memory", by_smem), ("warps", by_warps),
                   ("blocks", H100["max_blocks"])), key=lambda kv: kv[1])[0]
    return {"ctas_per_sm": blocks, "warps_per_sm": blocks * warps, "occupancy": blocks * warps / H100["max_warps"],
            "limited_by": limiter}


def verdict(res):
    """The issue-13 target checks of one analysed conv variant: {check: bool}."""
    loop = res.get("main_loop") or {}
    return {
        "no_spills": res.get("spill_bytes", 1) == 0,
        "smem_fits": res.get("shared", 1 << 30) <= H100["smem_block"],
        "wgmma": loop.get("engine") == "wgmma",
        "ceiling": loop.get("issue_ceiling", 0.0) >= TARGET_CEILING,
    }


# --------------------------------------------------------------------------- worker (compiles)

def install_stand_in_driver(capability=90):
    """Point Triton's JIT at a driver that reports ``cuda:capability`` without a GPU, so
    launches can compile (the technique of tests/_triton_aot.py)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.runtime import driver

    class _StandInDriver:
        """Just enough of a driver for Triton's JIT to pick a target and compile."""

        def get_current_device(self):
            return 0

        def get_current_stream(self, device=None):
            return 0

        def get_current_target(self):
            return GPUTarget("cuda", capability, 32)

        def get_active_torch_device(self):
            return torch.device("cpu")

    driver.set_active(_StandInDriver())


def _worker(jobs_file):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "the worker must run without TRITON_INTERPRET"
    if sys.platform.startswith("linux"):  # die with the parent (an interrupted report leaves no workers)
        import ctypes
        import signal
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    import torch
    import triton.runtime.autotuner as autotuner
    from triton.runtime.jit import JITFunction

    install_stand_in_driver(90)
    state = {"compiled": [], "forced": None, "listed": None, "list_only": False}
    jit_run = JITFunction.run

    def compile_only(self, *args, grid, warmup, **kwargs):
        if state["list_only"]:
            return None
        log = io.StringIO()
        with contextlib.redirect_stdout(log):  # TRITON_DUMP_PTXAS_LOG: ptxas -v of a fresh compile
            kernel = jit_run(self, *args, grid=grid, warmup=True, **kwargs)
        state.setdefault("ptxas_logs", {})[id(kernel)] = log.getvalue()
        consts = {k: v for k, v in kwargs.items() if isinstance(v, (int, float, str, bool))}
        # the main GEMM: launched through the tile autotuner, or with explicit tile sizes
        # (the launchers' WRN_FAST_AUTOTUNE=0 path calls the jit function directly)
        main_gemm = state.pop("via_forced", False) or {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= set(consts)
        state["compiled"].append((self.fn.__name__, kernel, consts, main_gemm))
        return kernel

    def autotuned(self, *args, **kwargs):
        self.nargs = dict(zip(self.arg_names, args))
        pruned = self.prune_configs(kwargs)
        forced = state["forced"]
        names = set(pruned[0].kwargs)
        if state["list_only"] and {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= names:
            state["listed"] = [[c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"], c.num_stages,
                                c.num_warps] for c in pruned]
            state["listed_all"] = len(self.configs)
        cfg = pruned[0]
        if forced is not None and {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= names:
            bm, bn, bk, stages, warps = forced
            match = [c for c in self.configs if (c.kwargs.get("BLOCK_M"), c.kwargs.get("BLOCK_N"),
                                                 c.kwargs.get("BLOCK_K"), c.num_stages, c.num_warps) == forced]
            if match:
                cfg = match[0]
            else:
                kw = dict(pruned[0].kwargs, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk)
                cfg = triton.Config(kw, num_stages=stages, num_warps=warps)
            state["via_forced"] = True
        elif {"BLOCK_M", "BLOCK_N", "BLOCK_K"} <= names:
            state["via_forced"] = True  # the launcher's own choice for the main GEMM
        self.nargs = None
        if state["list_only"]:
            return None
        return self.fn.run(*args, **kwargs, **cfg.all_kwargs())

    import triton
    JITFunction.run = compile_only
    autotuner.Autotuner.run = autotuned
    conv, bad = _import_kernels()
    _relax_device_checks(conv, bad)

    from triton.backends.nvidia.compiler import get_ptxas
    ptxas = get_ptxas(90).path
    tools = os.path.dirname(ptxas)
    for job in json.load(open(jobs_file)):
        v = Variant(**job["variant"])
        cfg = job["config"]
        state.update(compiled=[], listed=None, list_only=cfg == "list",
                     forced=tuple(cfg) if isinstance(cfg, list) else None)
        try:
            _launch(conv, bad, v, torch)
            if cfg == "list":
                res = {"configs": state["listed"], "n_configs_declared": state.get("listed_all")}
            else:
                res = _summarise(v, state["compiled"], ptxas, tools, state.get("ptxas_logs", {}))
        except Exception as e:  # noqa: BLE001 - reported per job, the others go on
            msg = f"{type(e).__name__}: {e}"
            if "out of resource" in msg.lower() or "OutOfResources" in msg:
                res = {"error": msg, "out_of_resources": True}
            else:
                res = {"error": msg[:2000]}
        print("SASSJSON " + json.dumps(res), flush=True)


def _import_kernels():
    """wrn_fast.kernels from WRN_FAST_SASS_SRC: the installed package when that is this
    checkout and it imports, else a symlink tree in a scratch directory (kernels/ is
    installed as wrn_fast.kernels; no compiled extension is needed to compile kernels)."""
    src = os.path.realpath(os.environ.get("WRN_FAST_SASS_SRC", ROOT))
    if src == os.path.realpath(ROOT):
        try:
            from wrn_fast.kernels import bn_act_conv as conv
            from wrn_fast.kernels import bn_act_dropout as bad
            if os.path.realpath(conv.__file__).startswith(src + os.sep):
                return conv, bad
        except ImportError:
            pass
    tree = tempfile.mkdtemp(prefix="wrn_fast_src_")
    pkg = os.path.join(tree, "wrn_fast")
    os.mkdir(pkg)
    for name in os.listdir(os.path.join(src, "wrn_fast")):
        if not name.startswith("_C") and name != "__pycache__":
            os.symlink(os.path.join(src, "wrn_fast", name), os.path.join(pkg, name))
    os.symlink(os.path.join(src, "kernels"), os.path.join(pkg, "kernels"))
    sys.path.insert(0, tree)
    for mod in [m for m in sys.modules if m == "wrn_fast" or m.startswith("wrn_fast.")]:
        del sys.modules[mod]
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "extension not built": irrelevant to compiling kernels
        from wrn_fast.kernels import bn_act_conv as conv
        from wrn_fast.kernels import bn_act_dropout as bad
    assert os.path.realpath(conv.__file__).startswith(src + os.sep), conv.__file__
    return conv, bad


def _relax_device_checks(conv, bad):
    """The launchers refuse CPU tensors unless they believe they run in the interpreter;
    let them believe it, but make the decisions a GPU launch would make (dot precision,
    elementwise tile sizes) with the flag off."""
    flags = [(m, n) for m in (conv, bad) for n in ("INTERPRET", "_INTERPRET") if hasattr(m, n)]

    def gpu_decision(fn):
        def wrapped(*a, **k):
            saved = [(m, n, getattr(m, n)) for m, n in flags]
            for m, n, _ in saved:
                setattr(m, n, False)
            try:
                return fn(*a, **k)
            finally:
                for m, n, val in saved:
                    setattr(m, n, val)
        return wrapped

    for mod, name in ((conv, "_dot_modes"), (bad, "_config")):
        if hasattr(mod, name):
            setattr(mod, name, gpu_decision(getattr(mod, name)))
    for m, n in flags:
        setattr(m, n, True)


_TORCH_DTYPE = {"bf16": "bfloat16", "fp16": "float16", "fp32-tf32": "float32", "fp32-ieee": "float32"}


def _launch(conv, bad, v, torch):
    dt = getattr(torch, _TORCH_DTYPE[v.dtype])
    tf32 = v.dtype == "fp32-tf32"
    cl = torch.channels_last
    x = torch.empty(v.n, v.cin, v.hw, v.hw, dtype=dt).contiguous(memory_format=cl)
    affine = v.act != "identity"
    sc = torch.rand(v.cin) if affine else None
    sh = torch.rand(v.cin) if affine else None
    seed = torch.tensor([7], dtype=torch.int64) if v.dropout else None
    if v.kind in ("bnad_fwd", "bnad_bwd"):
        kw = dict(act=v.act, dropout_p=v.dropout, seed=seed)
        if v.kind == "bnad_fwd":
            bad.bn_act_dropout_fwd(x, sc, sh, **kw)
        else:
            bad.bn_act_dropout_bwd(torch.empty_like(x), x, sc, sh, **kw)
        return
    pad = v.ksize // 2
    w = torch.empty(v.cout, v.cin, v.ksize, v.ksize, dtype=dt)
    ho = (v.hw + 2 * pad - v.ksize) // v.stride + 1
    kw = dict(stride=v.stride, padding=(pad,) * 4, act=v.act, dropout_p=v.dropout, seed=seed, allow_tf32=tf32)
    if v.kind == "fwd":
        res = torch.empty(v.n, v.cout, ho, ho, dtype=dt).contiguous(memory_format=cl) if v.residual else None
        conv.bn_act_conv_fwd(x, w, sc, sh, residual=res, compute_stats=v.stats, **kw)
        return
    gy = torch.empty(v.n, v.cout, ho, ho, dtype=dt).contiguous(memory_format=cl)
    if v.kind == "dgrad":
        conv.bn_act_conv_dgrad(gy, w, x, sc, sh, **kw)
    else:
        conv.bn_act_conv_wgrad(gy, x, sc, sh, weight_shape=tuple(w.shape), **kw)


def _ptxas_report(ptxas, ptx):
    """ptxas -v facts (``_parse_ptxas``) of Triton's PTX, by running ptxas again with
    Triton's options (used when Triton's cache had the kernel, so no log was printed);
    cached by the PTX's hash."""
    path = os.path.join(CACHE_DIR, "ptxas-v2", hashlib.sha256(ptx.encode()).hexdigest()[:24] + ".json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    with tempfile.TemporaryDirectory() as d:
        src = os.path.join(d, "k.ptx")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-lineinfo", "-v", "--regAllocOptLevel=2", "--gpu-name=sm_90a", src, "-o",
                               os.path.join(d, "k.o")], capture_output=True, text=True)
    rep = _parse_ptxas(proc.stdout + proc.stderr)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + f".{os.getpid()}", "w") as f:
        json.dump(rep, f)
    os.replace(path + f".{os.getpid()}", path)
    return rep


def _parse_ptxas(log):
    """{registers, spill_store_bytes, spill_load_bytes, stack_bytes, perf_warnings} from a
    ptxas -v log (None where the log lacks it). perf_warnings: ptxas's "Potential Performance
    Loss" notes, e.g. C7515 "wgmma.mma_async instructions are serialized" (no overlap of
    consecutive wgmmas)."""
    def num(pattern):
        m = re.search(pattern, log)
        return int(m.group(1)) if m else None
    found = re.findall(r"\((C\d+)\) Potential Performance Loss: (.*?)(?: in the function '[^']*')?\s*$", log,
                       flags=re.M)
    return {"registers": num(r"Used (\d+) registers"), "spill_store_bytes": num(r"(\d+) bytes spill stores"),
            "spill_load_bytes": num(r"(\d+) bytes spill loads"), "stack_bytes": num(r"(\d+) bytes stack frame"),
            "perf_warnings": sorted({f"{code}: {text}" for code, text in found})}


def _summarise(v, compiled, ptxas, tools, ptxas_logs):
    if not compiled:
        raise RuntimeError("the launcher compiled no kernel")
    kernels = []
    for name, kernel, consts, via_forced in compiled:
        with tempfile.TemporaryDirectory() as d:
            cubin = os.path.join(d, "k.cubin")
            with open(cubin, "wb") as f:
                f.write(kernel.asm["cubin"])
            sass = subprocess.run([os.path.join(tools, "cuobjdump"), "-sass", cubin], capture_output=True,
                                  text=True).stdout
        md = kernel.metadata
        warps = md.num_warps
        rep = _parse_ptxas(ptxas_logs.get(id(kernel), ""))
        if rep["registers"] is None or rep["spill_store_bytes"] is None:  # Triton's cache had it: no log
            rep = _ptxas_report(ptxas, kernel.asm["ptx"])
        regs, spill_st, spill_ld, stack = (rep["registers"], rep["spill_store_bytes"], rep["spill_load_bytes"],
                                           rep["stack_bytes"])
        tile = (consts.get("BLOCK_M"), consts.get("BLOCK_N"), consts.get("BLOCK_K"))
        tile = tile if all(isinstance(t, int) for t in tile) else None
        k = {"name": name, "main_gemm": via_forced, "warps": warps, "stages": md.num_stages,
             "constexprs": {c: consts[c] for c in sorted(consts) if c.isupper()},
             "config": [tile[0], tile[1], tile[2], md.num_stages, warps] if tile else None,
             "registers": regs, "spill_bytes": max(spill_st or 0, spill_ld or 0), "spill_store_bytes": spill_st,
             "spill_load_bytes": spill_ld, "stack_bytes": stack, "shared": md.shared,
             "ptxas_perf_warnings": rep["perf_warnings"],
             "wgmma_serialized": any("serialized" in w for w in rep["perf_warnings"])}
        k.update(occupancy(regs or 255, md.shared, warps))
        k.update(analyze_sass(sass, warps=warps, dtype=v.dtype, tile=tile))
        kernels.append(k)
    main = [k for k in kernels if k["main_gemm"]] or [k for k in kernels if (k.get("main_loop") or {}).get(
        "engine") in ("wgmma", "mma.sync")] or kernels
    res = dict(main[-1])
    res["kernels"] = [{key: k[key] for key in ("name", "registers", "spill_bytes", "shared", "config")}
                      for k in kernels]
    return res


# --------------------------------------------------------------------------- CLI

def format_result(res):
    if "error" in res:
        return f"ERROR: {res['error']}"
    lines = [f"kernel {res['name']}  config BM,BN,BK,stages,warps = {res['config']}",
             f"  registers {res['registers']}  spilled bytes {res['spill_bytes']} (stores {res['spill_store_bytes']},"
             f" loads {res['spill_load_bytes']}, stack {res['stack_bytes']})  shared {res['shared']} B",
             *([f"  ptxas: {w}" for w in res.get("ptxas_perf_warnings") or []]),
             f"  H100 occupancy: {res['ctas_per_sm']} CTAs / {res['warps_per_sm']} warps per SM "
             f"({res['occupancy']:.0%}, limited by {res['limited_by']})",
             f"  kernel uses wgmma {res['uses_wgmma']}  mma.sync {res['uses_mma_sync']}  TMA {res['uses_tma']}  "
             f"cp.async {res['uses_cp_async']}"]
    loop = res.get("main_loop")
    if loop:
        lines += [f"  main loop {loop['start']}..{loop['end']}: engine {loop['engine']} "
                  f"({loop['mma_instructions']} x {', '.join(loop['mma_shape']) or '-'}), "
                  f"loads: {'TMA ' if loop['has_utmaldg'] else ''}{'cp.async ' if loop['has_ldgsts'] else ''}"
                  f"{'LDG' if loop['has_ldg'] else ''}",
                  f"  instructions / thread / iteration {loop['instr_per_thread_per_iter']}: "
                  + ", ".join(f"{k} {n}" for k, n in loop["mix"].items()),
                  f"  top opcodes: " + ", ".join(f"{k} {n}" for k, n in loop["top_opcodes"].items()),
                  f"  FMA / iteration {loop['fma_per_iter']} (tile {loop['tile_fma_per_iter']}) -> "
                  f"tensor-core clocks {loop['tc_clocks_per_iter']:.0f}; warp-instructions "
                  f"{loop['warp_instr_per_iter']}; issue ceiling {loop['issue_ceiling']:.2f}"]
    else:
        lines.append("  no main loop (no backward branch)")
    if len(res.get("kernels", [])) > 1:
        lines.append("  all kernels compiled by the launcher: " + "; ".join(
            f"{k['name']} regs {k['registers']} spill {k['spill_bytes']} smem {k['shared']}" for k in res["kernels"]))
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.sass", description=__doc__.split("\n\n")[0])
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--route", help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=KINDS, default="fwd")
    ap.add_argument("--dtype", choices=DTYPES + ("fp32",), default="bf16", help="fp32 = fp32-tf32")
    ap.add_argument("--n", type=int, default=128)
    ap.add_argument("--cin", type=int, default=160)
    ap.add_argument("--cout", type=int, default=160)
    ap.add_argument("--hw", type=int, default=32)
    ap.add_argument("--stride", type=int, default=1)
    ap.add_argument("--ksize", type=int, default=3)
    ap.add_argument("--act", default="relu", help="relu | silu | leaky_relu | ... | identity (no BN-act prologue)")
    ap.add_argument("--dropout", type=float, default=0.0)
    ap.add_argument("--residual", action="store_true")
    ap.add_argument("--stats", action="store_true")
    ap.add_argument("--config", help="BLOCK_M,BLOCK_N,BLOCK_K,stages,warps (default: the launcher's default)")
    ap.add_argument("--configs", action="store_true", help="every config the launcher would consider")
    ap.add_argument("--json", action="store_true", help="print the full result as JSON")
    ap.add_argument("--rev", help="analyse kernels/ as committed at this git revision (default: the working tree)")
    args = ap.parse_args(argv)
    if args.worker:
        _worker(args.worker)
        return 0
    if args.route:
        _route_worker(json.loads(args.route))
        return 0
    v = Variant(kind=args.kind, dtype="fp32-tf32" if args.dtype == "fp32" else args.dtype, n=args.n, cin=args.cin,
                cout=args.cout, hw=args.hw, stride=args.stride, ksize=args.ksize, act=args.act,
                dropout=args.dropout, residual=args.residual, stats=args.stats)
    src_root = source_tree(args.rev) if args.rev else None
    if args.configs:
        listed = list_configs(v, src_root=src_root)
        cfgs = [tuple(c) for c in listed.get("configs") or []]
        jobs = [(v, None)] + [(v, c) for c in cfgs]
    else:
        jobs = [(v, config_tuple(args.config) if args.config else None)]
    results = analyze_many(jobs, src_root=src_root)
    print(v.label())
    for (_, cfg), res in zip(jobs, results):
        print(f"[{'default' if cfg is None else 'config ' + ','.join(map(str, cfg))}]")
        print(json.dumps(res, indent=1) if args.json else format_result(res))
        if "error" not in res and res.get("main_loop"):
            print("  target checks: " + ", ".join(f"{k} {'ok' if ok else 'FAIL'}" for k, ok in verdict(res).items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
