"""wrn_fast.convert: checkpoints of each ecosystem format give the source model's outputs.

For every format the SOURCE architecture is re-implemented here, compactly and with that
codebase's own module names and forward (not reusing wrn_fast.reference), randomly initialised
(BN affine and running statistics included, so BN conversion is really checked), saved, converted,
loaded, and compared in eval mode and, where deterministic (dropout 0), in train mode.

Tolerance: fp32, relative error max|ours - theirs| / max|theirs| <= 1e-5.
"""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn_fast import convert
from wrn_fast import reference as R

REL_TOL = 1e-5


@pytest.fixture(autouse=True)
def build_reference_models(monkeypatch):
    """load_pretrained builds the reference classes here: these tests check the conversion, and
    the fast model's agreement with the reference is tests/test_model.py's business."""
    monkeypatch.setattr(convert, "_model_classes", lambda: (R.WideResNet, R.WideResNetBottleneck))


def assert_rel_close(ours, theirs, what="output"):
    err = (ours - theirs).abs().max().item() / theirs.abs().max().item()
    assert err <= REL_TOL, f"{what}: relative error {err:.3g} > {REL_TOL}"


def randomize_(module, seed=0):
    """Random weights everywhere, and BN affine + running stats far from their defaults."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
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


def compare_models(source, ours, x, train=True, unused_prefix=None):
    """Eval outputs, then (train=True) one train-mode step: outputs and BN running stats.

    unused_prefix: a source submodule its forward never runs (TRADES' sub_block1)."""
    source.eval()
    ours.eval()
    with torch.no_grad():
        assert_rel_close(ours(x), source(x), "eval output")
    if train:
        source.train()
        ours.train()
        with torch.no_grad():
            assert_rel_close(ours(x), source(x), "train output")
        theirs_stats = [b for n, b in source.named_buffers()
                        if "running" in n and not (unused_prefix and n.startswith(unused_prefix))]
        ours_stats = [b for n, b in ours.named_buffers() if "running" in n]
        assert len(theirs_stats) == len(ours_stats)
        # Both models hold the BN layers in the same forward order, so the stats line up.
        for a, b in zip(ours_stats, theirs_stats):
            assert_rel_close(a, b, "running stats")


# ----------------------------------------------------------------------------- xternalz / TRADES


class XzBasicBlock(nn.Module):
    """xternalz/WideResNet-pytorch BasicBlock (as in TRADES / RobustBench): x overwritten when projecting."""

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
    def __init__(self, nb_layers, in_planes, out_planes, stride):
        super().__init__()
        self.layer = nn.Sequential(*[XzBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
                                     for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class TradesWideResNet(nn.Module):
    """TRADES' WideResNet: xternalz's plus an unused sub_block1."""

    def __init__(self, depth=10, num_classes=10, widen_factor=2):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.block1 = XzNetworkBlock(n, ch[0], ch[1], 1)
        self.sub_block1 = XzNetworkBlock(n, ch[0], ch[1], 1)
        self.block2 = XzNetworkBlock(n, ch[1], ch[2], 2)
        self.block3 = XzNetworkBlock(n, ch[2], ch[3], 2)
        self.bn1 = nn.BatchNorm2d(ch[3])
        self.relu = nn.ReLU(inplace=True)
        self.fc = nn.Linear(ch[3], num_classes)
        self.nChannels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = self.relu(self.bn1(out))
        out = F.avg_pool2d(out, out.shape[-1])
        return self.fc(out.view(-1, self.nChannels))


def test_xternalz_trades_through_a_file_with_module_prefix(tmp_path):
    torch.manual_seed(0)
    source = randomize_(TradesWideResNet(depth=16, num_classes=7, widen_factor=2))
    path = tmp_path / "trades.pt"
    # DataParallel-saved: every key prefixed with 'module.'
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    with pytest.warns(UserWarning, match="sub_block1"):
        ours = convert.load_pretrained(path)
    assert isinstance(ours, R.WideResNet)
    assert (ours.depth, ours.widen_factor, ours.num_classes) == (16, 2, 7)
    compare_models(source, ours, torch.randn(4, 3, 16, 16), unused_prefix="sub_block1.")


def test_xternalz_wrapped_and_explicit_format():
    source = randomize_(TradesWideResNet(depth=10, widen_factor=1))
    del source.sub_block1  # the xternalz original has none
    sd, kwargs = convert.convert_state_dict({"state_dict": source.state_dict(), "epoch": 3}, format="robustbench")
    assert kwargs == dict(depth=10, widen_factor=1, num_classes=10, in_channels=3, conv_bias=False, block=(3, 3))
    ours = R.WideResNet(**kwargs)
    ours.load_state_dict(sd, strict=True)
    compare_models(source, ours, torch.randn(3, 3, 8, 8))


# ----------------------------------------------------------------------------- authors (szagoruyko, functional)


def authors_params(depth, width, num_classes, seed=0):
    """szagoruyko/wide-residual-networks' flat params dict (conv weights keyed without '.weight')."""
    g = torch.Generator().manual_seed(seed)
    n = (depth - 4) // 6
    widths = [16 * width, 32 * width, 64 * width]

    def conv(ni, no, k):
        return torch.randn(no, ni, k, k, generator=g) * math.sqrt(2.0 / (ni * k * k))

    def bn(prefix, c, p):
        p[prefix + ".weight"] = torch.rand(c, generator=g) + 0.5
        p[prefix + ".bias"] = torch.rand(c, generator=g) - 0.5
        p[prefix + ".running_mean"] = torch.rand(c, generator=g) * 0.6 - 0.3
        p[prefix + ".running_var"] = torch.rand(c, generator=g) + 0.5

    p = {"conv0": conv(3, 16, 3)}
    ni = 16
    for gi, no in enumerate(widths):
        for i in range(n):
            base = f"group{gi}.block{i}"
            bin_ = ni if i == 0 else no
            p[base + ".conv0"] = conv(bin_, no, 3)
            p[base + ".conv1"] = conv(no, no, 3)
            bn(base + ".bn0", bin_, p)
            bn(base + ".bn1", no, p)
            if bin_ != no:
                p[base + ".convdim"] = conv(bin_, no, 1)
        ni = no
    bn("bn", widths[2], p)
    p["fc.weight"] = torch.randn(num_classes, widths[2], generator=g) * 0.1
    p["fc.bias"] = torch.randn(num_classes, generator=g) * 0.1
    return p


def authors_forward(x, params, mode, depth):
    """Their functional forward: convdim projects the pre-activated o1."""
    n = (depth - 4) // 6

    def batch_norm(t, base):
        return F.batch_norm(t, params[base + ".running_mean"], params[base + ".running_var"],
                            params[base + ".weight"], params[base + ".bias"], mode)

    def block(t, base, stride):
        o1 = F.relu(batch_norm(t, base + ".bn0"))
        y = F.conv2d(o1, params[base + ".conv0"], stride=stride, padding=1)
        o2 = F.relu(batch_norm(y, base + ".bn1"))
        z = F.conv2d(o2, params[base + ".conv1"], stride=1, padding=1)
        if base + ".convdim" in params:
            return z + F.conv2d(o1, params[base + ".convdim"], stride=stride)
        return z + t

    out = F.conv2d(x, params["conv0"], padding=1)
    for gi, stride in enumerate((1, 2, 2)):
        for i in range(n):
            out = block(out, f"group{gi}.block{i}", stride if i == 0 else 1)
    out = F.relu(batch_norm(out, "bn"))
    out = F.avg_pool2d(out, out.shape[-1]).flatten(1)
    return F.linear(out, params["fc.weight"], params["fc.bias"])


def test_authors_format(tmp_path):
    depth, width = 16, 3
    params = authors_params(depth, width, num_classes=5)
    path = tmp_path / "model.pt7"
    torch.save({"params": params, "epoch": 200}, path)  # what their main.py writes
    ours = convert.load_pretrained(path)  # auto-detected
    assert (ours.depth, ours.widen_factor, ours.num_classes) == (16, 3, 5)
    x = torch.randn(4, 3, 16, 16)
    ours.eval()
    with torch.no_grad():
        assert_rel_close(ours(x), authors_forward(x, params, False, depth), "eval output")
        ours.train()
        stats = {k: v.clone() for k, v in params.items()}
        assert_rel_close(ours(x), authors_forward(x, stats, True, depth), "train output")
        assert_rel_close(ours.block2.layer[0].bn1.running_var, stats["group1.block0.bn0.running_var"], "running var")
        assert_rel_close(ours.bn1.running_mean, stats["bn.running_mean"], "running mean")


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


class DMWideResNet(nn.Module):
    def __init__(self, num_classes=10, depth=10, width=2, activation_fn=Swish,
                 mean=(0.4914, 0.4822, 0.4465), std=(0.2471, 0.2435, 0.2616)):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(3, 1, 1))
        ch = [16, 16 * width, 32 * width, 64 * width]
        n = (depth - 4) // 6
        self.init_conv = nn.Conv2d(3, ch[0], 3, 1, 1, bias=False)
        self.layer = nn.Sequential(DmBlockGroup(n, ch[0], ch[1], 1, activation_fn),
                                   DmBlockGroup(n, ch[1], ch[2], 2, activation_fn),
                                   DmBlockGroup(n, ch[2], ch[3], 2, activation_fn))
        self.batchnorm = nn.BatchNorm2d(ch[3])
        self.relu = activation_fn()
        self.logits = nn.Linear(ch[3], num_classes)
        self.num_channels = ch[3]

    def forward(self, x):
        out = self.init_conv((x - self.mean) / self.std)
        out = self.relu(self.batchnorm(self.layer(out)))
        out = F.avg_pool2d(out, 8)  # their 32x32 assumption
        return self.logits(out.view(-1, self.num_channels))


def test_dm_swish_with_in_model_normalisation_and_tf_same_padding():
    torch.manual_seed(0)
    source = randomize_(DMWideResNet(num_classes=10, depth=16, width=2))
    ours = convert.load_pretrained(source.state_dict())
    assert ours.activation == "silu" and ours.padding == "tf_same"
    assert ours.block2.layer[0].conv_paddings[0] == (0, 1, 0, 1)
    torch.testing.assert_close(ours.input_mean.flatten(), source.mean.flatten())
    compare_models(source, ours, torch.rand(4, 3, 32, 32))


def test_dm_relu_checkpoint_with_activation_override():
    source = randomize_(DMWideResNet(depth=10, width=1, activation_fn=nn.ReLU, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4)))
    ours = convert.load_pretrained(source.state_dict(), format="dm", activation="relu")
    compare_models(source, ours, torch.rand(2, 3, 32, 32))
    # Without the override the activation differs: the comparison would catch it.
    swish = convert.load_pretrained(source.state_dict(), format="dm").eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert not torch.allclose(swish(x), source.eval()(x), rtol=1e-3)


# ----------------------------------------------------------------------------- TorchSSL / USB / kekmodel FixMatch


class SslBasicBlock(nn.Module):
    """TorchSSL / kekmodel BasicBlock (honour_abr=True) or USB's (which ignores activate_before_residual)."""

    def __init__(self, in_planes, out_planes, stride, activate_before_residual, bias, eps, honour_abr):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes, momentum=0.001, eps=eps)
        self.relu1 = nn.LeakyReLU(negative_slope=0.1)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride, 1, bias=bias)
        self.bn2 = nn.BatchNorm2d(out_planes, momentum=0.001, eps=eps)
        self.relu2 = nn.LeakyReLU(negative_slope=0.1)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, 1, 1, bias=bias)
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
        out = self.conv2(out)
        return (x if self.equalInOut else self.convShortcut(x)) + out


