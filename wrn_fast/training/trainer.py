"""The training loop: a :class:`Trainer` whose step, epoch and save are methods, and :func:`train`.

Determinism and exact resume
  Every source of randomness is a pure function of (seed, epoch, batch) or
  (seed, step, rank), never of how long the process has been running:
    - the epoch's permutation:       torch.Generator seeded from (seed, epoch)
    - a batch's crops and flips:     torch.Generator seeded from (seed, epoch, batch)
    - dropout (torch's global RNG):  reseeded from (seed, step, rank) before each step
  so a run resumed from any checkpoint -- end of epoch, mid-epoch after
  Ctrl-C, SIGTERM or --max-steps -- replays the same data order, augmentation
  and dropout masks as a run that never stopped. The optimizer, scheduler
  (stepped per iteration), GradScaler, EMA, the epoch's running sums and the
  RNG states are all in the checkpoint.

Data parallel (torchrun)
  ``torchrun --nproc-per-node N -m wrn_fast train ...`` initialises
  torch.distributed from the environment (env://; NCCL on CUDA, gloo on CPU).
  Every rank draws the same permutation and the same augmentation for the
  GLOBAL batch and keeps its contiguous 1/N slice, so N ranks with DDP compute
  the gradient of the same global batch as one process would (exactly so for
  BatchNorm only with --sync-bn). Rank 0 owns the run directory (lock, logs,
  checkpoints); the others wait at a barrier.

Faults
  The run directory is locked for the whole run (rundir.RunLock). Checkpoints
  are written atomically with a payload checksum (checkpoint.py). A first
  SIGINT / SIGTERM finishes the step, saves and exits 130 / 143; a second one
  stops at once, leaving the last checkpoint. A non-finite loss or weight
  stops the run without saving over the last good checkpoint.
"""
import dataclasses
import os
import signal
import time
import uuid
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import InputError, Split, load_dataset
from ..checkpoint import CHECKPOINT_FORMAT, CHECKPOINT_VERSION, all_finite, remove_stale_temporaries, save_checkpoint
from .batches import TrainBatches
from .config import RUN_CONTROL, TrainConfig
from .distributed import Dist, apply_sync_bn, init_distributed
from .ema import ModelEMA
from .evaluation import amp_dtype as _amp_dtype, evaluate
from .models import arch_kwargs_from_name, build_model, check_architecture, load_weights, unwrapped_state_dict
from .optimizer import describe_schedule, make_optimizer
from .progress import append_log, format_record, plot_history, print_main, progress_bar_class, write_log
from .rng import derive_seed, rng_state, set_rng_state
from .resume import resolve_resume
from .rundir import RunLock, check_existing_run, check_out_dir, create_run_dir, default_run_dir
from .signals import Aborted, StopRequest, signal_name

CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
PLOT_NAME = "curves.png"


