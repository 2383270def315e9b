"""The command line: `python -m wrn_fast info|bench|train|eval`."""
import json
import os
import subprocess
import sys

import pytest

from wrn_fast.__main__ import main
from wrn_fast.cli import build_parser
from wrn_fast.training import TrainConfig, load_checkpoint, recipe

from _checks import needs_sklearn

pytestmark = pytest.mark.usefixtures("one_thread")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_info_prints_build_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("wrn_fast ") and "extension_loaded" in out
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert "extension_loaded" in info


def test_bench_outside_the_repo_says_where_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if os.path.abspath(p or ".") != REPO])
    monkeypatch.delitem(sys.modules, "bench", raising=False)
    monkeypatch.delitem(sys.modules, "bench.run", raising=False)
    assert main(["bench"]) == 2
    assert "repository root" in capsys.readouterr().err


def test_paper_recipes_are_the_defaults():
    p = build_parser()
    args = p.parse_args(["train", "--dataset", "cifar100", "--data-dir", "d"])
    assert args.lr is None and args.epochs is None  # None: the dataset's recipe decides
    cifar = TrainConfig.for_dataset("cifar10")
    assert (cifar.model, cifar.epochs, cifar.lr, cifar.batch_size, cifar.weight_decay, cifar.momentum,
            cifar.nesterov, cifar.milestones, cifar.gamma, cifar.dropout) == (
        "wrn-28-10", 200, 0.1, 128, 5e-4, 0.9, True, [60, 120, 160], 0.2, 0.3)
    svhn = TrainConfig.for_dataset("svhn")
    assert (svhn.lr, svhn.milestones, svhn.gamma, svhn.epochs, svhn.dropout) == (0.01, [80, 120], 0.1, 160, 0.4)
    assert recipe("cifar100") == recipe("cifar10")
    over = TrainConfig.for_dataset("cifar10", lr=0.05, nesterov=False, milestones=[10])
    assert (over.lr, over.nesterov, over.milestones, over.epochs) == (0.05, False, [10], 200)


def test_train_options_parse():
    args = build_parser().parse_args(
        ["train", "--no-nesterov", "--milestones", "3,7", "--amp", "bf16", "--ema", "0.99", "--wd", "0",
         "--channels-last", "--max-steps", "5"])
    assert (args.nesterov, args.milestones, args.amp, args.ema, args.weight_decay, args.channels_last,
            args.max_steps) == (False, [3, 7], "bf16", 0.99, 0.0, True, 5)
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--milestones", "a,b"])


def test_train_options_are_derived_from_the_config():
    """One list of training settings: every TrainConfig field is a `train` option of the same name (flag, help
    and parser from the field's metadata), and `train` has no other options but --resume and --json."""
    import dataclasses

    train_parser = build_parser()._subparsers._group_actions[0].choices["train"]
    dests = {a.dest for a in train_parser._actions}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    assert dests - fields == {"help", "resume", "json"} and fields <= dests
    args = train_parser.parse_args(["--eval-batch-size", "7", "--no-ema-warmup", "--wd", "0.1"])
    assert (args.eval_batch_size, args.ema_warmup, args.weight_decay, args.lr) == (7, False, 0.1, None)