class SslNetworkBlock(nn.Module):
    def __init__(self, nb_layers, in_planes, out_planes, stride, activate_before_residual, **kw):
        super().__init__()
        self.layer = nn.Sequential(*[SslBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1,
                                                   activate_before_residual, **kw) for i in range(nb_layers)])

    def forward(self, x):
        return self.layer(x)


class SslWideResNet(nn.Module):
    def __init__(self, num_classes, depth=10, widen_factor=2, bias=True, eps=1e-3, honour_abr=True, head="fc"):
        super().__init__()
        ch = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        n = (depth - 4) // 6
        kw = dict(bias=bias, eps=eps, honour_abr=honour_abr)
        self.conv1 = nn.Conv2d(3, ch[0], 3, 1, 1, bias=bias)
        self.block1 = SslNetworkBlock(n, ch[0], ch[1], 1, True, **kw)
        self.block2 = SslNetworkBlock(n, ch[1], ch[2], 2, False, **kw)
        self.block3 = SslNetworkBlock(n, ch[2], ch[3], 2, False, **kw)
        self.bn1 = nn.BatchNorm2d(ch[3], momentum=0.001, eps=eps)
        self.relu = nn.LeakyReLU(negative_slope=0.1)
        self.head = head
        setattr(self, head, nn.Linear(ch[3], num_classes))
        self.channels = ch[3]

    def forward(self, x):
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.adaptive_avg_pool2d(self.relu(self.bn1(out)), 1).view(-1, self.channels)
        return getattr(self, self.head)(out)


