"""Pure-PyTorch Wide Residual Networks: the specification every fused kernel is tested against.

Wide Residual Networks, Zagoruyko & Komodakis 2016 (arXiv 1605.07146).

CIFAR-style WRN-depth-k (pre-activation, widths 16k / 32k / 64k)::

    x ─ [(x - mean) / std] ─ conv1 3x3 (16) ─ block1 (16k, s1) ─ block2 (32k, s2) ─ block3 (64k, s2)
      ─ bn1 ─ act ─ global average pool ─ fc

Depth convention (the paper's Table 1 names): every group holds ``n = (depth - 4) / 6`` BasicBlocks,
whatever the block type B(M): WRN-40-2-B(1,3,1) has 6 blocks of three convolutions per group (1.43M
parameters, the paper's 1.4M), WRN-22-2-B(3,1,3) has 3 (1.15M, the paper's 1.1M). For the two-convolution
blocks depth is the number of weighted layers, as usual. ``blocks_per_group=`` sets n explicitly (the
paper's Table 2 keeps 36 convolutions at depth 40: B(3,3,3) with blocks_per_group=4).
Module and parameter names are those of xternalz/WideResNet-pytorch, RobustBench and TRADES
(``conv1``, ``block1.layer.0.bn1``, ``...convShortcut``, ``bn1``, ``fc``), so their checkpoints
load strict. The fast model (``wrn_fast.WideResNet``) subclasses :class:`WideResNet` and reads
the submodules and attributes documented here; treat them as a contract.

ImageNet-style WRN-50-2 / WRN-101-2 (post-activation bottlenecks, torchvision names):
:class:`WideResNetBottleneck`.

Modules, lowest first (each imports only those before it):
  options         activations, block structures B(M), paddings, shortcuts; the argument checks
  initialization  the source codebases' weight initialisations
  wide_resnet     BasicBlock, NetworkBlock, WideResNet (CIFAR-style)
  bottleneck      Bottleneck, WideResNetBottleneck (ImageNet-style)
  named           the named networks (wrn_28_10, ..., wide_resnet50_2) as one table

No fast paths live here: plain ``nn.Module``s and ``torch.nn.functional``.
"""
from .bottleneck import Bottleneck, WideResNetBottleneck
from .initialization import init_like_xternalz_
from .named import NAMED_ARCHITECTURES, named_constructors
from .options import (ACTIVATIONS, BLOCK_STRUCTURES, PADDINGS, SHORTCUTS, Pads, apply_activation, conv_paddings_for,
                      normalize_activation, parse_block)
from .wide_resnet import BasicBlock, NetworkBlock, WideResNet

# wrn_28_10, wrn_16_8, wrn_40_4, wrn_28_2, wrn_34_10, wrn_70_16, wide_resnet50_2, wide_resnet101_2
globals().update(named_constructors(WideResNet, WideResNetBottleneck))

__all__ = [
    "ACTIVATIONS",
    "BLOCK_STRUCTURES",
    "apply_activation",
    "normalize_activation",
    "parse_block",
    "init_like_xternalz_",
    "conv_paddings_for",
    "BasicBlock",
    "NetworkBlock",
    "WideResNet",
    "Bottleneck",
    "WideResNetBottleneck",
    "NAMED_ARCHITECTURES",
    "named_constructors",
    *NAMED_ARCHITECTURES,
]
