"""The options of the reference networks and their argument checks: activations, block structures
B(M), paddings, shortcuts. Plain ``torch.nn.functional``; no fast paths."""
from __future__ import annotations

import math
import re
from typing import Sequence, Tuple, Union

import torch
import torch.nn.functional as F

ACTIVATIONS = ("relu", "leaky_relu", "silu")
_ACTIVATION_ALIASES = {"swish": "silu"}

# Block structures B(M) studied in the paper (Tables 1 and 2): M lists the kernel sizes of
# the block's convolutions; l = len(M) is the deepening factor.
BLOCK_STRUCTURES = (
    (3, 3),
    (3, 1, 3),
    (1, 3, 1),
    (1, 3),
    (3, 1),
    (3, 1, 1),
    (3,),
    (3, 3, 3),
    (3, 3, 3, 3),
)

SHORTCUTS = ("preact", "raw")
PADDINGS = ("symmetric", "tf_same")

Pads = Tuple[int, int, int, int]  # (top, bottom, left, right) zero padding


def normalize_activation(activation: str) -> str:
    """Canonical activation name: 'relu', 'leaky_relu' or 'silu' ('swish' is an alias of 'silu')."""
    if not isinstance(activation, str):
        raise ValueError(f"activation: expected one of {ACTIVATIONS} (or 'swish'), got {activation!r}")
    name = _ACTIVATION_ALIASES.get(activation.lower(), activation.lower())
    if name not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {ACTIVATIONS} (or 'swish'), got {activation!r}")
    return name


def apply_activation(x: torch.Tensor, activation: str, negative_slope: float = 0.1) -> torch.Tensor:
    """The one activation used everywhere in the reference. ``activation`` must be canonical."""
    if activation == "relu":
        return F.relu(x)
    if activation == "leaky_relu":
        return F.leaky_relu(x, negative_slope)
    if activation == "silu":
        return F.silu(x)
    raise ValueError(f"activation: expected one of {ACTIVATIONS}, got {activation!r}")


def parse_block(block: Union[str, Sequence[int]]) -> Tuple[int, ...]:
    """Kernel sizes of a block structure: ``'B(3,1,3)'`` or ``(3, 1, 3)`` -> ``(3, 1, 3)``."""
    expected = "a block structure such as 'B(3,3)' or (3, 3), one of " + ", ".join(
        "B(" + ",".join(map(str, b)) + ")" for b in BLOCK_STRUCTURES
    )
    if isinstance(block, str):
        match = re.fullmatch(r"\s*B?\s*\(\s*(\d+(?:\s*,\s*\d+)*)\s*,?\s*\)\s*", block)
        if match is None:
            raise ValueError(f"block: expected {expected}; got {block!r}")
        sizes = tuple(int(s) for s in match.group(1).split(","))
    else:
        try:
            sizes = tuple(int(s) for s in block)
        except (TypeError, ValueError):
            raise ValueError(f"block: expected {expected}; got {block!r}") from None
        if any(isinstance(s, bool) or int(s) != s for s in block):
            raise ValueError(f"block: expected {expected}; got {block!r}")
    if sizes not in BLOCK_STRUCTURES:
        raise ValueError(f"block: expected {expected}; got {block!r}")
    return sizes


def conv_paddings_for(kernel_size: int, stride: int, padding: str) -> Pads:
    """Zero padding (top, bottom, left, right) of a k x k convolution.

    'symmetric': k // 2 on every side.
    'tf_same':   DeepMind/RobustBench DMWideResNet: stride-1 convs symmetric; stride-s convs pad
                 k - s in total, the extra pixel at the bottom/right (TensorFlow 'SAME' for even
                 input sizes): a 3x3 stride-2 conv pads (0, 1, 0, 1), a 1x1 stride-2 conv nothing.
    """
    if padding == "symmetric" or stride == 1:
        p = kernel_size // 2
        return (p, p, p, p)
    if padding == "tf_same":
        total = max(kernel_size - stride, 0)
        before, after = total // 2, total - total // 2
        return (before, after, before, after)
    raise ValueError(f"padding: expected one of {PADDINGS}, got {padding!r}")


# ----------------------------------------------------------------------------- argument checks


def _is_real(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_bn(bn_momentum, bn_eps, eps_name: str = "bn_eps") -> None:
    if bn_momentum is not None and not (_is_real(bn_momentum) and 0.0 <= bn_momentum <= 1.0):
        raise ValueError(f"bn_momentum: expected a float in [0, 1] or None, got {bn_momentum!r}")
    if not (_is_real(bn_eps) and 0 < bn_eps < math.inf):
        raise ValueError(f"{eps_name}: expected a finite float > 0, got {bn_eps!r}")


def _check_negative_slope(negative_slope) -> None:
    # NaN or inf would turn every negative activation into NaN (or inf) without any error.
    if not (_is_real(negative_slope) and math.isfinite(negative_slope)):
        raise ValueError(f"negative_slope: expected a finite float (leaky_relu's slope for x < 0), got {negative_slope!r}")


def _check_choice(name: str, value, choices: Tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}")


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