SSL_VARIANTS = {
    "torchssl": dict(bias=True, eps=1e-3, honour_abr=True),
    "usb": dict(bias=True, eps=1e-3, honour_abr=False),
    "fixmatch": dict(bias=False, eps=1e-5, honour_abr=True),
}


@pytest.mark.parametrize("fmt", sorted(SSL_VARIANTS))
def test_ssl_formats(fmt):
    torch.manual_seed(0)
    source = randomize_(SslWideResNet(num_classes=6, depth=16, widen_factor=2, **SSL_VARIANTS[fmt]))
    ours = convert.load_pretrained({"model": source.state_dict(), "it": 1000}, format=fmt)
    assert ours.activation == "leaky_relu" and ours.bn_momentum == 0.001
    assert ours.conv_bias == SSL_VARIANTS[fmt]["bias"]
    assert ours.block2.layer[0].raw_input == SSL_VARIANTS[fmt]["honour_abr"]
    compare_models(source, ours, torch.randn(4, 3, 16, 16))


def test_ssl_format_matters():
    # The same TorchSSL weights read as USB give other outputs: the formats are not interchangeable.
    source = randomize_(SslWideResNet(num_classes=6, **SSL_VARIANTS["torchssl"])).eval()
    as_usb = convert.load_pretrained(source.state_dict(), format="usb").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(as_usb(x), source(x), rtol=1e-3)