class Trainer:
    """One training run. Construction checks everything and loads data and state but writes nothing;
    :meth:`run` takes the run directory and trains.

    ``ckpt``/``resume_path``: the checkpoint being continued. ``out_flag``:
    how error messages name the output directory (``--out``, or the resumed
    checkpoint's directory when no --out was given).
    """

    LOG_EVERY = 10  # steps between progress updates, and between cross-rank stop / divergence agreements

    def __init__(self, config: TrainConfig, dist: Dist, device: torch.device, ckpt: Optional[Dict[str, Any]] = None,
                 resume_path: Optional[str] = None, out_flag: str = "--out"):
        self.config, self.dist, self.device = config, dist, device
        self.ckpt, self.resume_path, self.out_flag = ckpt, resume_path, out_flag
        if config.batch_size % dist.world:
            raise InputError(f"--batch-size: the global batch {config.batch_size} must be divisible by the world "
                             f"size {dist.world} (each rank takes an equal share)")
        self.local_batch = config.batch_size // dist.world

        # Output directory: chosen and checked now, created and locked by run().
        self.default_out = config.out is None
        if self.default_out:
            config.out = dist.broadcast(default_run_dir(config.dataset, config.model, config.seed, config.settings()))
            self.out_flag = "--out (default)"
        self._on_main(lambda: check_out_dir(config.out, self.out_flag))
        self._on_main(self._check_existing_run)  # early; repeated under the lock

        train_split, test_split, info = load_dataset(config.dataset, config.data_dir, config.image_size,
                                                     config.workers)
        if len(train_split) < config.batch_size:
            raise InputError(f"--batch-size: {config.batch_size} is larger than the training set "
                             f"({len(train_split)} images); training drops incomplete batches")
        self.info = info
        self.steps_per_epoch = len(train_split) // config.batch_size  # incomplete last batch dropped

        torch.manual_seed(derive_seed(config.seed, 0x1A17))  # weight initialisation (same on every rank)
        model, self.model_kwargs = build_model(config.model, info.num_classes, info.in_channels, config.dropout)
        source = f"--resume {resume_path}"
        if ckpt is not None:
            check_architecture(source, {**arch_kwargs_from_name(ckpt["model_name"]), **ckpt["model_kwargs"]},
                               config.model, info.num_classes, info.in_channels, config.dataset)
            load_weights(model, ckpt["model"], source)
        model.to(device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        if config.sync_bn and dist.active:
            model = apply_sync_bn(model, device)
        self.model = model
        self.ema = ModelEMA(model, config.ema, config.ema_warmup) if config.ema is not None else None
        self.optimizer, self.scheduler = make_optimizer(model, config, self.steps_per_epoch)
        self.amp_dtype = _amp_dtype(config.amp, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)

        self.train_model = model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            self.train_model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.train_model = torch.compile(self.train_model)

        self.epoch, self.batch_in_epoch, self.step_count = 0, 0, 0
        self.history: List[Dict[str, Any]] = []
        accum = dict(loss_sum=0.0, correct=0.0, count=0.0, seconds=0.0)
        self.run_id = uuid.uuid4().hex[:16]
        if ckpt is not None:
            self._restore(ckpt, source)
            accum = dict(ckpt["epoch_accum"])

        self.batches = TrainBatches(train_split, info, config.seed, config.batch_size, dist.rank, dist.world, device,
                                    config.channels_last)
        self.test_split = Split(test_split.images.to(device), test_split.labels.to(device))
        # This rank's epoch loss sum, correct, count; all-reduced at the epoch's end.
        self.sums = torch.tensor([accum["loss_sum"], accum["correct"], accum["count"]], dtype=torch.float64,
                                 device=device)
        self.epoch_t0 = time.perf_counter() - accum["seconds"]
        # The first step whose loss was not finite (-1: none): a device tensor, read only at sync points.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self.mutating = False  # inside a step / an epoch switch: an abort must not save a half-updated state
        self.lock: Optional[RunLock] = None
        self.saved_step: Optional[int] = ckpt["step"] if ckpt is not None else None

    # ----------------------------------------------------------------- paths and the run directory
    @property
    def ckpt_path(self) -> str:
        return os.path.join(self.config.out, CHECKPOINT_NAME)

    @property
    def log_path(self) -> str:
        return os.path.join(self.config.out, LOG_NAME)

    @property
    def plot_path(self) -> str:
        return os.path.join(self.config.out, PLOT_NAME)

    def _on_main(self, fn):
        """Run ``fn`` on rank 0; an InputError there is raised on every rank (nobody waits at a barrier)."""
        error = None
        if self.dist.is_main:
            try:
                fn()
            except InputError as e:
                error = str(e)
        error = self.dist.broadcast(error)
        if error is not None:
            raise InputError(error)

    def _check_existing_run(self) -> None:
        check_existing_run(self.config.out, CHECKPOINT_NAME, self.out_flag, self.ckpt, self.resume_path)

    def _open_run_dir(self) -> None:
        """Create and lock the run directory, re-check it under the lock, clear debris of killed writers."""
        def open_on_main():
            out = create_run_dir(self.config.out, exclusive=self.default_out)
            self.config.out = out
            self.lock = RunLock(out, self.out_flag).acquire()
            try:
                if self.lock.stale:
                    print_main(True, f"wrn-fast: {out} held a stale lock ({self.lock.stale.get('pid')} on "
                                     f"{self.lock.stale.get('host')}, a run that was killed); taking it over")
                self._check_existing_run()
                removed = remove_stale_temporaries(out, (CHECKPOINT_NAME, LOG_NAME, PLOT_NAME))
                if removed:
                    print_main(True, f"wrn-fast: removed {len(removed)} temporary file(s) of an interrupted write "
                                     f"({', '.join(os.path.basename(p) for p in removed)})")
                write_log(self.log_path, self.history)  # on resume: exactly the checkpoint's epochs
            except BaseException:
                self.lock.release()
                self.lock = None
                raise

        self._on_main(open_on_main)
        self.config.out = self.dist.broadcast(self.config.out)
        self.dist.barrier()

    # ----------------------------------------------------------------- state
    def _restore(self, ckpt: Dict[str, Any], source: str) -> None:
        try:
            self.optimizer.load_state_dict(ckpt["optimizer"])
            self.scheduler.load_state_dict(ckpt["scheduler"])
            if ckpt.get("scaler"):
                self.scaler.load_state_dict(ckpt["scaler"])
        except (ValueError, KeyError, TypeError, RuntimeError) as e:
            raise InputError(f"{source}: the checkpoint's optimizer / scheduler state does not fit the model "
                             f"({type(e).__name__}: {e})") from e
        if self.ema is not None and ckpt.get("ema") is not None:
            load_weights(self.ema.module, ckpt["ema"], source, "EMA weights")
        self.epoch, self.batch_in_epoch, self.step_count = ckpt["epoch"], ckpt["batch_in_epoch"], ckpt["step"]
        self.history = [r for r in ckpt["history"] if not r.get("partial")]
        self.run_id = ckpt.get("run_id") or self.run_id
        set_rng_state(ckpt["rng"])

    def checkpoint_state(self) -> Dict[str, Any]:
        loss_sum, correct, count = self.sums.tolist()
        return dict(
            format=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, run_id=self.run_id, model_name=self.config.model,
            model_kwargs=self.model_kwargs, model=unwrapped_state_dict(self.model),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler.is_enabled() else None,
            ema=self.ema.state_dict() if self.ema is not None else None,
            epoch=self.epoch, batch_in_epoch=self.batch_in_epoch, step=self.step_count,
            epoch_accum=dict(loss_sum=loss_sum, correct=correct, count=count,
                             seconds=time.perf_counter() - self.epoch_t0),
            history=list(self.history), rng=rng_state(), config=dataclasses.asdict(self.config),
            dataset_info=dataclasses.asdict(self.info), world_size=self.dist.world,
        )

    def save(self) -> None:
        """Write the checkpoint (rank 0, atomically); every rank waits for it."""
        self.dist.barrier()  # every rank finished the step being saved
        if self.dist.is_main:
            save_checkpoint(self.ckpt_path, self.checkpoint_state())
        self.saved_step = self.step_count
        self.dist.barrier()  # nobody runs ahead (or exits) while rank 0 writes

    # ----------------------------------------------------------------- divergence and stopping
    def _weights_finite(self) -> bool:
        return all(all_finite(p) for p in self.model.parameters())

    def divergence(self) -> Optional[str]:
        """Why the training state is no longer finite (None while it is): a non-finite loss at any step so
        far, or non-finite weights. A sync point (all ranks agree); checked before every save."""
        bad = self.dist.all_reduce_(self.first_bad_step.double().reshape(1), op="max")
        if bad.item() >= 0:
            return f"the training loss became non-finite at step {int(bad.item()) + 1}"
        if not self._weights_finite():
            return f"the weights became non-finite at step {self.step_count}"
        return None

    def _should_stop(self, stop: StopRequest) -> Tuple[bool, Optional[str]]:
        """(stop requested, divergence): a signal is seen at once in a single process; every LOG_EVERY steps
        all ranks agree on it (or the collectives hang) and on the first non-finite loss, in one all-reduce."""
        if self.step_count % self.LOG_EVERY:
            return (not self.dist.active) and stop.requested, None
        flags = torch.stack([torch.tensor(1.0 if stop.requested else 0.0, dtype=torch.float64, device=self.device),
                             self.first_bad_step.double()])
        requested, bad = self.dist.all_reduce_(flags, op="max").tolist()
        if requested and not stop.requested:  # another rank got the signal
            stop.requested, stop.signum = True, stop.signum or signal.SIGINT
        return stop.requested, (f"the training loss became non-finite at step {int(bad) + 1}" if bad >= 0 else None)

    # ----------------------------------------------------------------- training
    def step(self, perm: torch.Tensor) -> None:
        """One optimizer step on batch ``batch_in_epoch`` of the epoch's permutation ``perm``."""
        config, dist = self.config, self.dist
        x, y = self.batches.batch(perm, self.epoch, self.batch_in_epoch)
        torch.manual_seed(derive_seed(config.seed, self.step_count, dist.rank, 0xD0))  # dropout masks
        self.mutating = True
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            logits = self.train_model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=config.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step_count)
        with torch.no_grad():
            loss = loss.detach()
            self.sums[0] += loss.double() * y.numel()
            self.sums[1] += (logits.detach().argmax(1) == y).sum()
            self.sums[2] += y.numel()
            self.first_bad_step.copy_(torch.where(torch.isfinite(loss) | (self.first_bad_step >= 0),
                                                  self.first_bad_step, self.step_count))
        self.batch_in_epoch += 1
        self.step_count += 1
        self.mutating = False

    def run_epoch(self, stop: StopRequest) -> str:
        """Train to the end of the current epoch; returns 'epoch' (completed), 'max_steps', 'interrupted' or
        'diverged' (with self.divergence_reason)."""
        config = self.config
        perm = self.batches.permutation(self.epoch)
        bar = progress_bar_class()(total=self.steps_per_epoch, initial=self.batch_in_epoch,
                                   desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False, dynamic_ncols=True,
                                   unit="step", disable=True if not (self.dist.is_main and config.progress) else None)
        bar_t0, bar_images = time.perf_counter(), 0
        self.train_model.train()
        try:
            while self.batch_in_epoch < self.steps_per_epoch:
                if config.max_steps is not None and self.step_count >= config.max_steps:
                    return "max_steps"
                requested, self.divergence_reason = self._should_stop(stop)
                if self.divergence_reason:
                    return "diverged"
                if requested:
                    return "interrupted"
                self.step(perm)
                bar_images += config.batch_size
                bar.update(1)
                if self.step_count % self.LOG_EVERY == 0 and not bar.disable:
                    s = self.sums.tolist()  # one host sync every LOG_EVERY steps
                    now = time.perf_counter()
                    bar.set_postfix(loss=f"{s[0] / max(s[2], 1):.4f}", acc=f"{100 * s[1] / max(s[2], 1):.2f}%",
                                    img_s=f"{bar_images / max(now - bar_t0, 1e-9):.0f}", refresh=False)
                    bar_t0, bar_images = now, 0
        finally:
            bar.close()
        self.divergence_reason = self.divergence()
        if self.divergence_reason:
            return "diverged"
        self._finish_epoch()
        return "epoch"

    def _finish_epoch(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the epoch's time includes its queued kernels
        record = self._epoch_record(time.perf_counter() - self.epoch_t0)
        self.mutating = True
        self.history.append(record)
        self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self.sums.zero_()
        self.epoch_t0 = time.perf_counter()
        self.mutating = False
        if self.dist.is_main:
            append_log(self.log_path, record)
            print_main(True, format_record(record, self.config.epochs))
        self.save()

    def evaluate(self, model: Optional[nn.Module] = None) -> Tuple[float, float]:
        return evaluate(model if model is not None else self.model, self.test_split, self.batches.mean,
                        self.batches.std, self.config.eval_batch_size, self.amp_dtype, self.config.channels_last, self.dist)

    def _epoch_record(self, seconds: float) -> Dict[str, Any]:
        totals = self.dist.all_reduce_(self.sums.clone())
        loss_sum, correct, count = totals.tolist()
        test_loss, test_acc = self.evaluate()
        record = dict(epoch=self.epoch + 1, step=self.step_count, lr=self.scheduler.get_last_lr()[0],
                      train_loss=loss_sum / count, train_acc=correct / count, test_loss=test_loss, test_acc=test_acc)
        if self.ema is not None:
            record["ema_test_loss"], record["ema_test_acc"] = self.evaluate(self.ema.module)
        record.update(images_per_s=self.steps_per_epoch * self.config.batch_size / max(seconds, 1e-9),
                      epoch_time_s=seconds, time_s=time.perf_counter() - self.started)
        return record

    def _describe(self) -> None:
        from ..backend import resolve

        config, info, dist = self.config, self.info, self.dist
        say = lambda text: print_main(dist.is_main, text)  # noqa: E731
        n_params = sum(p.numel() for p in self.model.parameters())
        say(f"wrn-fast train: {config.model} ({n_params / 1e6:.2f}M params) on {config.dataset} "
            f"({self.batches.size} train / {len(self.test_split)} test images, {info.in_channels}x{info.image_size}x"
            f"{info.image_size}, {info.num_classes} classes)")
        ema = ""
        if config.ema:
            ema = f", EMA {config.ema}" + (" (warm-up min(d, (1+t)/(10+t)))" if config.ema_warmup else "")
        say(f"  {config.epochs} epochs x {self.steps_per_epoch} steps, batch {config.batch_size}"
            f"{f' ({dist.world} ranks x {self.local_batch})' if dist.active else ''}, SGD lr {config.lr} "
            f"{'nesterov ' if config.nesterov else ''}momentum {config.momentum} wd {config.weight_decay}, "
            f"{describe_schedule(config)}, dropout {config.dropout}{ema}")
        amp = str(self.amp_dtype).replace('torch.', '') if self.amp_dtype else 'none'
        say(f"  device {self.device}, backend {resolve(self.device)}, amp {amp}, seed {config.seed}, "
            f"output {config.out}")
        if self.ckpt is not None:
            say(f"  resuming {self.resume_path} at epoch {self.epoch} batch {self.batch_in_epoch} (step "
                f"{self.step_count}); writing to {config.out}")

    def run(self) -> Dict[str, Any]:
        """Take the run directory, train to the end (or a stop), save; returns metrics and paths.

        Raises :class:`~wrn_fast.training.signals.Aborted` on a second stop signal.
        """
        stop = StopRequest()
        with stop:  # for the whole run, the final save included
            self._open_run_dir()
            try:
                return self._run(stop)
            finally:
                if self.lock is not None:
                    self.lock.release()

    def _run(self, stop: StopRequest) -> Dict[str, Any]:
        config, dist = self.config, self.dist
        self._describe()
        self.started = time.perf_counter()
        self.divergence_reason = None
        status = "finished"
        try:
            while self.epoch < config.epochs:
                outcome = self.run_epoch(stop)
                if outcome != "epoch":
                    status = outcome
                    break
        except Aborted as e:
            self._abort_message(signal_name(e.signum))
            raise
        except KeyboardInterrupt:
            if self.mutating:
                self._abort_message("KeyboardInterrupt", while_updating=True)
                raise
            status = "interrupted"
        if status == "interrupted" and stop.signum is None:
            stop.signum = signal.SIGINT  # a KeyboardInterrupt that did not come through our handler

        result: Dict[str, Any] = dict(status=status, epoch=self.epoch, step=self.step_count,
                                      checkpoint=self.ckpt_path, log=self.log_path, plot=self.plot_path,
                                      out=config.out, rank=dist.rank, world_size=dist.world)
        try:
            if status in ("interrupted", "max_steps"):
                self.divergence_reason = self.divergence()  # never save a non-finite state
                if self.divergence_reason:
                    status = result["status"] = "diverged"
            if status == "diverged":
                result.update(test_loss=None, test_acc=None, error=self.divergence_reason)
                last = (f"the last good checkpoint {self.ckpt_path} (step {self.saved_step}) is kept"
                        if self.saved_step is not None else "no checkpoint was written")
                print_main(dist.is_main, f"wrn-fast: {self.divergence_reason} (epoch {self.epoch + 1}); stopping "
                                         f"without saving the diverged state; {last}. Lower --lr or check the data.")
            elif status != "finished":
                # Mid-epoch: save where we are (resume continues from this batch), and measure the model as it is.
                self.save()
                loss, acc = self.evaluate()
                result.update(test_loss=loss, test_acc=acc)
                if status == "interrupted":
                    result["exit_status"] = stop.exit_status
                    print_main(dist.is_main, f"wrn-fast: stopped by {signal_name(stop.signum)} at epoch "
                                             f"{self.epoch + 1}, batch {self.batch_in_epoch} (step {self.step_count}); "
                                             f"checkpoint saved. Continue with: python -m wrn_fast train --resume "
                                             f"{self.ckpt_path}")
                else:
                    print_main(dist.is_main, f"wrn-fast: reached --max-steps {config.max_steps} at epoch "
                                             f"{self.epoch + 1}, batch {self.batch_in_epoch} (test accuracy "
                                             f"{100 * acc:.2f}%, loss {loss:.4f}); continue with --resume "
                                             f"{self.ckpt_path}")
            else:
                if not self.history:
                    loss, acc = self.evaluate()
                else:
                    loss, acc = self.history[-1]["test_loss"], self.history[-1]["test_acc"]
                result.update(test_loss=loss, test_acc=acc)
                if self.history and "ema_test_acc" in self.history[-1]:
                    result.update(ema_test_loss=self.history[-1]["ema_test_loss"],
                                  ema_test_acc=self.history[-1]["ema_test_acc"])
        except Aborted as e:
            self._abort_message(signal_name(e.signum))
            raise
        if not (dist.is_main and self.history and status != "diverged" and plot_history(
                self.history, self.plot_path, title=f"{config.model} on {config.dataset}")):
            result["plot"] = None if not os.path.exists(self.plot_path) else self.plot_path
        result["seconds"] = time.perf_counter() - self.started
        result["history"] = self.history
        # Every rank's last collective (the evaluation's all_reduce) is released by gloo's
        # worker thread, which takes the GIL to drop the Python tensor; a rank that exits
        # right after it races interpreter shutdown (std::terminate, SIGABRT at exit, seen in
        # 2-rank CPU runs). Waiting at a barrier hands that thread the GIL first.
        dist.barrier()
        return result

    def _abort_message(self, what: str, while_updating: bool = False) -> None:
        state = ("while the training state was being updated; not saving it" if while_updating
                 else "stopped at once without saving")
        last = (f"the last checkpoint {self.ckpt_path} (step {self.saved_step}) is intact"
                if self.saved_step is not None else "no checkpoint was written")
        print_main(self.dist.is_main, f"\nwrn-fast: {what}: {state}; {last}.")


# --------------------------------------------------------------------------- entry point
def train(config: TrainConfig, resume: Optional[str] = None, explicit: Optional[Dict[str, Any]] = None
          ) -> Dict[str, Any]:
    """Train (or continue) a run; returns the final metrics and the output paths.

    ``explicit``: the options the user gave on the command line (used with
    ``resume`` to tell deliberate overrides from defaults).
    """
    ckpt, out_flag = None, "--out"
    if resume is not None:
        if explicit is None:  # Python API: the run-control fields of `config` apply, the rest comes from the checkpoint
            explicit = {k: getattr(config, k) for k in RUN_CONTROL if getattr(config, k) is not None}
        config, ckpt, out_flag = resolve_resume(resume, explicit)
    else:
        config.validate()
    dist, device = init_distributed(config.device)
    try:
        return Trainer(config, dist, device, ckpt=ckpt, resume_path=resume, out_flag=out_flag).run()
    finally:
        if dist.initialized_here:
            import torch.distributed as tdist

            tdist.destroy_process_group()
