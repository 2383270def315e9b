"""Whole-model benchmarks: training step and inference throughput, peak memory, largest batch.

Implementations (same weights via load_state_dict, same data, one process):
  reference-eager       wrn_fast.reference.WideResNet in eager PyTorch
  reference-compile     the same under torch.compile (default mode)
  wrn_fast              wrn_fast.WideResNet (fused ops)
  wrn_fast-cudagraph    wrn_fast.WideResNet with the whole step captured in a CUDA graph (GPU)

A training step is forward, cross-entropy, backward and an SGD (momentum 0.9, nesterov,
weight decay 5e-4) step; inference is an eval-mode forward under no_grad. On GPU both run
under autocast(dtype) with channels_last inputs and weights. Timing interleaves the
implementations (A B C D A B C D ...) so clock and thermal drift hit all of them alike.
Before timing, wrn_fast's eval-mode logits are compared with the reference's on the same input.
"""
from __future__ import annotations

import contextlib
import copy
import gc
import statistics
import time
from typing import Dict, List, Optional

import torch
import torch.nn.functional as F

from . import common
from .common import STATUS_ERROR, STATUS_INVALID, STATUS_OK, STATUS_SKIPPED, Skip

# name -> (depth, k, default batches)
MODELS = {
    "wrn-28-10": (28, 10, (128,)),
    "wrn-28-2": (28, 2, (960, 128)),
    "wrn-16-8": (16, 8, (128,)),
    "wrn-34-10": (34, 10, (128,)),
    "wrn-70-16": (70, 16, (128,)),
}
QUICK_MODELS = {"wrn-10-2": (10, 2, (8,))}

# logits relative error bound against a float32 (TF32 off) evaluation of the same weights:
# a deep net accumulates the per-layer rounding of the dtype.
LOGIT_TOL = {"bf16": 5e-2, "fp16": 1e-2, "fp32-tf32": 2e-2, "fp32": 1e-4}


def _autocast(device: torch.device, dtype: str):
    if device.type == "cuda" and dtype != "fp32":
        return torch.autocast("cuda", dtype=common.DTYPES[dtype])
    return contextlib.nullcontext()


def _build_models(depth: int, k: int, dropout: float, device, memory_format) -> Dict[str, torch.nn.Module]:
    from wrn_fast import reference

    torch.manual_seed(0)
    ref = reference.WideResNet(depth, k, dropout, 10)
    out = {"reference": ref}
    try:
        import wrn_fast

        fast = wrn_fast.WideResNet(depth, k, dropout, 10)
        fast.load_state_dict(ref.state_dict(), strict=True)
        out["fast"] = fast
    except Exception as e:  # noqa: BLE001
        out["fast_error"] = f"{type(e).__name__}: {e}".splitlines()[0][:300]
    for key, m in out.items():
        if isinstance(m, torch.nn.Module):
            m.to(device=device, memory_format=memory_format)
    return out


def _sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4)


