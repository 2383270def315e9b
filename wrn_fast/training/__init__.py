"""Training, evaluation and checkpoints (``python -m wrn_fast train|eval``).

Modules, lowest first (each imports only those above it in this list, plus wrn_fast.data / checkpoint / backend / models):
  config       TrainConfig (the `train` options are derived from its fields), the paper's recipes
  optimizer    SGD and its learning-rate schedule, stepped per iteration
  rng          seeds as pure functions of (seed, epoch, batch, step, rank); RNG state save / restore
  batches      a rank's share of each global batch: the epoch's permutation, crops, flips, normalisation
  rundir       the run directory: default names, writability checks, the exclusive run lock
  signals      SIGINT / SIGTERM: finish the step, save, exit 130 / 143
  distributed  torchrun process group, --device parsing, sync-BN
  models       model names -> models, architecture checks, state_dicts in and out of checkpoints
  ema          weight EMA with warm-up
  progress     console lines, progress bars, JSONL log (strict JSON), curves PNG
  evaluation   test loss / accuracy of a model or a checkpoint file
  trainer      Trainer (step / epoch / save / run) and train()
"""
from ..checkpoint import CHECKPOINT_FORMAT, atomic_write, load_checkpoint, save_checkpoint
from .config import TrainConfig, recipe
from .evaluation import evaluate, evaluate_checkpoint
from .models import build_model, check_architecture
from .progress import plot_history
from .trainer import Trainer, train

__all__ = [
    "TrainConfig",
    "Trainer",
    "recipe",
    "train",
    "evaluate",
    "evaluate_checkpoint",
    "save_checkpoint",
    "load_checkpoint",
    "atomic_write",
    "build_model",
    "check_architecture",
    "plot_history",
    "CHECKPOINT_FORMAT",
]
