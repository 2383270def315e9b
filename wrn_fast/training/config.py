"""The run configuration (one dataclass; the `train` command line is derived from it) and the paper's recipes."""
import argparse
import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Optional

from ..data import DATASETS, InputError

# The WRN paper's recipes (Zagoruyko & Komodakis 2016, section 4), and a small
# one for the bundled digits that trains in about a minute on 2 CPU cores.
_RECIPES: Dict[str, Dict[str, Any]] = {
    "cifar10": dict(model="wrn-28-10", epochs=200, lr=0.1, batch_size=128, weight_decay=5e-4, momentum=0.9,
                    nesterov=True, schedule="step", milestones=[60, 120, 160], gamma=0.2, dropout=0.3),
    "svhn": dict(model="wrn-16-8", epochs=160, lr=0.01, batch_size=128, weight_decay=5e-4, momentum=0.9,
                 nesterov=True, schedule="step", milestones=[80, 120], gamma=0.1, dropout=0.4),
    "digits": dict(model="wrn-16-2", epochs=25, lr=0.1, batch_size=64, weight_decay=5e-4, momentum=0.9,
                   nesterov=True, schedule="cosine", milestones=[], gamma=0.1, dropout=0.0),
}
_RECIPES["cifar100"] = dict(_RECIPES["cifar10"])
_RECIPES["imagefolder"] = dict(_RECIPES["cifar10"], model="wrn-16-8")


def recipe(dataset: str) -> Dict[str, Any]:
    """The default hyper-parameters for a dataset (a copy)."""
    if dataset not in _RECIPES:
        raise InputError(f"--dataset: unknown dataset {dataset!r}; expected one of {', '.join(_RECIPES)}")
    return copy.deepcopy(_RECIPES[dataset])


def parse_milestones(text: str) -> List[int]:
    """'60,120,160' -> [60, 120, 160]; '' or 'none' -> []."""
    if text.strip() in ("", "none"):
        return []
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated epochs such as 60,120,160, got {text!r}")


AMP_MODES = ("bf16", "fp16", "none", "auto")


def parse_amp(text: str) -> str:
    if text not in AMP_MODES:
        raise argparse.ArgumentTypeError(f"expected bf16, fp16, none or auto, got {text!r}")
    return text