class Runner:
    """One implementation: ``train(i)`` / ``infer(i)`` on input set ``i``."""

    def __init__(self, name: str, model, device, dtype: str, data, compile_model: bool = False,
                 cuda_graph: bool = False, compile_mode: str = "default", compile_backend: str = "inductor"):
        self.name = name
        self.model = model
        self.device = device
        self.dtype = dtype
        self.data = data  # list of (x, y)
        self.opt = _sgd(model)
        self.fwd = model
        if compile_model:
            mode = None if compile_mode == "default" or compile_backend != "inductor" else compile_mode
            self.fwd = torch.compile(model, mode=mode, backend=compile_backend)
        self.cuda_graph = cuda_graph
        self.graphs: Dict[str, object] = {}

    def _train_eager(self, x, y):
        with _autocast(self.device, self.dtype):
            loss = F.cross_entropy(self.fwd(x), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss

    def _infer_eager(self, x):
        with torch.no_grad(), _autocast(self.device, self.dtype):
            return self.fwd(x)

    def _capture(self, mode: str):
        x0, y0 = self.data[0]
        sx, sy = x0.clone(), y0.clone()
        s = torch.cuda.Stream()
        s.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(s):
            for _ in range(3):
                if mode == "train":
                    self._train_eager(sx, sy)
                else:
                    self._infer_eager(sx)
        torch.cuda.current_stream().wait_stream(s)
        g = torch.cuda.CUDAGraph()
        if mode == "train":
            self.opt.zero_grad(set_to_none=True)
            with torch.cuda.graph(g):
                with _autocast(self.device, self.dtype):
                    loss = F.cross_entropy(self.model(sx), sy)
                loss.backward()
                self.opt.step()
            out = loss
        else:
            with torch.cuda.graph(g):
                out = self._infer_eager(sx)
        self.graphs[mode] = (g, sx, sy, out)

    def step(self, mode: str, i: int):
        x, y = self.data[i % len(self.data)]
        if self.cuda_graph:
            if mode not in self.graphs:
                self._capture(mode)
            g, sx, sy, _ = self.graphs[mode]
            sx.copy_(x)
            sy.copy_(y)
            g.replay()
            return None
        if mode == "train":
            return self._train_eager(x, y)
        return self._infer_eager(x)

    def set_mode(self, mode: str):
        self.model.train(mode == "train")


def _logit_check(models, device, dtype: str, data) -> Dict[str, float]:
    """Relative errors of eval-mode logits vs the reference in float32 with TF32 off."""
    ref, fast = models["reference"], models["fast"]
    ref.eval()
    fast.eval()
    x = data[0][0]
    with torch.no_grad(), common.tf32_off():
        r32 = ref(x.float()).double()
    with torch.no_grad(), _autocast(device, dtype):
        lf = fast(x).double()
        lr = ref(x).double()
    return {"fast": common.rel_err(lf, r32), "reference_same_dtype": common.rel_err(lr, r32)}


def _state_bytes(model) -> int:
    # parameters + gradients + SGD momentum buffers
    return 3 * sum(p.numel() * p.element_size() for p in model.parameters())


def _peak_step(runner: Runner, mode: str, steps: int = 2) -> int:
    dev = runner.device
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    for i in range(steps):
        runner.step(mode, i)
    torch.cuda.synchronize(dev)
    return max(0, torch.cuda.max_memory_allocated(dev) - base)


def bench_model(name: str, depth: int, k: int, batch: int, args, device, rec, budget: common.Budget) -> None:
    dtype = args.model_dtype
    res = getattr(args, "resolution", None) or (16 if args.quick else 32)
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    compile_mode = getattr(args, "compile_mode", None) or "default"
    compile_backend = getattr(args, "compile_backend", None) or "inductor"
    compile_name = "reference-compile" if compile_mode == "default" else f"reference-compile-{compile_mode}"
    impl_names = ["reference-eager", compile_name, "wrn_fast"] + (
        ["wrn_fast-cudagraph"] if device.type == "cuda" else [])
    if args.impls:
        impl_names = [n for n in impl_names if n == "reference-eager" or any(f in n for f in args.impls)]
    base = {"section": "model", "model": name, "batch": batch, "dtype": common.dtype_label(dtype, device),
            "resolution": res, "dropout_rate": args.model_dropout, "channels_last": device.type == "cuda"}

    def skip_all(status, reason, modes=("train", "infer")):
        for mode in modes:
            for n in impl_names:
                rec.add(dict(base, mode=mode, impl=n, status=status, reason=reason))

    if budget.expired():
        return skip_all(STATUS_SKIPPED, "time budget exhausted (--budget-min)")
    try:
        models = _build_models(depth, k, args.model_dropout, device, memory_format)
    except Exception as e:  # noqa: BLE001
        return skip_all(STATUS_ERROR, f"model construction: {type(e).__name__}: {e}".splitlines()[0][:300])
    g = torch.Generator(device="cpu").manual_seed(0)
    data = []
    for _ in range(2 if args.quick else 3):
        x = torch.randn(batch, 3, res, res, generator=g).to(device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 10, (batch,), generator=g).to(device)
        data.append((x, y))

    # correctness gate for wrn_fast
    fast_status, fast_reason, logit_err = None, None, None
    if "fast" not in models:
        fast_status, fast_reason = STATUS_SKIPPED, f"wrn_fast.WideResNet unavailable: {models.get('fast_error')}"
    else:
        try:
            errs = _logit_check(models, device, dtype, data)
            logit_err = errs
            tol = LOGIT_TOL[common.tol_key(dtype, device)]
            bound = max(tol, 2.0 * errs["reference_same_dtype"])
            if not errs["fast"] <= bound:
                fast_status = STATUS_INVALID
                fast_reason = (f"logits rel err {errs['fast']:.3g} > {bound:.3g} (tol {tol:g}; reference in the "
                               f"same dtype: {errs['reference_same_dtype']:.3g})")
        except Exception as e:  # noqa: BLE001
            fast_status, fast_reason = STATUS_ERROR, f"logit check: {type(e).__name__}: {e}".splitlines()[0][:300]

    runners: Dict[str, Runner] = {}
    pre: Dict[str, Dict[str, object]] = {}
    for n in impl_names:
        try:
            if n.startswith("wrn_fast") and fast_status is not None:
                pre[n] = {"status": fast_status, "reason": fast_reason}
                continue
            if n == compile_name and args.quick and not args.compile:
                raise Skip("torch.compile skipped in --quick (compile time exceeds the quick budget; pass --compile)")
            src = models["reference"] if n.startswith("reference") else models["fast"]
            m = copy.deepcopy(src)
            runners[n] = Runner(n, m, device, dtype, data, compile_model=(n == compile_name),
                                cuda_graph=(n == "wrn_fast-cudagraph"), compile_mode=compile_mode,
                                compile_backend=compile_backend)
        except Skip as e:
            pre[n] = {"status": STATUS_SKIPPED, "reason": str(e)}
        except Exception as e:  # noqa: BLE001
            pre[n] = {"status": STATUS_ERROR, "reason": f"{type(e).__name__}: {e}".splitlines()[0][:300]}

    for mode in args.model_modes:
        results: Dict[str, List[float]] = {n: [] for n in runners}
        status: Dict[str, Dict[str, object]] = dict(pre)
        if budget.expired():
            for n in impl_names:
                rec.add(dict(base, mode=mode, impl=n, status=STATUS_SKIPPED, reason="time budget exhausted"))
            continue
        # warm-up (compiles, autotunes, graph captures) per implementation
        for n, r in runners.items():
            try:
                r.set_mode(mode)
                for i in range(args.model_warmup):
                    r.step(mode, i)
                common.sync(device)
            except Exception as e:  # noqa: BLE001
                status[n] = {"status": STATUS_ERROR, "reason": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
        live = [n for n in runners if n not in status]
        # interleaved rounds: each round times `steps` consecutive steps of every implementation
        for rnd in range(args.model_rounds):
            order = live if rnd % 2 == 0 else list(reversed(live))
            for n in order:
                r = runners[n]
                common.sync(device)
                if device.type == "cuda":
                    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    s.record()
                    for i in range(args.model_steps):
                        r.step(mode, i)
                    e.record()
                    torch.cuda.synchronize(device)
                    ms = s.elapsed_time(e)
                else:
                    t0 = time.perf_counter()
                    for i in range(args.model_steps):
                        r.step(mode, i)
                    ms = (time.perf_counter() - t0) * 1e3
                results[n].append(ms / args.model_steps)
        eager_ms = statistics.median(results["reference-eager"]) if results.get("reference-eager") else None
        for n in impl_names:
            r = dict(base, mode=mode, impl=n, status=None, reason=None, median_ms=None, p10_ms=None, p90_ms=None,
                     images_per_s=None, speedup_vs_eager=None, peak_mem_bytes=None)
            if n.startswith("wrn_fast") and logit_err is not None:
                r["errors"] = logit_err
                r["max_rel_err"] = logit_err["fast"]
            if n == compile_name:
                r["compile_mode"], r["compile_backend"] = compile_mode, compile_backend
            if n in status:
                rec.add(dict(r, **status[n]))
                continue
            t = common.summarize(results[n])
            r.update(t)
            r["rounds"] = r.pop("reps")
            r["steps_per_round"] = args.model_steps
            r["images_per_s"] = batch / (t["median_ms"] * 1e-3)
            if eager_ms:
                r["speedup_vs_eager"] = eager_ms / t["median_ms"]
            if device.type == "cuda":
                try:
                    step_b = _peak_step(runners[n], mode)
                    st = _state_bytes(runners[n].model) if mode == "train" else \
                        sum(p.numel() * p.element_size() for p in runners[n].model.parameters())
                    r["peak_step_bytes"], r["state_bytes"] = step_b, st
                    r["peak_mem_bytes"] = step_b + st
                    if n == "wrn_fast-cudagraph":
                        r["mem_note"] = "graph replay: the graph's private pool is allocated at capture, not per step"
                except Exception as e:  # noqa: BLE001
                    r["mem_note"] = f"memory: {type(e).__name__}: {e}"[:200]
            else:
                r["mem_note"] = "peak memory not measured on CPU (no allocator peak counter for CPU tensors)"
            r["status"] = STATUS_OK
            rec.add(r)
    del runners, models, data
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


FITS, OOM, INDEX_LIMIT = "fits", "out of memory", "int32 index bound"


def is_index_limit(e: BaseException) -> bool:
    """The kernels' int32-index guard (wrn_fast.kernels.contract.IndexRangeError, raised before any
    launch for a batch whose tensors need indices >= 2**31): a bound of the implementation, not a
    failure. Matched by type, or by its message (naming int32) when it arrives wrapped."""
    try:
        from wrn_fast.kernels.contract import IndexRangeError

        if isinstance(e, IndexRangeError):
            return True
    except ImportError:
        pass
    msg = str(e)
    return isinstance(e, (ValueError, RuntimeError, OverflowError)) and ("int32" in msg or "2**31" in msg)


def _fits(name: str, depth: int, k: int, batch: int, args, device, model, index_bound: Optional[list] = None) -> str:
    """FITS, OOM or INDEX_LIMIT for two training steps at ``batch``; anything else raises.
    On INDEX_LIMIT the kernels' own largest batch (IndexRangeError.max_batch) is appended to
    ``index_bound`` when the error carries it."""
    memory_format = torch.channels_last
    x = y = loss = opt = None
    try:
        x = torch.randn(batch, 3, 32, 32, device=device).contiguous(memory_format=memory_format)
        y = torch.randint(0, 10, (batch,), device=device)
        opt = _sgd(model)
        model.train()
        for _ in range(2):
            with _autocast(device, args.model_dtype):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        torch.cuda.synchronize(device)
        return FITS
    except torch.cuda.OutOfMemoryError:
        return OOM
    except (ValueError, RuntimeError, OverflowError) as e:
        if is_index_limit(e):
            if index_bound is not None and getattr(e, "max_batch", None) is not None:
                index_bound.append(int(e.max_batch))
            return INDEX_LIMIT
        raise
    finally:
        for p in model.parameters():
            p.grad = None
        x = y = loss = opt = None  # noqa: F841
        gc.collect()
        torch.cuda.empty_cache()


def search_max_batch(fits, cap: int, start: int = 128, expired=lambda: False):
    """Largest batch with ``fits(b) == FITS``: doubling from ``start``, then bisection to within
    max(8, lo/32), multiples of 8. Returns (lo, hi, limit): ``hi`` the smallest batch seen not to fit
    (or the cap), ``limit`` what stopped it: OOM, INDEX_LIMIT, 'cap' or 'time budget'."""
    lo, hi, limit = 0, None, None
    b = start
    while hi is None and b <= cap and not expired():
        got = fits(b)
        if got == FITS:
            lo, b = b, b * 2
        else:
            hi, limit = b, got
    if hi is None:
        hi, limit = min(b, cap), ("time budget" if expired() else "cap")
    gran = max(8, lo // 32)
    while hi - lo > gran and not expired():
        mid = (lo + hi) // 2 // 8 * 8 or 8
        if mid <= lo:
            break
        got = fits(mid)
        if got == FITS:
            lo = mid
        else:
            hi, limit = mid, got
    return lo, hi, limit


def max_batch(name: str, depth: int, k: int, args, device, rec, budget: common.Budget) -> None:
    """Largest training batch (bf16 autocast, channels_last) that fits, by doubling then bisection.

    Both out-of-memory and the kernels' int32 index bound end the search; the row names which one
    (``limited_by``), so a batch past the index bound is a bound of the row, not an ERROR."""
    for impl in ("reference-eager", "wrn_fast"):
        base = {"section": "max_batch", "model": name, "dtype": common.dtype_label(args.model_dtype, device),
                "impl": impl, "max_batch": None}
        if budget.expired():
            rec.add(dict(base, status=STATUS_SKIPPED, reason="time budget exhausted"))
            continue
        try:
            models = _build_models(depth, k, args.model_dropout, device, torch.channels_last)
            model = models["reference"] if impl == "reference-eager" else models.get("fast")
            if model is None:
                raise Skip(f"wrn_fast.WideResNet unavailable: {models.get('fast_error')}")
            del models
            index_bound: List[int] = []
            lo, hi, limit = search_max_batch(
                lambda b: _fits(name, depth, k, b, args, device, model, index_bound), args.max_batch_cap,
                expired=budget.expired)
            rec.add(dict(base, status=STATUS_OK, max_batch=lo, upper_bound=hi, limited_by=limit,
                         index_bound=min(index_bound) if index_bound else None,
                         reason=f"{limit} at batch {hi}"))
            del model
        except Skip as e:
            rec.add(dict(base, status=STATUS_SKIPPED, reason=str(e)))
        except Exception as e:  # noqa: BLE001
            rec.add(dict(base, status=STATUS_ERROR, reason=f"{type(e).__name__}: {e}".splitlines()[0][:300]))
        gc.collect()
        torch.cuda.empty_cache()


def run_models(args, device, rec, budget: common.Budget) -> None:
    common.set_timing_backends(device)
    table = QUICK_MODELS if args.quick else MODELS
    names = [n for n in (args.models or list(table)) if n in table]
    if args.models and not names:
        rec.notes.append(f"models: none of {args.models} is a model benchmark ({list(table)})")
    for name in names:
        depth, k, batches = table[name]
        for b in (args.batches or batches):
            bench_model(name, depth, k, b, args, device, rec, budget)
    if device.type == "cuda" and args.max_batch:
        for name in names:
            depth, k, _ = table[name]
            max_batch(name, depth, k, args, device, rec, budget)
    elif args.max_batch:
        rec.add({"section": "max_batch", "model": ",".join(names), "impl": "all", "status": STATUS_SKIPPED,
                 "reason": "largest-batch search runs on GPU only"})
