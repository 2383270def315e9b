"""Training loop, exact resume, atomic checkpoints, evaluation and the errors users meet.

All runs use WRN-10-1 on the bundled digits at 8x8 (11 steps per epoch at batch
128), a few seconds each on 2 CPU cores.
"""
import math
import os
import signal

import pytest
import torch

import wrn_fast
from wrn_fast.__main__ import main
from wrn_fast.data import InputError
from wrn_fast.training import evaluate_checkpoint, load_checkpoint, save_checkpoint, train

from _checks import needs_sklearn
from _training import assert_same_state as _assert_same_state, read_log as _read_log, tiny_config as _config, \
    without_timing as _without_timing

pytestmark = [pytest.mark.usefixtures("one_thread"), needs_sklearn]


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    """Two epochs without interruption: the reference for the resume tests."""
    out = tmp_path_factory.mktemp("straight")
    result = train(_config(out))
    return result, load_checkpoint(result["checkpoint"])


def test_straight_run_writes_log_plot_checkpoint(straight_run):
    result, ckpt = straight_run
    assert result["status"] == "finished" and result["epoch"] == 2 and result["step"] == 22
    log = _read_log(result["log"])
    assert [r["epoch"] for r in log] == [1, 2]
    for key in ("lr", "train_loss", "train_acc", "test_loss", "test_acc", "ema_test_acc", "images_per_s",
                "epoch_time_s"):
        assert key in log[0]
    assert log[1]["lr"] == pytest.approx(0.0, abs=1e-12)  # cosine ends at 0
    with open(result["plot"], "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    assert ckpt["epoch"] == 2 and ckpt["step"] == 22 and ckpt["batch_in_epoch"] == 0
    assert ckpt["model_name"] == "wrn-10-1" and ckpt["model_kwargs"]["in_channels"] == 1
    # the checkpoint is plain data: loadable with weights_only, the model rebuilt from it
    model = wrn_fast.create_model(ckpt["model_name"], **ckpt["model_kwargs"])
    model.load_state_dict(ckpt["model"])
    assert not [f for f in os.listdir(result["out"]) if ".tmp" in f]


def test_resume_after_an_epoch_is_exact(straight_run, tmp_path):
    ref_result, ref_ckpt = straight_run
    first = train(_config(tmp_path, max_steps=11))  # exactly one epoch
    assert first["status"] == "max_steps" and first["epoch"] == 1
    resumed = train(_config(tmp_path), resume=first["checkpoint"])
    assert resumed["status"] == "finished"
    _assert_same_state(load_checkpoint(resumed["checkpoint"]), ref_ckpt)
    assert _without_timing(_read_log(resumed["log"])) == _without_timing(_read_log(ref_result["log"]))


def test_resume_mid_epoch_is_exact(straight_run, tmp_path):
    ref_result, ref_ckpt = straight_run
    first = train(_config(tmp_path, max_steps=15))  # stops at epoch 2, batch 4
    ckpt = load_checkpoint(first["checkpoint"])
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (1, 4, 15)
    assert len(_read_log(first["log"])) == 1
    resumed = train(_config(tmp_path), resume=first["checkpoint"])
    _assert_same_state(load_checkpoint(resumed["checkpoint"]), ref_ckpt)
    assert _without_timing(_read_log(resumed["log"])) == _without_timing(_read_log(ref_result["log"]))
    assert _without_timing(resumed["history"]) == _without_timing(ref_result["history"])


def test_ctrl_c_saves_a_checkpoint_and_resume_is_exact(straight_run, tmp_path, monkeypatch):
    ref_result, ref_ckpt = straight_run
    real_step = torch.optim.SGD.step
    calls = {"n": 0}

    def step_then_ctrl_c(self, *args, **kwargs):
        out = real_step(self, *args, **kwargs)
        calls["n"] += 1
        if calls["n"] == 6:
            signal.raise_signal(signal.SIGINT)  # what the terminal sends on Ctrl-C
        return out

    monkeypatch.setattr(torch.optim.SGD, "step", step_then_ctrl_c)
    sigint_before = signal.getsignal(signal.SIGINT)  # SIG_IGN when pytest runs in a background job
    first = train(_config(tmp_path))
    monkeypatch.setattr(torch.optim.SGD, "step", real_step)
    assert first["status"] == "interrupted"
    ckpt = load_checkpoint(first["checkpoint"])
    assert (ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]) == (0, 6, 6)  # the running step finished
    assert signal.getsignal(signal.SIGINT) is sigint_before  # handler restored
    resumed = train(_config(tmp_path), resume=first["checkpoint"])
    _assert_same_state(load_checkpoint(resumed["checkpoint"]), ref_ckpt)
    assert _without_timing(_read_log(resumed["log"])) == _without_timing(_read_log(ref_result["log"]))