def _cli(help: Optional[str] = None, flag: Optional[str] = None, **argparse_kwargs) -> Dict[str, Any]:
    """Field metadata for the `train` option of this field (flag default: --field-name)."""
    return dict(cli=dict(help=help, flag=flag, **argparse_kwargs))


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in every checkpoint.

    Each field is a `train` command-line option (``metadata['cli']``: flag,
    help, parser), defaulting to the dataset's recipe when not given.
    """

    model: str = field(default="wrn-16-2", metadata=_cli("'wrn-DEPTH-WIDTH' (e.g. wrn-28-10) or wide_resnet50_2"))
    dataset: str = field(default="digits", metadata=_cli("default: digits", choices=DATASETS))
    data_dir: Optional[str] = field(default=None, metadata=_cli("directory holding the dataset files"))
    image_size: Optional[int] = field(default=None, metadata=_cli(
        "imagefolder resize / digits upscale (default 32 / 16)", type=int))
    epochs: int = field(default=25, metadata=_cli(type=int))
    lr: float = field(default=0.1, metadata=_cli("initial learning rate (for the global batch)", type=float))
    batch_size: int = field(default=64, metadata=_cli("global batch size (all ranks together)", type=int))
    weight_decay: float = field(default=5e-4, metadata=_cli("weight decay", flag="--wd", type=float))
    momentum: float = field(default=0.9, metadata=_cli(type=float))
    nesterov: bool = field(default=True, metadata=_cli("Nesterov momentum"))
    schedule: str = field(default="cosine", metadata=_cli(
        "'step' (milestones, gamma) or 'cosine' (per step, to 0)", choices=("step", "cosine")))
    milestones: List[int] = field(default_factory=list, metadata=_cli(
        "step schedule epochs, e.g. 60,120,160", type=parse_milestones))
    gamma: float = field(default=0.1, metadata=_cli("step schedule factor", type=float))
    dropout: float = field(default=0.0, metadata=_cli("dropout rate between the convolutions of a block",
                                                      type=float))
    label_smoothing: float = field(default=0.0, metadata=_cli(type=float))
    ema: Optional[float] = field(default=None, metadata=_cli(
        "also keep an EMA of the weights (e.g. 0.999)", type=float, metavar="DECAY"))
    ema_warmup: bool = field(default=True, metadata=_cli(
        "EMA decay min(DECAY, (1+t)/(10+t)) at step t, so the average is useful from the first epochs"))
    amp: str = field(default="auto", metadata=_cli("bf16 | fp16 | none (default: bf16 on CUDA, none on CPU)",
                                                   type=parse_amp))
    channels_last: bool = field(default=False, metadata=_cli("channels-last memory format"))
    compile: bool = field(default=False, metadata=_cli("torch.compile the model"))
    sync_bn: bool = field(default=False, metadata=_cli(
        "BatchNorm statistics over the global batch (data-parallel runs)"))
    seed: int = field(default=0, metadata=_cli(type=int))
    device: Optional[str] = field(default=None, metadata=_cli("cpu, cuda, cuda:N (default: cuda when available)"))
    out: Optional[str] = field(default=None, metadata=_cli(
        "output directory (default runs/DATASET-MODEL-TIME-SEED-SETTINGS; with --resume: the checkpoint's "
        "directory)"))
    workers: int = field(default=2, metadata=_cli("threads decoding imagefolder images (default 2)", type=int))
    max_steps: Optional[int] = field(default=None, metadata=_cli(
        "stop after N optimizer steps in total", type=int, metavar="N"))
    eval_batch_size: int = field(default=512, metadata=_cli("batch size of the test-set evaluation", type=int))
    progress: bool = field(default=True, metadata=_cli("progress bars (epoch lines are printed either way)"))

    @classmethod
    def for_dataset(cls, dataset: str, **overrides) -> "TrainConfig":
        """The dataset's recipe with ``overrides`` (None values are ignored)."""
        values = recipe(dataset)
        values["dataset"] = dataset
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @classmethod
    def flag(cls, name: str) -> str:
        """The command-line flag of field ``name`` (e.g. 'weight_decay' -> '--wd')."""
        spec = _FIELDS[name].metadata.get("cli", {})
        return spec.get("flag") or "--" + name.replace("_", "-")

    def validate(self, stored_in: Optional[str] = None, given: Iterable[str] = ()) -> None:
        """Raise InputError naming the first invalid setting.

        ``stored_in``: the checkpoint this config was read from; a bad value
        the user did not pass (not in ``given``) is then reported as the
        checkpoint's, not blamed on a flag.
        """
        given = set(given)

        def fail(name: str, expected: str) -> None:
            value = getattr(self, name)
            if stored_in is not None and name not in given:
                raise InputError(f"--resume {stored_in}: the checkpoint's stored config has {name}={value!r}; "
                                 f"expected {expected} (the file is damaged or was edited)")
            raise InputError(f"{self.flag(name)}: expected {expected}, got {value!r}")

        def number(value) -> bool:
            return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

        def positive_int(name):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                fail(name, "a positive int")

        for name in ("model", "dataset", "schedule", "amp"):
            if not isinstance(getattr(self, name), str):
                fail(name, "a string")
        positive_int("epochs")
        positive_int("batch_size")
        positive_int("eval_batch_size")
        if self.image_size is not None:
            positive_int("image_size")
        if not (number(self.lr) and self.lr > 0):
            fail("lr", "a finite positive number")
        if not (number(self.weight_decay) and self.weight_decay >= 0):
            fail("weight_decay", "a finite number >= 0")
        if not (number(self.momentum) and 0 <= self.momentum < 1):
            fail("momentum", "a value in [0, 1)")
        if self.nesterov and self.momentum == 0:
            raise InputError("--nesterov: Nesterov momentum needs --momentum > 0 (got 0); add --no-nesterov")
        if self.schedule not in ("step", "cosine"):
            fail("schedule", "'step' or 'cosine'")
        milestones = self.milestones
        if not isinstance(milestones, (list, tuple)) or any(
                not isinstance(m, int) or isinstance(m, bool) or m <= 0 for m in milestones) \
                or list(milestones) != sorted(set(milestones)):
            fail("milestones", "increasing positive epochs")
        if not (number(self.gamma) and 0 < self.gamma <= 1):
            fail("gamma", "a factor in (0, 1]")
        if not (number(self.dropout) and 0 <= self.dropout < 1):
            fail("dropout", "a rate in [0, 1)")
        if not (number(self.label_smoothing) and 0 <= self.label_smoothing < 1):
            fail("label_smoothing", "a value in [0, 1)")
        if self.ema is not None and not (number(self.ema) and 0 < self.ema < 1):
            fail("ema", "a decay in (0, 1) such as 0.999")
        if self.amp not in AMP_MODES:
            fail("amp", "bf16, fp16, none or auto")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            fail("seed", "an int")
        if self.max_steps is not None:
            positive_int("max_steps")
        if not isinstance(self.workers, int) or isinstance(self.workers, bool) or self.workers < 0:
            fail("workers", "an int >= 0")

    def settings(self) -> Dict[str, Any]:
        """What the run computes (everything but where and how long it runs)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUN_CONTROL}


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}

# What a resumed run may change: how long and where it runs, not what it computes.
RUN_CONTROL = ("epochs", "max_steps", "device", "out", "workers", "progress", "eval_batch_size", "data_dir",
               "compile")
