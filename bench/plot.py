"""PNGs drawn from a recorded run (never by hand): ``python -m bench.plot RUN.json [--out DIR]``.

  <run>_speedup_<op>_<dtype>_<pass>.png   speedup vs eager per shape, one bar per implementation
  <run>_throughput.png                    model images/s vs batch (train and inference panels)
  <run>_memory.png                        peak training memory per model and implementation (GPU runs)
  <run>_layers.png                        bench.gpu_table: fused conv time / cuDNN (and / roofline) per layer

Only records with status OK are drawn; everything else is in the JSON / markdown with its reason.
"""
from __future__ import annotations

import argparse
import json
import os
from collections import defaultdict
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def _safe(s: str) -> str:
    return "".join(c if c.isalnum() or c in "-." else "_" for c in s)


def _subtitle(run: Dict) -> str:
    env = run["environment"]
    tag = "CPU - not GPU product claims" if env.get("device_type") == "cpu" else env.get("device_name")
    return (f"{tag} | torch {env.get('torch')} triton {env.get('triton')} | "
            f"{(env.get('git_commit') or 'nogit')[:8]}{'+dirty' if env.get('git_dirty') else ''} | {run['run_id']}")


def _label_barh(ax, ticks: List[float], labels: List[str], xlabel: str, title: str) -> None:
    """A horizontal bar chart's ratio line at 1.0, shape labels top-down, axis label, title, legend."""
    ax.axvline(1.0, color="k", lw=0.8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel(xlabel)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")


def _save(fig, out_dir: str, name: str) -> str:
    path = os.path.join(out_dir, name)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedups(run: Dict, out_dir: str) -> List[str]:
    groups = defaultdict(list)
    for r in run["records"]:
        if r.get("section") == "kernel" and r.get("status") == "OK" and r.get("speedup_vs_eager") is not None:
            groups[(r["op"], r["dtype"], r["pass"])].append(r)
    paths = []
    for (op, dtype, pass_), recs in sorted(groups.items()):
        shapes: List[str] = []
        for r in recs:
            lab = f"{r.get('source', '')}: {r['shape_label']}"
            if lab not in shapes:
                shapes.append(lab)
        impls = sorted({r["impl"] for r in recs}, key=lambda n: (n != "eager", n))
        h = max(3.0, 0.32 * len(shapes) * max(1, len(impls)) / 2 + 1.5)
        fig, ax = plt.subplots(figsize=(10, min(h, 60)))
        bar_h = 0.8 / max(1, len(impls))
        for j, impl in enumerate(impls):
            ys, xs = [], []
            for r in recs:
                if r["impl"] == impl:
                    ys.append(shapes.index(f"{r.get('source', '')}: {r['shape_label']}") + j * bar_h)
                    xs.append(r["speedup_vs_eager"])
            ax.barh(ys, xs, height=bar_h, label=impl)
        _label_barh(ax, [i + 0.4 - bar_h / 2 for i in range(len(shapes))], shapes,
                    "speedup vs eager PyTorch composition (median time ratio, higher is better)",
                    f"{op} {dtype} {pass_}\n{_subtitle(run)}")
        paths.append(_save(fig, out_dir, f"{run['run_id']}_speedup_{_safe(op)}_{_safe(dtype)}_{_safe(pass_)}.png"))
    return paths


def plot_throughput(run: Dict, out_dir: str) -> Optional[str]:
    recs = [r for r in run["records"] if r.get("section") == "model" and r.get("status") == "OK"]
    if not recs:
        return None
    modes = sorted({r["mode"] for r in recs}, reverse=True)
    fig, axes = plt.subplots(1, len(modes), figsize=(6 * len(modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        series = defaultdict(list)
        for r in recs:
            if r["mode"] == mode:
                series[(r["model"], r["impl"])].append((r["batch"], r["images_per_s"]))
        for (model, impl), pts in sorted(series.items()):
            pts.sort()
            ax.plot([b for b, _ in pts], [v for _, v in pts], marker="o", label=f"{model} {impl}")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("batch size")
        ax.set_ylabel("images / s")
        ax.set_title(f"{mode} ({recs[0]['dtype']})", fontsize=10)
        ax.legend(fontsize=6)
    fig.suptitle(_subtitle(run), fontsize=8)
    return _save(fig, out_dir, f"{run['run_id']}_throughput.png")


def plot_memory(run: Dict, out_dir: str) -> Optional[str]:
    recs = [r for r in run["records"] if r.get("section") == "model" and r.get("status") == "OK"
            and r.get("mode") == "train" and r.get("peak_mem_bytes")]
    if not recs:
        return None
    labels = []
    for r in recs:
        lab = f"{r['model']} b{r['batch']}"
        if lab not in labels:
            labels.append(lab)
    impls = sorted({r["impl"] for r in recs})
    w = 0.8 / len(impls)
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(labels)), 4.5))
    for j, impl in enumerate(impls):
        xs, ys = [], []
        for r in recs:
            if r["impl"] == impl:
                xs.append(labels.index(f"{r['model']} b{r['batch']}") + j * w)
                ys.append(r["peak_mem_bytes"] / 2 ** 30)
        ax.bar(xs, ys, width=w, label=impl)
    ax.set_xticks([i + 0.4 - w / 2 for i in range(len(labels))])
    ax.set_xticklabels(labels, fontsize=8)
    ax.set_ylabel("peak training memory, GiB (state + step peak)")
    ax.set_title(_subtitle(run), fontsize=8)
    ax.legend(fontsize=8)
    return _save(fig, out_dir, f"{run['run_id']}_memory.png")


def plot_layers(run: Dict, out_dir: str) -> Optional[str]:
    """bench.gpu_table's layer rows: fused time over cuDNN's plain conv time (and over the roofline
    prediction where there is one) per shape and pass; 1.0 = as fast as cuDNN."""
    recs = [r for r in run["records"] if r.get("section") == "layer" and r.get("impl") == "wrn_fast"
            and r.get("status") == "OK" and r.get("ratio_vs_cudnn") is not None]
    if not recs:
        return None
    labels = [f"{r['shape_label']} {r['pass']}" for r in recs]
    ys = list(range(len(recs)))
    fig, ax = plt.subplots(figsize=(10, max(3.0, 0.28 * len(recs) + 1.5)))
    ax.barh([y - 0.2 for y in ys], [r["ratio_vs_cudnn"] for r in recs], height=0.4, label="time / cuDNN plain conv")
    roof = [(y, r["ratio_vs_roofline"]) for y, r in zip(ys, recs) if r.get("ratio_vs_roofline") is not None]
    if roof:
        ax.barh([y + 0.2 for y, _ in roof], [v for _, v in roof], height=0.4, label="time / roofline prediction")
    ax.axvline(1.1, color="r", lw=0.6, ls="--", label="1.10 (forward target vs cuDNN)")
    _label_barh(ax, ys, labels, "median time ratio (lower is better)",
                f"fused conv per layer ({recs[0].get('dtype')}, {recs[0].get('source')})\n{_subtitle(run)}")
    return _save(fig, out_dir, f"{run['run_id']}_layers.png")


def plot_run(json_path: str, out_dir: Optional[str] = None) -> List[str]:
    with open(json_path) as f:
        run = json.load(f)
    out_dir = out_dir or os.path.dirname(os.path.abspath(json_path))
    os.makedirs(out_dir, exist_ok=True)
    paths = plot_speedups(run, out_dir)
    for p in (plot_throughput(run, out_dir), plot_memory(run, out_dir), plot_layers(run, out_dir)):
        if p:
            paths.append(p)
    return paths


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m bench.plot", description=__doc__)
    ap.add_argument("run_json", nargs="+")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    for j in a.run_json:
        for p in plot_run(j, a.out):
            print(p)


if __name__ == "__main__":
    main()
