"""The upstream WRN architectures, re-implemented here from their code's behaviour (not from
wrn_fast.reference), for tests/test_convert.py and tests/test_compat.py.

Each keeps its codebase's module names (so its state_dict is theirs), its forward (including the
quirks that matter: blocks that read their raw input, 8x8 average pooling, manual TF-SAME padding)
and its BatchNorm settings. ``randomize_`` gives every tensor non-default values, so that BN
affine and running statistics are really checked.

Checked on 2026-11-30 against the real files, run locally and not kept here: with the same weights,
each model here gives bit-identical float64 eval and train logits, gradients and BN buffers, with the
same BatchNorm eps/momentum and state_dict keys in the same order, as xternalz/WideResNet-pytorch
wideresnet.py @ae12d25; RobustBench wide_resnet.py @9258a49 and dm_wide_resnet.py @471499d (mean/std
plain tensors, never saved) and @21148b5 (``persistent_normalization=True``: mean/std saved);
yaodongyu/TRADES models/wideresnet.py @9ee26f4; TorchSSL models/nets/wrn.py @99cf3eb; USB
semilearn/nets/wrn/wrn.py @5d09751 ('usb-0.3') and @167842a ('usb-2022'); kekmodel/FixMatch-pytorch
models/wideresnet.py @326bea3.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def randomize_(module, seed=0, keep_untrained=()):
    """Random weights everywhere, BN affine + running stats far from their defaults, except in the
    BatchNorms named in ``keep_untrained`` (kept as initialised: what training leaves in a BN whose
    output is never used)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, m in module.named_modules():
            if isinstance(m, nn.BatchNorm2d):
                if name not in keep_untrained:
                    m.weight.uniform_(0.5, 1.5, generator=g)
                    m.bias.uniform_(-0.3, 0.3, generator=g)
                m.running_mean.uniform_(-0.3, 0.3, generator=g)
                m.running_var.uniform_(0.5, 2.0, generator=g)
                m.num_batches_tracked.fill_(7)
            elif isinstance(m, (nn.Conv2d, nn.Linear)):
                fan_in = m.weight[0].numel()
                m.weight.normal_(0, math.sqrt(2.0 / fan_in), generator=g)
                if m.bias is not None:
                    m.bias.uniform_(-0.1, 0.1, generator=g)
    return module


DEAD_BN1 = ("block2.layer.0.bn1", "block3.layer.0.bn1")  # unused when activate_before_residual=False


# ----------------------------------------------------------------------------- xternalz / RobustBench / TRADES


class XzBasicBlock(nn.Module):
    """xternalz's block (as copied by TRADES and RobustBench): x overwritten when projecting."""

    def __init__(self, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=False)
        self.droprate = dropRate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False)

    def forward(self, x):
        if not self.equalInOut:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))
        out = self.relu2(self.bn2(self.conv1(out)))
        out = F.dropout(out, p=self.droprate, training=self.training)
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class XzNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride, dropRate=0.0):
        super().__init__()
        self.layer = nn.Sequential(*[XzBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                  stride if i == 0 else 1, dropRate) for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class XzWideResNet(nn.Module):
    """xternalz ``WideResNet(depth, num_classes, widen_factor, dropRate)``; RobustBench's adds
    ``sub_block1`` / ``bias_last``, TRADES' always has the (unused) ``sub_block1``."""

    def __init__(self, depth, num_classes, widen_factor=1, dropRate=0.0, sub_block1=False, bias_last=True):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = XzNetworkBlock(n, ch[0], ch[1], 1, dropRate)
        if sub_block1:
            self.sub_block1 = XzNetworkBlock(n, ch[0], ch[1], 1, dropRate)
        self.block2 = XzNetworkBlock(n, ch[1], ch[2], 2, dropRate)
        self.block3 = XzNetworkBlock(n, ch[2], ch[3], 2, dropRate)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes, bias=bias_last)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, 8)  # their 32x32 assumption
        return self.fc(out.view(-1, self.nChannels))


# ----------------------------------------------------------------------------- DeepMind (RobustBench DMWideResNet)


class _SwishFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, i):
        ctx.save_for_backward(i)
        return i * torch.sigmoid(i)

    @staticmethod
    def backward(ctx, grad):
        (i,) = ctx.saved_tensors
        s = torch.sigmoid(i)
        return grad * (s * (1 + i * (1 - s)))


class Swish(nn.Module):
    def forward(self, x):
        return _SwishFn.apply(x)


class DmBlock(nn.Module):
    """DMWideResNet _Block: manual TF-SAME padding of conv_0, projection of the activated input."""

    def __init__(self, in_planes, out_planes, stride, activation_fn):
        super().__init__()
        self.batchnorm_0 = nn.BatchNorm2d(in_planes)
        self.relu_0 = activation_fn()
        self.conv_0 = nn.Conv2d(in_planes, out_planes, 3, stride, padding=0, bias=False)
        self.batchnorm_1 = nn.BatchNorm2d(out_planes)
        self.relu_1 = activation_fn()
        self.conv_1 = nn.Conv2d(out_planes, out_planes, 3, 1, padding=1, bias=False)
        self.has_shortcut = in_planes != out_planes
        self.shortcut = nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=False) if self.has_shortcut else None
        self._stride = stride

    def forward(self, x):
        if self.has_shortcut:
            x = self.relu_0(self.batchnorm_0(x))
            v = x
        else:
            v = self.relu_0(self.batchnorm_0(x))
        v = F.pad(v, (1, 1, 1, 1) if self._stride == 1 else (0, 1, 0, 1))
        out = self.conv_1(self.relu_1(self.batchnorm_1(self.conv_0(v))))
        return (self.shortcut(x) if self.has_shortcut else x) + out


