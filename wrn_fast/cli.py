"""Command line: ``python -m wrn_fast train|eval|bench|info`` (also the ``wrn-fast`` script).

    python -m wrn_fast train                         # WRN-16-2 on the bundled digits, about a minute on 2 CPU cores
    python -m wrn_fast train --dataset cifar10 --data-dir ~/data          # the paper's WRN-28-10 recipe
    torchrun --nproc-per-node 8 -m wrn_fast train --dataset cifar10 --data-dir ~/data --sync-bn
    python -m wrn_fast train --resume runs/.../checkpoint.pt
    python -m wrn_fast eval --checkpoint runs/.../checkpoint.pt
    python -m wrn_fast info [--json]
    python -m wrn_fast bench [bench options]         # from the repository root
"""
import argparse
import dataclasses
import json
import os
import sys
from typing import Any, Dict, List, Optional

from .data import DATASETS, InputError
from .training.config import TrainConfig, parse_amp
from .training.progress import dumps, json_safe
from .training.signals import Aborted

_TRAIN_EPILOG = """\
defaults per dataset (the WRN paper's recipes; every option overrides):
  cifar10, cifar100  wrn-28-10, 200 epochs, batch 128, SGD Nesterov 0.9, lr 0.1, wd 5e-4,
                     lr x0.2 at epochs 60,120,160, dropout 0.3, crop (4 px reflect) + flip
  svhn               wrn-16-8, 160 epochs, lr 0.01, x0.1 at 80,120, dropout 0.4, no augmentation
  imagefolder        as cifar10 with wrn-16-8, images resized to --image-size (32)
  digits             wrn-16-2, 25 epochs, batch 64, lr 0.1 cosine, 16x16 crop (2 px) -- no files needed

data layout under --data-dir (never downloaded):
  cifar10      cifar-10-batches-py/data_batch_1..5, test_batch
  cifar100     cifar-100-python/train, test
  svhn         train_32x32.mat, test_32x32.mat
  imagefolder  train/CLASS/*.png|jpg and val/CLASS/... (or test/)

output (--out, default runs/DATASET-MODEL-TIME-SEED-SETTINGS): checkpoint.pt (every epoch, atomic,
checksummed), log.jsonl (one line per epoch), curves.png; the directory is locked while a run uses it.
Ctrl-C or SIGTERM finishes the step, saves a checkpoint and exits 130 / 143; --resume continues
bit-for-bit, writing to --out or else the directory the checkpoint file is in (never rolling back a
newer checkpoint there). A non-finite loss stops the run (exit 1) and keeps the last good checkpoint.
Multi-GPU / multi-node: launch with torchrun; --batch-size is the global batch.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wrn-fast", description="Wide Residual Networks on fused kernels.")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,bench,info}")

    t = sub.add_parser("train", help="train a WRN (default: a small one on the bundled digits)",
                       epilog=_TRAIN_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_config_options(t)
    t.add_argument("--resume", metavar="PATH", help="continue the run saved in this checkpoint")
    t.add_argument("--json", action="store_true", help="print the final result as JSON")

    e = sub.add_parser("eval", help="test accuracy and loss of a checkpoint")
    e.add_argument("--checkpoint", required=True, help="a wrn_fast checkpoint or a state_dict (converter formats)")
    e.add_argument("--dataset", choices=DATASETS, help="default: the checkpoint's")
    e.add_argument("--data-dir")
    e.add_argument("--image-size", type=int)
    e.add_argument("--model", help="expected architecture (checked against the checkpoint)")
    e.add_argument("--format", default="auto", help="state_dict format for non-wrn_fast checkpoints "
                                                     "(see wrn_fast.convert_state_dict)")
    e.add_argument("--activation", choices=("relu", "leaky_relu", "silu"),
                   help="activation of a state_dict that does not record it (RobustBench DM: silu or relu)")
    e.add_argument("--ema-weights", action="store_true", help="evaluate the checkpoint's EMA weights")
    e.add_argument("--batch-size", type=int, default=512)
    e.add_argument("--amp", type=parse_amp, default="auto")
    e.add_argument("--device")
    e.add_argument("--workers", type=int, default=2)
    e.add_argument("--json", action="store_true")

    b = sub.add_parser("bench", help="run the benchmark harness (bench/, from the repository root)",
                       add_help=False)
    b.add_argument("bench_args", nargs=argparse.REMAINDER)

    i = sub.add_parser("info", help="build and backend information")
    i.add_argument("--json", action="store_true")
    return parser


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    """One option per TrainConfig field (flag, help and parser from the field's metadata), defaulting to None:
    "the dataset's recipe" (see the epilog)."""
    for f in dataclasses.fields(TrainConfig):
        spec = dict(f.metadata.get("cli", {}))
        flag = spec.pop("flag", None) or "--" + f.name.replace("_", "-")
        if f.type is bool:
            spec["action"] = argparse.BooleanOptionalAction
        parser.add_argument(flag, dest=f.name, default=None, **spec)


def _train_fields() -> List[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


def _cmd_train(args) -> int:
    from .training import train

    explicit: Dict[str, Any] = {k: getattr(args, k) for k in _train_fields() if getattr(args, k) is not None}
    dataset = explicit.pop("dataset", "digits")
    config = TrainConfig.for_dataset(dataset, **explicit)
    if args.resume:
        explicit["dataset"] = dataset if args.dataset is not None else None
        explicit = {k: v for k, v in explicit.items() if v is not None}
    result = train(config, resume=args.resume, explicit=explicit)
    status = _exit_status(result)
    if result["rank"] != 0:  # rank 0 reports for everyone
        return status
    summary = {k: v for k, v in result.items() if k != "history"}
    if args.json:
        print(dumps(summary))
        return status
    from .training.progress import format_duration

    if result["status"] == "diverged":
        print(f"\ntraining diverged: {result['error']} after {result['epoch']} epochs / {result['step']} steps")
        print(f"  checkpoint {result['checkpoint']} (the last good state, if any)\n  log        {result['log']}")
        return status
    acc, loss = result["test_acc"], result["test_loss"]
    label = "final test accuracy" if result["status"] == "finished" else f"test accuracy ({result['status']})"
    line = f"{label}: {100 * acc:.2f}% (loss {loss:.4f})"
    if "ema_test_acc" in result:
        line += f", EMA weights {100 * result['ema_test_acc']:.2f}%"
    print(f"\n{line} after {result['epoch']} epochs / {result['step']} steps in "
          f"{format_duration(result['seconds'])}")
    print(f"  checkpoint {result['checkpoint']}\n  log        {result['log']}")
    if result["plot"] and os.path.exists(result["plot"]):
        print(f"  curves     {result['plot']}")
    return status


def _exit_status(result: Dict[str, Any]) -> int:
    """0 finished / --max-steps, 1 diverged, 128 + signal when stopped by SIGINT (130) or SIGTERM (143)."""
    if result["status"] == "interrupted":
        return result.get("exit_status", 130)
    return 1 if result["status"] == "diverged" else 0


def _cmd_eval(args) -> int:
    from .training import evaluate_checkpoint

    result = evaluate_checkpoint(args.checkpoint, dataset=args.dataset, data_dir=args.data_dir,
                                 model_name=args.model, device=args.device, format=args.format,
                                 batch_size=args.batch_size, image_size=args.image_size, amp=args.amp,
                                 use_ema=args.ema_weights, workers=args.workers, activation=args.activation)
    if args.json:
        print(dumps(result))
    else:
        where = f" (epoch {result['epoch']}, step {result['step']})" if "epoch" in result else ""
        print(f"{result['checkpoint']}{where}: {result['model']} ({result['weights']} weights) on "
              f"{result['dataset']} test ({result['images']} images): accuracy {100 * result['test_acc']:.2f}%, "
              f"loss {result['test_loss']:.4f}")
    return 0


def _cmd_info(args) -> int:
    import wrn_fast

    info = wrn_fast.build_info()
    if args.json:
        print(json.dumps(json_safe(info), indent=2, default=str))
        return 0
    print(f"wrn_fast {wrn_fast.__version__}")
    for key, value in info.items():
        if isinstance(value, dict):
            print(f"{key}:")
            for k, v in value.items():
                print(f"  {k}: {', '.join(map(str, v)) if isinstance(v, (list, tuple)) else v}")
        elif isinstance(value, (list, tuple)):
            print(f"{key}: {', '.join(map(str, value)) if value else '-'}")
        else:
            print(f"{key}: {value}")
    return 0


def _cmd_bench(args) -> int:
    # bench/ is a directory of the repository, not part of the installed package.
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        import bench.run as bench_run
    except ImportError as e:
        print(f"wrn-fast bench: the benchmark harness (package 'bench', bench/run.py) is not importable from "
              f"{os.getcwd()!r} ({e}); run this command from the wrn_fast repository root", file=sys.stderr)
        return 2
    outcome = bench_run.main(list(args.bench_args))
    return outcome if isinstance(outcome, int) else 0  # bench.run.main returns its results (a dict)


def run(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # argparse.REMAINDER drops a leading "--option"; hand everything over as is
        return _cmd_bench(argparse.Namespace(command="bench", bench_args=argv[1:]))
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    handler = {"train": _cmd_train, "eval": _cmd_eval, "info": _cmd_info, "bench": _cmd_bench}[args.command]
    try:
        return handler(args)
    except InputError as e:
        print(f"wrn-fast {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Aborted as e:  # a second Ctrl-C / SIGTERM: the trainer has said what is on disk
        return 128 + int(e.signum)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (loading data, evaluating)
        print(f"\nwrn-fast {args.command}: interrupted", file=sys.stderr)
        return 130