@needs_sklearn
def test_default_command_trains_on_the_bundled_digits(tmp_path, capsys):
    """`python -m wrn_fast train` with nothing else is the README's demo; cut to 3 steps here."""
    out = tmp_path / "run"
    assert main(["train", "--max-steps", "3", "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "wrn-16-2" in text and "digits" in text and "test accuracy (max_steps):" in text
    ckpt = load_checkpoint(str(out / "checkpoint.pt"))
    assert ckpt["step"] == 3 and ckpt["config"]["dataset"] == "digits" and ckpt["config"]["image_size"] is None
    assert ckpt["model_kwargs"]["in_channels"] == 1


@needs_sklearn
def test_train_then_eval_through_the_cli(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", "--model", "wrn-10-1", "--image-size", "8", "--batch-size", "128", "--epochs", "2",
               "--out", str(out), "--device", "cpu", "--no-progress", "--json"])
    assert rc == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "finished" and result["epoch"] == 2
    for name in ("checkpoint.pt", "log.jsonl", "curves.png"):
        assert (out / name).stat().st_size > 0
    with open(out / "log.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2]
    assert main(["eval", "--checkpoint", str(out / "checkpoint.pt"), "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert ev["test_acc"] == pytest.approx(result["test_acc"], abs=1e-12)
    # --resume of a finished run with more epochs continues it
    assert main(["train", "--resume", str(out / "checkpoint.pt"), "--epochs", "3", "--no-progress", "--json"]) == 0
    resumed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert resumed["epoch"] == 3 and resumed["out"] == str(out)


def test_missing_dataset_files_exit_with_a_message(tmp_path, capsys):
    rc = main(["train", "--dataset", "cifar10", "--data-dir", str(tmp_path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 2 and "cifar10" in err and "data_batch_1" in err and "is empty" in err
    assert not os.path.exists(tmp_path / "run")
    rc = main(["eval", "--checkpoint", str(tmp_path / "nope.pt")])
    assert rc == 2 and "nope.pt" in capsys.readouterr().err


def test_corrupt_checkpoint_is_reported(tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x00garbage")
    assert main(["eval", "--checkpoint", str(bad), "--dataset", "digits"]) == 2
    assert "could not be loaded" in capsys.readouterr().err


def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "wrn_fast", "train", "--help"], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0
    assert "--max-steps" in proc.stdout and "cifar-10-batches-py" in proc.stdout


def test_bench_subcommand_passes_its_options_through(tmp_path, monkeypatch):
    """`python -m wrn_fast bench --quick ...`: options reach bench.run (argparse would drop them)."""
    from wrn_fast import cli

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    monkeypatch.syspath_prepend(repo)
    assert cli.run(["bench", "--quick", "--device", "cpu", "--no-triton", "--only", "kernels",
                    "--out", str(tmp_path)]) == 0
    assert list(tmp_path.glob("*_quick.json"))


def test_eval_of_a_robustbench_dm_state_dict_matches_upstream(tmp_path, capsys):
    """A DM checkpoint holds neither its activation nor its normalisation: `eval --activation`
    supplies the first, the dataset RobustBench's CIFAR-10 normalisation (inside the model), and the
    model then gets x / 255 unnormalised, as RobustBench feeds it. Loss equals upstream's."""
    import numpy as np
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from _upstream import DMWideResNet, randomize_
    from test_data import _write_cifar10

    batches = _write_cifar10(str(tmp_path), n_per_batch=6, seed=3)
    src = DMWideResNet(num_classes=10, depth=10, width=1, activation_fn=nn.ReLU)
    randomize_(src, seed=1)
    src.eval()
    ckpt = tmp_path / "dm.pt"
    torch.save(src.state_dict(), ckpt)
    assert "mean" not in src.state_dict()  # non-persistent upstream: the checkpoint cannot say

    data, labels = batches["test_batch"]
    x = torch.from_numpy(np.asarray(data).reshape(-1, 3, 32, 32)).float() / 255
    with torch.no_grad():
        want = F.cross_entropy(src(x), torch.tensor(labels)).item()

    with pytest.warns(UserWarning, match="RobustBench"):
        rc = main(["eval", "--checkpoint", str(ckpt), "--dataset", "cifar10", "--data-dir", str(tmp_path),
                   "--activation", "relu", "--device", "cpu", "--amp", "none", "--json"])
    assert rc == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert abs(got["test_loss"] - want) <= 1e-5 * max(1.0, abs(want)), (got["test_loss"], want)

    # without --activation the converter says what is missing (usage error, nothing evaluated)
    rc = main(["eval", "--checkpoint", str(ckpt), "--dataset", "cifar10", "--data-dir", str(tmp_path)])
    assert rc == 2 and "activation" in capsys.readouterr().err