def test_different_seed_gives_a_different_run(straight_run, tmp_path):
    _, ref_ckpt = straight_run
    other = train(_config(tmp_path, seed=2, max_steps=3))
    ckpt = load_checkpoint(other["checkpoint"])
    assert not torch.equal(ckpt["model"]["conv1.weight"], ref_ckpt["model"]["conv1.weight"])


# --------------------------------------------------------------------------- atomic checkpoints
def _state(value):
    return {"model": {"w": torch.full((1000,), float(value))}, "epoch": value}


def test_crash_inside_torch_save_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, _state(1))
    real_save = torch.save

    def save_half_then_crash(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")  # a partial write reached the file
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_crash)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(path, _state(2))
    monkeypatch.setattr(torch, "save", real_save)
    assert load_checkpoint(path)["epoch"] == 1
    assert torch.equal(load_checkpoint(path)["model"]["w"], torch.full((1000,), 1.0))
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_crash_in_os_replace_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "checkpoint.pt")
    save_checkpoint(path, _state(1))

    def replace_crash(src, dst):
        raise KeyboardInterrupt  # e.g. killed between the write and the rename

    monkeypatch.setattr(os, "replace", replace_crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, _state(2))
    monkeypatch.undo()
    assert load_checkpoint(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["checkpoint.pt"]


def test_crash_while_checkpointing_during_training_keeps_the_last_one(tmp_path, monkeypatch):
    first = train(_config(tmp_path, epochs=2, max_steps=11))
    before = load_checkpoint(first["checkpoint"])
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        train(_config(tmp_path, epochs=2), resume=first["checkpoint"])
    monkeypatch.undo()
    after = load_checkpoint(first["checkpoint"])
    assert after["step"] == before["step"] == 11
    assert torch.equal(after["model"]["fc.weight"], before["model"]["fc.weight"])
    assert not [f for f in os.listdir(tmp_path) if ".tmp" in f]


def test_refuses_to_overwrite_an_earlier_run(tmp_path):
    train(_config(tmp_path, max_steps=1))
    with pytest.raises(InputError, match="already holds checkpoint.pt.*--resume"):
        train(_config(tmp_path, max_steps=1))


# --------------------------------------------------------------------------- eval and errors
def test_eval_of_a_saved_checkpoint_matches_training(straight_run, capsys):
    result, _ = straight_run
    ev = evaluate_checkpoint(result["checkpoint"], device="cpu")
    assert ev["test_acc"] == pytest.approx(result["test_acc"], abs=1e-12)
    assert ev["test_loss"] == pytest.approx(result["test_loss"], rel=1e-6)
    ev_ema = evaluate_checkpoint(result["checkpoint"], device="cpu", use_ema=True)
    assert ev_ema["test_acc"] == pytest.approx(result["ema_test_acc"], abs=1e-12)
    assert main(["eval", "--checkpoint", result["checkpoint"], "--device", "cpu"]) == 0
    assert f"accuracy {100 * result['test_acc']:.2f}%" in capsys.readouterr().out


def test_eval_of_a_raw_state_dict(straight_run, tmp_path):
    result, ckpt = straight_run
    raw = str(tmp_path / "weights.pth")
    torch.save(ckpt["model"], raw)
    ev = evaluate_checkpoint(raw, dataset="digits", image_size=8, device="cpu")
    assert ev["test_acc"] == pytest.approx(result["test_acc"], abs=1e-12)
    with pytest.raises(InputError, match="--dataset"):
        evaluate_checkpoint(raw, device="cpu")  # a state_dict does not say what it was trained on


def test_architecture_mismatch_is_named(straight_run, tmp_path):
    result, ckpt = straight_run
    with pytest.raises(InputError, match="checkpoint has depth 10, width 1 but --model wrn-16-8"):
        evaluate_checkpoint(result["checkpoint"], model_name="wrn-16-8", device="cpu")
    raw = str(tmp_path / "weights.pth")
    torch.save(ckpt["model"], raw)
    with pytest.raises(InputError, match="checkpoint has depth 10, width 1 but --model wrn-28-10"):
        evaluate_checkpoint(raw, dataset="digits", image_size=8, model_name="wrn-28-10", device="cpu")
    with pytest.raises(InputError, match="checkpoint has 10 classes but --dataset cifar100 has 100"):
        from wrn_fast.training import check_architecture

        check_architecture("x.pt", {"depth": 10, "widen_factor": 1, "num_classes": 10}, None, 100, 3, "cifar100")


def test_resume_with_another_model_is_refused(straight_run, tmp_path, capsys):
    result, _ = straight_run
    rc = main(["train", "--resume", result["checkpoint"], "--model", "wrn-16-8", "--out", str(tmp_path)])
    assert rc == 2
    assert "checkpoint has depth 10, width 1 but --model wrn-16-8" in capsys.readouterr().err
    rc = main(["train", "--resume", result["checkpoint"], "--lr", "0.5", "--out", str(tmp_path)])
    assert rc == 2 and "--lr 0.5 (checkpoint: 0.05)" in capsys.readouterr().err
    assert not os.listdir(tmp_path)  # nothing written by a refused run


def test_unknown_model_is_refused(tmp_path, capsys):
    rc = main(["train", "--model", "resnet18", "--out", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert rc == 2 and "--model 'resnet18'" in err and "wrn-DEPTH-WIDTH" in err
    assert not os.path.exists(tmp_path / "run" / "checkpoint.pt")


def test_bad_hyper_parameters_are_named(tmp_path):
    with pytest.raises(InputError, match="--momentum"):
        train(_config(tmp_path, momentum=0.0))  # Nesterov needs momentum
    with pytest.raises(InputError, match="--batch-size.*larger than the training set"):
        train(_config(tmp_path, batch_size=100000))
    with pytest.raises(InputError, match="--milestones"):
        train(_config(tmp_path, schedule="step", milestones=[5, 3]))


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_channels_last_train_and_stay_finite(tmp_path, amp):
    """--amp bf16/fp16 (fp16 with a GradScaler) and --channels-last on the fast model: steps run, loss finite."""
    result = train(_config(tmp_path, amp=amp, channels_last=True, max_steps=4, ema=None))
    assert result["status"] == "max_steps"
    log = _read_log(os.path.join(tmp_path, "log.jsonl")) if os.path.exists(os.path.join(tmp_path, "log.jsonl")) else []
    ckpt = load_checkpoint(result["checkpoint"])
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())
    assert all(math.isfinite(r.get("train_loss", 0.0)) for r in log)


def test_runs_without_tqdm_and_matplotlib(tmp_path, monkeypatch, capsys):
    """Both are optional (the GPU machines, and some users, lack them): progress lines
    instead of a bar, no curves PNG, the same training."""
    import sys

    monkeypatch.setitem(sys.modules, "tqdm", None)  # `import tqdm` raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    result = train(_config(tmp_path / "bare", epochs=1, progress=True))
    assert result["status"] == "finished" and result["plot"] is None
    assert not os.path.exists(os.path.join(str(tmp_path / "bare"), "curves.png"))
    assert [r["epoch"] for r in _read_log(result["log"])] == [1]
    assert "matplotlib is not installed" in capsys.readouterr().err