class DmBlockGroup(nn.Module):
    def __init__(self, num_blocks, in_planes, out_planes, stride, activation_fn):
        super().__init__()
        self.block = nn.Sequential(*[DmBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                                             activation_fn) for i in range(num_blocks)])

    def forward(self, x):
        return self.block(x)


CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)
CIFAR100_MEAN, CIFAR100_STD = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)


class DMWideResNet(nn.Module):
    """RobustBench's current DMWideResNet: mean/std are non-persistent buffers (not saved)."""

    def __init__(self, num_classes=10, depth=28, width=10, activation_fn=nn.ReLU, mean=CIFAR10_MEAN,
                 std=CIFAR10_STD, padding=0, num_input_channels=3, persistent_normalization=False):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(num_input_channels, 1, 1),
                             persistent=persistent_normalization)
        self.register_buffer("std", torch.tensor(std).view(num_input_channels, 1, 1),
                             persistent=persistent_normalization)
        self.padding = padding
        ch = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(num_input_channels, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(DmBlockGroup(n, ch[0], ch[1], 1, activation_fn),
                                   DmBlockGroup(n, ch[1], ch[2], 2, activation_fn),
                                   DmBlockGroup(n, ch[2], ch[3], 2, activation_fn))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(ch[3], num_classes)
        self.num_channels = ch[3]

    def forward(self, x):
        if self.padding > 0:
            x = F.pad(x, (self.padding,) * 4)
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        out = F.avg_pool2d(out, 8)  # their 32x32 assumption
        return self.logits(out.view(-1, self.num_channels))


# ----------------------------------------------------------------------------- TorchSSL / USB / kekmodel FixMatch

# What each SSL codebase's wrn.py hard-codes. honour_abr: the block reads its raw input when
# activate_before_residual=False (TorchSSL, USB 0.3, kekmodel); USB's 2022 blocks ignore the flag.
SSL_VARIANTS = {
    "torchssl": dict(stem_bias=True, block_bias=True, block_eps=1e-3, final_eps=1e-3, honour_abr=True, head="fc",
                     returns_dict=False),
    "usb-2022": dict(stem_bias=True, block_bias=True, block_eps=1e-3, final_eps=1e-3, honour_abr=False, head="fc",
                     returns_dict=True),
    "usb-0.3": dict(stem_bias=True, block_bias=False, block_eps=1e-5, final_eps=1e-3, honour_abr=True,
                    head="classifier", returns_dict=True),
    "fixmatch": dict(stem_bias=False, block_bias=False, block_eps=1e-5, final_eps=1e-5, honour_abr=True, head="fc",
                     returns_dict=False),
}


class SslBasicBlock(nn.Module):
    def __init__(self, in_planes, out_planes, stride, drop_rate, activate_before_residual, bias, eps, honour_abr):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.001, eps=eps)
        self.relu1 = nn.LeakyReLU(negative_slope=0.1)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=0.001, eps=eps)
        self.relu2 = nn.LeakyReLU(negative_slope=0.1)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=bias)
        self.drop_rate = drop_rate
        self.equalInOut = in_planes == out_planes
        self.convShortcut = None if self.equalInOut else nn.Conv2d(in_planes, out_planes, 1, stride, 0, bias=bias)
        self.activate_before_residual = activate_before_residual or not honour_abr

    def forward(self, x):
        if not self.equalInOut and self.activate_before_residual:
            x = self.relu1(self.bn1(x))
            out = x
        else:
            out = self.relu1(self.bn1(x))  # computed even when discarded: bn1's stats still move
        out = self.relu2(self.bn2(self.conv1(out if self.equalInOut else x)))
        out = F.dropout(out, p=self.drop_rate, training=self.training)
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class SslNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride, drop_rate, activate_before_residual, **kw):
        super().__init__()
        self.layer = nn.Sequential(*[SslBasicBlock(in_planes if i == 0 else out_planes, out_planes,
                                                   stride if i == 0 else 1, drop_rate, activate_before_residual, **kw)
                                     for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class SslWideResNet(nn.Module):
    """TorchSSL / USB (both layouts) / kekmodel WRN, per ``SSL_VARIANTS[variant]``."""

    def __init__(self, variant, num_classes, depth=28, widen_factor=2, drop_rate=0.0, first_stride=1, is_remix=False):
        super().__init__()
        v = SSL_VARIANTS[variant]
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        kw = dict(bias=v["block_bias"], eps=v["block_eps"], honour_abr=v["honour_abr"])
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=v["stem_bias"])
        self.block1 = SslNetworkBlock(n, ch[0], ch[1], first_stride, drop_rate, True, **kw)
        self.block2 = SslNetworkBlock(n, ch[1], ch[2], 2, drop_rate, False, **kw)
        self.block3 = SslNetworkBlock(n, ch[2], ch[3], 2, drop_rate, False, **kw)
        self.bn1 = nn.BatchNorm2d(ch[3], momentum=0.001, eps=v["final_eps"])
        self.relu = nn.LeakyReLU(negative_slope=0.1)
        self.head = v["head"]
        setattr(self, self.head, nn.Linear(ch[3], num_classes))
        self.channels = ch[3]
        self.returns_dict = v["returns_dict"]
        if is_remix:
            self.rot_classifier = nn.Linear(ch[3], 4)

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        feat = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).view(-1, self.channels)
        logits = getattr(self, self.head)(feat)
        return {"logits": logits, "feat": feat} if self.returns_dict else logits
