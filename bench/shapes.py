"""The convolution shapes of the benchmarked networks, derived from the architectures.

``wrn_cifar_convs(depth, k, batch)`` walks CIFAR WRN-depth-k (widths 16, 16k, 32k, 64k; stride 2
on the first conv of groups 2 and 3; 1x1 projections where a block changes width or stride; the
3x3 stem), ``wrn50_2_convs`` torchvision's WRN-50-2 at 224x224. Each conv carries its ``role``,
which sets the fusion it gets in wrn_fast (``ROLE_CONFIG``): the prologue, dropout, residual and
output statistics of its place in the block.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple


@dataclass(frozen=True)
class ConvSpec:
    N: int
    Cin: int
    Cout: int
    k: int
    stride: int
    H: int
    W: int
    role: str

    @property
    def pad(self) -> int:
        return self.k // 2

    @property
    def Ho(self) -> int:
        return (self.H + 2 * self.pad - self.k) // self.stride + 1

    @property
    def Wo(self) -> int:
        return (self.W + 2 * self.pad - self.k) // self.stride + 1

    @property
    def label(self) -> str:
        return (f"{self.role} N{self.N} {self.Cin}->{self.Cout} k{self.k}s{self.stride} {self.H}x{self.W}")

    def as_dict(self) -> Dict[str, object]:
        return {"N": self.N, "Cin": self.Cin, "Cout": self.Cout, "k": self.k, "stride": self.stride,
                "H": self.H, "W": self.W, "Ho": self.Ho, "Wo": self.Wo, "role": self.role}


def wrn_cifar_convs(depth: int, k: int, batch: int, res: int = 32, distinct: bool = True) -> List[ConvSpec]:
    """Every distinct (geometry, role) convolution of CIFAR WRN-depth-k (B(3,3), 'preact' shortcut);
    with ``distinct=False`` every convolution of the network in order (repeats included).

    Widths 16, 16k, 32k, 64k; groups at resolution res, res/2, res/4 (stride 2 on the first conv of
    groups 2 and 3); a 1x1 projection where a block changes width or stride; the 3x3 stem.
    """
    specs = [spec for _, spec in wrn_cifar_named_convs(depth, k, batch, res)]
    return distinct_convs(specs) if distinct else specs


def wrn_cifar_named_convs(depth: int, k: int, batch: int, res: int = 32) -> List[Tuple[str, ConvSpec]]:
    """Every convolution of CIFAR WRN-depth-k in network order, named as bench.static names the
    layers: ``stem``, ``g{1..3}.b{i}.conv1`` / ``.conv2`` / ``.shortcut``."""
    if (depth - 4) % 6 or depth < 10:
        raise ValueError(f"depth: expected 6n + 4 with n >= 1, got {depth}")
    n = (depth - 4) // 6
    widths = (16, 16 * k, 32 * k, 64 * k)
    named: List[Tuple[str, ConvSpec]] = [("stem", ConvSpec(batch, 3, widths[0], 3, 1, res, res, "stem"))]
    cin, h = widths[0], res
    for g in range(3):
        cout, stride = widths[g + 1], (1 if g == 0 else 2)
        for b in range(n):
            s = stride if b == 0 else 1
            ho = (h + 2 - 3) // s + 1
            named.append((f"g{g + 1}.b{b}.conv1", ConvSpec(batch, cin, cout, 3, s, h, h, "conv1")))
            named.append((f"g{g + 1}.b{b}.conv2", ConvSpec(batch, cout, cout, 3, 1, ho, ho, "conv2")))
            if cin != cout or s != 1:
                named.append((f"g{g + 1}.b{b}.shortcut", ConvSpec(batch, cin, cout, 1, s, h, h, "shortcut")))
            cin, h = cout, ho
    return named


def wrn50_2_convs(batch: int, res: int = 224) -> List[ConvSpec]:
    """Distinct convolutions of torchvision-style WRN-50-2 (bottleneck width x2, stride on the 3x3)."""
    specs = [ConvSpec(batch, 3, 64, 7, 2, res, res, "stem")]
    h = (res + 6 - 7) // 2 + 1
    h = (h + 2 - 3) // 2 + 1  # max pool 3x3 s2 p1
    inplanes = 64
    for planes, blocks, stride in ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2)):
        width, out = planes * 2, planes * 4
        for b in range(blocks):
            s = stride if b == 0 else 1
            specs.append(ConvSpec(batch, inplanes, width, 1, 1, h, h, "bnrelu"))
            specs.append(ConvSpec(batch, width, width, 3, s, h, h, "bnrelu"))
            ho = (h + 2 - 3) // s + 1
            specs.append(ConvSpec(batch, width, out, 1, 1, ho, ho, "bnrelu"))
            if b == 0 and (s != 1 or inplanes != out):
                specs.append(ConvSpec(batch, inplanes, out, 1, s, h, h, "shortcut"))
            inplanes, h = out, ho
    return distinct_convs(specs)


def distinct_convs(specs: Sequence[ConvSpec]) -> List[ConvSpec]:
    seen, out = set(), []
    for s in specs:
        if s not in seen:
            seen.add(s)
            out.append(s)
    return out


# name -> (kind, depth, k, default batches, resolution)
KERNEL_MODELS = {
    "wrn-28-10": ("cifar", 28, 10, (128, 512, 960), 32),
    "wrn-28-2": ("cifar", 28, 2, (128, 512, 960), 32),
    "wrn-16-8": ("cifar", 16, 8, (128, 512, 960), 32),
    "wrn-70-16": ("cifar", 70, 16, (128, 512, 960), 32),
    "wrn-50-2": ("imagenet", 50, 2, (64,), 224),
}
QUICK_KERNEL_MODELS = {"wrn-10-2": ("cifar", 10, 2, (8,), 16)}


def model_convs(name: str, batch: int, table=None) -> List[ConvSpec]:
    kind, depth, k, _, res = (table or {**KERNEL_MODELS, **QUICK_KERNEL_MODELS})[name]
    return wrn_cifar_convs(depth, k, batch, res) if kind == "cifar" else wrn50_2_convs(batch, res)


ROLE_CONFIG = {  # role -> (prologue, dropout, residual, stats)
    "stem": (False, False, False, True),
    "conv1": (True, False, False, True),
    "conv2": (True, True, True, True),
    "shortcut": (True, False, False, False),
    "bnrelu": (True, False, False, True),
}