def test_torchssl_auto_detection_and_classifier_head():
    source = randomize_(SslWideResNet(num_classes=4, head="classifier", **SSL_VARIANTS["torchssl"]))
    with pytest.warns(UserWarning, match="usb"):
        ours = convert.load_pretrained({f"module.{k}": v for k, v in source.state_dict().items()})
    compare_models(source, ours, torch.randn(4, 3, 8, 8))


# ----------------------------------------------------------------------------- torchvision


def test_torchvision_wide_resnet50_2():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    source = randomize_(torchvision.models.wide_resnet50_2(num_classes=12))
    ours = convert.load_pretrained(source.state_dict())
    assert isinstance(ours, R.WideResNetBottleneck)
    assert ours.layers == (3, 4, 6, 3) and ours.width_per_group == 128
    compare_models(source, ours, torch.randn(2, 3, 64, 64))


def test_torchvision_small_variant_infers_layers():
    pytest.importorskip("torchvision")
    from torchvision.models.resnet import Bottleneck, ResNet

    source = randomize_(ResNet(Bottleneck, [1, 2, 1, 1], num_classes=3, width_per_group=32))
    sd, kwargs = convert.convert_state_dict(source.state_dict())
    assert kwargs == dict(layers=(1, 2, 1, 1), width_per_group=32, num_classes=3, in_channels=3)
    ours = R.WideResNetBottleneck(**kwargs)
    ours.load_state_dict(sd, strict=True)
    compare_models(source, ours, torch.randn(2, 3, 32, 32))


