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
version, this file's ANALYSIS_VERSION, the variant; the analysing modules' sources are part
of the key too), so reruns cost nothing.

Files: this module (cache, the API, the CLI), ``sass_variant`` (the variant, paths; a leaf
both this module and the worker import), ``sass_worker`` (the compiling subprocess),
``sass_analysis`` (SASS / ptxas text -> numbers), ``compile_harness`` (the stand-in driver).

CLI:
    python -m bench.sass --kind fwd --dtype bf16 --cin 160 --cout 160 --hw 32 --n 128 \\
        --act relu --dropout 0.3 --residual --stats --config 128,128,32,3,8
(no --config: the launcher's default config; --configs: every config it would consider).
"""
import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

# re-exported: bench.static, bench.roofline and the tests read these from bench.sass
from .sass_analysis import (FMA_PER_CLK, H100, TARGET_CEILING, analyze_sass, find_main_loop,  # noqa: F401
                            occupancy, parse_sass, verdict)
from .compile_harness import install_stand_in_driver  # noqa: F401
from .sass_variant import CACHE_DIR, CONV_KINDS, DTYPES, KINDS, ROOT, Variant  # noqa: F401

ANALYSIS_VERSION = 7  # bump when the analysis below changes what it reports
SHARD_JOBS = 16  # jobs per worker process


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


# The modules that compile and analyse (they run from the working tree whatever --rev
# says): a change to what they report must not be answered from the cache.
_ANALYSIS_FILES = ("sass_worker.py", "sass_analysis.py", "sass_variant.py", "compile_harness.py")


def _source_hash(src_root=ROOT):
    h = hashlib.sha256()
    for d in ("kernels", os.path.join("wrn_fast", "ops")):
        full = os.path.join(src_root, d)
        for name in sorted(os.listdir(full)):
            if name.endswith(".py"):
                with open(os.path.join(full, name), "rb") as f:
                    h.update(name.encode() + b"\0" + f.read())
    for name in _ANALYSIS_FILES:
        with open(os.path.join(ROOT, "bench", name), "rb") as f:
            h.update(b"bench/" + name.encode() + b"\0" + f.read())
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


def conv_routes(shapes, *, python=None, src_root=None):
    """[(dtype, cin, cout, taps, stride, dropout)] -> [route]: how the launcher runs each
    BN-act(-dropout) -> conv (``kernels.bn_act_conv.conv_route``: 'fused', 'two_pass',
    'pass_fwd', 'pass_fwd_wgrad'; for kernels from before it, ``two_pass_layer``'s
    'two_pass' or 'fused'), asked in a subprocess that imports the kernels of ``src_root``
    as a GPU run would: no TRITON_INTERPRET. All 'fused' for kernels that predate both."""
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
        raise RuntimeError(f"conv_route query failed (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("ROUTEJSON "):])


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
    if args.worker or args.route:
        from . import sass_worker  # the compiling side (imports torch / triton)
        if args.worker:
            sass_worker.worker(args.worker)
        else:
            sass_worker.route_worker(json.loads(args.route))
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
