"""What a run shows and records: console lines, progress bars, the JSONL log, the curves PNG."""
import json
import math
import os
import sys
from typing import Any, Dict, List

from ..checkpoint import atomic_write


def json_safe(value):
    """``value`` with every non-finite float replaced by None, so json.dumps emits valid JSON (null, not NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def dumps(value) -> str:
    """Strict JSON (non-finite floats as null)."""
    return json.dumps(json_safe(value), allow_nan=False)


def print_main(is_main: bool, *args, **kwargs) -> None:
    """print on rank 0 only, through tqdm.write when tqdm is installed (so bars are not torn)."""
    if not is_main:
        return
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is optional: plain lines without a progress bar
        print(*args, **kwargs)
        return
    tqdm.write(" ".join(str(a) for a in args), **kwargs)


class NoBar:
    """Stands in for tqdm's bar when tqdm is not installed (progress lines only)."""

    disable = True

    def __init__(self, *args, **kwargs):
        pass

    def update(self, n=1):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def progress_bar_class():
    try:
        from tqdm import tqdm
    except ImportError:
        return NoBar
    return tqdm


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


def format_record(r: Dict[str, Any], epochs: int) -> str:
    width = len(str(epochs))
    text = (f"epoch {r['epoch']:>{width}}/{epochs}  lr {r['lr']:.4f}  train loss {r['train_loss']:.4f} "
            f"acc {100 * r['train_acc']:6.2f}%  test loss {r['test_loss']:.4f} acc {100 * r['test_acc']:6.2f}%")
    if "ema_test_acc" in r:
        text += f" (EMA {100 * r['ema_test_acc']:6.2f}%)"
    return text + f"  {r['images_per_s']:.0f} img/s  {r['epoch_time_s']:.1f}s"


def write_log(path: str, history: List[Dict[str, Any]]) -> None:
    """Replace the JSONL log with ``history`` (one line per epoch), atomically."""
    text = "".join(dumps(r) + "\n" for r in history)
    atomic_write(path, lambda f: f.write(text.encode()))


def append_log(path: str, record: Dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def plot_history(history: List[Dict[str, Any]], path: str, title: str = "") -> bool:
    """Loss and accuracy curves (train / test, EMA when present) per epoch, as a PNG.

    Returns False (and writes nothing) when matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError:
        print("wrn_fast: matplotlib is not installed: no curves PNG (the JSONL log has every figure)",
              file=sys.stderr)
        return False

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [r["train_loss"] for r in history], label="train")
    ax_loss.plot(epochs, [r["test_loss"] for r in history], label="test")
    ax_acc.plot(epochs, [100 * r["train_acc"] for r in history], label="train")
    ax_acc.plot(epochs, [100 * r["test_acc"] for r in history], label="test")
    if history and "ema_test_acc" in history[0]:
        ax_loss.plot(epochs, [r["ema_test_loss"] for r in history], label="test (EMA)")
        ax_acc.plot(epochs, [100 * r["ema_test_acc"] for r in history], label="test (EMA)")
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    finally:
        plt.close(fig)
    return True