# ----------------------------------------------------------------------------- detection and errors


def test_native_state_dict_round_trip_infers_the_configuration():
    source = randomize_(R.WideResNet(13, 3, num_classes=4, in_channels=1, block="B(3,1,3)", conv_bias=True))
    sd, kwargs = convert.convert_state_dict(source.state_dict(), format="xternalz", activation="silu")
    assert kwargs == dict(depth=13, widen_factor=3, num_classes=4, in_channels=1, conv_bias=True,
                          block=(3, 1, 3), activation="silu")
    ours = R.WideResNet(**{**kwargs, "activation": "relu"})
    ours.load_state_dict(sd, strict=True)
    compare_models(source, ours, torch.randn(3, 1, 12, 12))


def test_detect_format():
    assert convert.detect_format(DMWideResNet(depth=10, width=1).state_dict()) == "dm"
    assert convert.detect_format(authors_params(10, 1, 10)) == "authors"
    assert convert.detect_format(R.WideResNet(10, 1).state_dict()) == "xternalz"
    assert convert.detect_format(R.WideResNet(10, 1, conv_bias=True).state_dict()) == "torchssl"


def test_unknown_format_name():
    with pytest.raises(ValueError, match=r"format: expected one of .*got 'caffe'"):
        convert.convert_state_dict(R.WideResNet(10, 1).state_dict(), format="caffe")


def test_unknown_layout_lists_keys():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        resnet18 = torchvision.models.resnet18().state_dict()  # basic blocks: not a WRN layout
    with pytest.raises(ValueError, match=r"unknown layout.*bn1\.bias"):
        convert.convert_state_dict(resnet18)


def test_unexpected_keys_in_a_known_format():
    params = authors_params(10, 1, 10)
    params["group0.block0.se.weight"] = torch.zeros(1)
    with pytest.raises(ValueError, match=r"not in the 'authors' format.*group0\.block0\.se\.weight"):
        convert.convert_state_dict(params, format="authors")


def test_wrong_architecture_for_a_given_model():
    sd = R.WideResNet(10, 2).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert.load_pretrained(sd, model=R.WideResNet(10, 4))
    with pytest.raises(ValueError, match="model_kwargs"):
        convert.load_pretrained(sd, model=R.WideResNet(10, 2), num_classes=3)


def test_given_model_with_other_options_warns():
    source = DMWideResNet(depth=10, width=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert.load_pretrained(source.state_dict(), model=R.WideResNet(10, 1))
    messages = " ".join(str(w.message) for w in caught)
    assert "activation" in messages and "padding" in messages and "input_mean" in messages


def test_non_integer_width_is_rejected():
    params = authors_params(10, 1, 10)
    params = {k: v for k, v in params.items()}
    params["group0.block0.conv0"] = torch.zeros(24, 16, 3, 3)  # width 1.5 in their float-width option
    with pytest.raises(ValueError, match="16 \\* k"):
        convert.convert_state_dict(params)


def test_empty_checkpoint():
    with pytest.raises(ValueError, match="no tensors"):
        convert.convert_state_dict({"epoch": 3})


def test_load_pretrained_builds_the_fast_model_by_default(monkeypatch):
    import wrn_fast

    monkeypatch.undo()  # the real class choice, not the fixture's
    source = R.WideResNet(10, 1, conv_bias=True)
    ours = convert.load_pretrained(source.state_dict(), format="usb")
    assert isinstance(ours, wrn_fast.WideResNet) and isinstance(ours, R.WideResNet)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in ours.state_dict().items())
