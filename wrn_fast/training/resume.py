"""What `train --resume` continues: the checkpoint's run, its settings, and the directory it writes to."""
import dataclasses
import os
from typing import Any, Dict, Tuple

from ..data import InputError
from ..checkpoint import check_train_checkpoint, is_train_checkpoint, load_checkpoint
from .config import RUN_CONTROL, TrainConfig
from .models import arch_kwargs_from_name, check_architecture


def resolve_resume(resume: str, explicit: Dict[str, Any]) -> Tuple[TrainConfig, Dict[str, Any], str]:
    """(config, checkpoint, out flag) of a resumed run: the checkpoint's config with run-control overrides.

    Writes go to --out when given, else to the directory the checkpoint file is
    in (not the one recorded inside it: a copy elsewhere must not touch the
    original run). Conflicting hyper-parameters are errors.
    """
    source = f"--resume {resume}"
    ckpt = load_checkpoint(resume, flag="--resume")
    if not is_train_checkpoint(ckpt):
        raise InputError(f"{source}: not a wrn_fast training checkpoint (a raw state_dict has no optimizer "
                         "state; use it with `eval`)")
    check_train_checkpoint(ckpt, source, for_resume=True)
    saved = dict(ckpt["config"])
    if "model" in explicit and explicit["model"] != saved.get("model"):
        check_architecture(source, {**arch_kwargs_from_name(str(saved.get("model"))), **ckpt["model_kwargs"]},
                           explicit["model"])
        raise InputError(f"{source}: checkpoint is {saved.get('model')} but --model {explicit['model']}")
    saved.setdefault("ema_warmup", False)  # checkpoints from before the warm-up continue without it
    conflicts = [f"{TrainConfig.flag(k)} {explicit[k]!r} (checkpoint: {saved.get(k)!r})" for k in explicit
                 if k not in RUN_CONTROL and k != "model" and explicit[k] != saved.get(k)]
    if conflicts:
        raise InputError(f"{source}: continues the checkpoint's run, whose settings differ from "
                         f"{'; '.join(conflicts)}. Drop these options, or start a new run without --resume")
    saved.update({k: v for k, v in explicit.items() if k in RUN_CONTROL})
    saved["max_steps"] = explicit.get("max_steps")  # a stop for one invocation, not part of the run
    out_flag = "--out"
    if explicit.get("out") is None:
        saved["out"] = os.path.dirname(os.path.abspath(resume))
        out_flag = f"--resume {resume}: its directory"
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = sorted(set(saved) - fields)
    if unknown:
        raise InputError(f"{source}: the checkpoint's stored config has unknown settings {unknown}; it was written "
                         "by another wrn_fast version")
    try:
        config = TrainConfig(**saved)
    except TypeError as e:
        raise InputError(f"{source}: the checkpoint's stored config cannot be read ({e})") from e
    config.validate(stored_in=resume, given=explicit)
    return config, ckpt, out_flag
