"""The compiling side of ``bench.sass``: a worker subprocess (``python -m bench.sass
--worker JOBS``, started by ``bench.sass.analyze_many``, without TRITON_INTERPRET) that
launches each variant through the public launchers on CPU tensors under the stand-in
driver, compiles instead of running, and prints one ``SASSJSON`` line of analysis per
job; and the ``--route`` worker that asks ``conv_route`` as a GPU run would."""
import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import tempfile

from .sass_variant import CACHE_DIR, ROOT, Variant
from .sass_analysis import _parse_ptxas, analyze_sass, occupancy
from .compile_harness import install_stand_in_driver, relax_device_checks


def route_worker(shapes):
    assert os.environ.get("TRITON_INTERPRET", "0") != "1", "routing is asked as a GPU run decides it"
    import torch
    conv, _ = _import_kernels()
    route = getattr(conv, "conv_route", None)
    two_pass = getattr(conv, "two_pass_layer", None)  # kernels from before conv_route
    out = []
    for dt, cin, cout, taps, stride, dropout in shapes:
        dtype = getattr(torch, _TORCH_DTYPE[dt])
        if route is not None:
            out.append(route(dtype, cin, cout, taps, stride, dropout=bool(dropout)))
        else:
            out.append("two_pass" if two_pass and two_pass(dtype, cin, cout, taps, stride) else "fused")
    print("ROUTEJSON " + json.dumps(out), flush=True)


def worker(jobs_file):
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
    relax_device_checks(conv, bad)

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
        taps = consts.get("TAPS")  # the tap-stacked wgrad: M = TAPS x BLOCK_C rows
        sw = consts.get("SW")  # the tap-grid wgrad: M = SW x BLOCK_C rows, N = KH x BLOCK_CO columns
        bm = (taps * consts.get("BLOCK_C", 0) if taps else sw * consts.get("BLOCK_C", 0) if sw
              else consts.get("BLOCK_M"))
        bn = consts.get("KH", 0) * consts.get("BLOCK_CO", 0) if sw else consts.get("BLOCK_N")
        tile = (bm, bn, consts.get("BLOCK_K"))
        tile = tile if all(isinstance(t, int) for t in tile) else None
        extra = [taps] if taps else [f"SW{sw}"] if sw else []
        config = [tile[0], tile[1], tile[2], md.num_stages, warps] + extra if tile else None
        k = {"name": name, "main_gemm": via_forced, "warps": warps, "stages": md.num_stages,
             "constexprs": {c: consts[c] for c in sorted(consts) if c.isupper()},
             "config": config,
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
