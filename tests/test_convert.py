"""wrn_fast.convert: checkpoints of each ecosystem format give the source model's outputs, and
checkpoints that would load into the wrong function are refused.

The sources are tests/_upstream.py's re-implementations of each codebase (their module names and
forward, not wrn_fast.reference), randomly initialised, saved, converted, loaded and compared in
eval and train mode. tests/test_compat.py compares every family in depth (float64 and float32,
gradients, both backends); here the conversion rules and refusals are checked.

Tolerance: fp32, relative L2 error ||ours - theirs|| / ||theirs|| (tests/_checks.rel_err) <= 1e-5.
"""
import math
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from wrn_fast import convert
from wrn_fast import reference as R

from _checks import rel_err
from _upstream import (CIFAR10_MEAN, CIFAR10_STD, DEAD_BN1, DMWideResNet, SslWideResNet, Swish, XzWideResNet,
                       randomize_)

REL_TOL = 1e-5

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def build_reference_models(monkeypatch):
    """load_pretrained builds the reference classes here: these tests check the conversion, and
    the fast model's agreement with the reference is tests/test_model.py's business."""
    monkeypatch.setattr(convert.load, "_model_classes", lambda: (R.WideResNet, R.WideResNetBottleneck))


def assert_rel_close(ours, theirs, what="output"):
    if isinstance(theirs, dict):
        theirs = theirs["logits"]
    err = rel_err(ours, theirs)
    assert err <= REL_TOL, f"{what}: relative error {err:.3g} > {REL_TOL}"


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


def ssl_source(variant, seed=0, **kwargs):
    """An SSL-family source with what training leaves: untrained bn1 where its output is unused."""
    torch.manual_seed(seed)
    keep = DEAD_BN1 if variant != "usb-2022" else ()
    return randomize_(SslWideResNet(variant, **{"num_classes": 6, "depth": 10, "widen_factor": 2, **kwargs}),
                      seed, keep_untrained=keep)


# ----------------------------------------------------------------------------- xternalz / TRADES / RobustBench


def test_xternalz_trades_through_a_file_with_nested_module_prefix(tmp_path):
    torch.manual_seed(0)
    source = randomize_(XzWideResNet(16, 7, widen_factor=2, sub_block1=True))
    path = tmp_path / "trades.pt"
    # DataParallel inside DDP: every key prefixed with 'module.module.'
    torch.save({f"module.module.{k}": v for k, v in source.state_dict().items()}, path)
    with pytest.warns(UserWarning, match="sub_block1"):
        ours = convert.load_pretrained(path)  # 'auto': sub_block1 only exists in TRADES
    assert isinstance(ours, R.WideResNet)
    assert (ours.depth, ours.widen_factor, ours.num_classes) == (16, 2, 7)
    compare_models(source, ours, torch.randn(4, 3, 32, 32), unused_prefix="sub_block1.")


def test_xternalz_wrapped_and_explicit_format():
    source = randomize_(XzWideResNet(10, 10, widen_factor=1))
    sd, kwargs = convert.convert_state_dict({"state_dict": source.state_dict(), "epoch": 3}, format="robustbench")
    assert kwargs == dict(depth=10, widen_factor=1, num_classes=10, in_channels=3, conv_bias=False, block=(3, 3))
    ours = R.WideResNet(**kwargs)
    ours.load_state_dict(sd, strict=True)
    compare_models(source, ours, torch.randn(3, 3, 32, 32))


def test_robustbench_bias_last_false_builds_a_head_without_bias():
    source = randomize_(XzWideResNet(10, 4, widen_factor=1, bias_last=False))
    ours = convert.load_pretrained(source.state_dict(), format="robustbench")
    assert ours.fc.bias is None and ours.fc_bias is False
    compare_models(source, ours, torch.randn(2, 3, 32, 32))


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


def test_dm_needs_its_activation_and_normalisation_said():
    source = randomize_(DMWideResNet(num_classes=10, depth=16, width=2, activation_fn=Swish))
    sd = source.state_dict()
    assert "mean" not in sd  # non-persistent in RobustBench: never in a checkpoint
    with pytest.raises(ValueError, match=r"activation: .*does not record its activation.*'silu'.*'relu'"):
        convert.load_pretrained(sd)
    with pytest.raises(ValueError, match=r"dataset: .*does not store its input normalisation.*'cifar10'"):
        convert.load_pretrained(sd, activation="silu")
    with pytest.warns(UserWarning, match=r"RobustBench's cifar10 defaults mean=\(0.4914, 0.4822, 0.4465\) "
                                         r"std=\(0.2471, 0.2435, 0.2616\)"):
        ours = convert.load_pretrained(sd, activation="silu", dataset="cifar10")
    assert ours.activation == "silu" and ours.padding == "tf_same"
    assert ours.block2.layer[0].conv_paddings[0] == (0, 1, 0, 1)
    torch.testing.assert_close(ours.input_mean.flatten(), source.mean.flatten())
    torch.testing.assert_close(ours.input_std.flatten(), source.std.flatten())
    compare_models(source, ours, torch.rand(4, 3, 32, 32))
    with pytest.raises(ValueError, match="dataset: expected one of"):
        convert.load_pretrained(sd, activation="silu", dataset="imagenet")


def test_dm_relu_with_explicit_normalisation():
    source = randomize_(DMWideResNet(depth=10, width=1, activation_fn=nn.ReLU, mean=(0.5, 0.5, 0.5), std=(0.2, 0.3, 0.4)))
    ours = convert.load_pretrained(source.state_dict(), format="dm", activation="relu",
                                   input_mean=[0.5, 0.5, 0.5], input_std=[0.2, 0.3, 0.4])
    compare_models(source, ours, torch.rand(2, 3, 32, 32))
    # Swish instead: the comparison would catch it.
    swish = convert.load_pretrained(source.state_dict(), format="dm", activation="silu",
                                    input_mean=[0.5, 0.5, 0.5], input_std=[0.2, 0.3, 0.4]).eval()
    with torch.no_grad():
        x = torch.rand(2, 3, 32, 32)
        assert not torch.allclose(swish(x), source.eval()(x), rtol=1e-3)
    with pytest.raises(ValueError, match="input_mean / input_std: pass both"):
        convert.load_pretrained(source.state_dict(), format="dm", activation="relu", input_mean=[0.5] * 3)


def test_dm_older_checkpoint_with_stored_normalisation():
    source = randomize_(DMWideResNet(depth=10, width=1, activation_fn=Swish, mean=(0.3, 0.4, 0.5),
                                     std=(0.2, 0.3, 0.4), persistent_normalization=True))
    ours = convert.load_pretrained(source.state_dict(), activation="silu")  # no dataset needed
    torch.testing.assert_close(ours.input_std.flatten(), torch.tensor([0.2, 0.3, 0.4]))
    compare_models(source, ours, torch.rand(2, 3, 32, 32))


# ----------------------------------------------------------------------------- TorchSSL / USB / kekmodel FixMatch


SSL_CASES = {  # variant -> (format, conv_bias, stem_bias, raw input in group 2, head BN eps, blocks' BN eps)
    "torchssl": ("torchssl", True, True, True, 1e-3, 1e-3),
    "usb-2022": ("usb", True, True, False, 1e-3, 1e-3),
    "usb-0.3": ("usb", False, True, True, 1e-3, 1e-5),
    "fixmatch": ("fixmatch", False, False, True, 1e-5, 1e-5),
}


@pytest.mark.parametrize("variant", sorted(SSL_CASES))
@pytest.mark.parametrize("fmt", ["explicit", "auto"])
def test_ssl_formats(variant, fmt):
    source = ssl_source(variant)
    name, conv_bias, stem_bias, raw, final_eps, block_eps = SSL_CASES[variant]
    checkpoint = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}, "it": 1000}
    ours = convert.load_pretrained(checkpoint, format=name if fmt == "explicit" else "auto")
    assert ours.activation == "leaky_relu" and ours.negative_slope == 0.1 and ours.bn_momentum == 0.001
    assert ours.conv_bias == conv_bias and ours.stem_bias == stem_bias
    assert ours.block2.layer[0].raw_input == raw
    assert ours.bn1.eps == final_eps and ours.block1.layer[0].bn1.eps == block_eps
    compare_models(source, ours, torch.randn(4, 3, 16, 16))


def test_torchssl_stl10_first_stride():
    source = ssl_source("torchssl", first_stride=2)
    ours = convert.load_pretrained(source.state_dict(), format="torchssl", first_stride=2)
    assert ours.block1.layer[0].stride == 2
    compare_models(source, ours, torch.randn(2, 3, 32, 32))


def test_remixmatch_rotation_head_and_semilearn_backbone_wrapper():
    source = ssl_source("usb-0.3")
    wrapped = {f"backbone.{k}": v for k, v in source.state_dict().items()}
    wrapped.update({"rot_classifier.weight": torch.zeros(4, 128), "rot_classifier.bias": torch.zeros(4)})
    with pytest.warns(UserWarning, match=r"backbone.*rot_classifier"):
        ours = convert.load_pretrained({"model": wrapped})
    compare_models(source, ours, torch.randn(2, 3, 16, 16))


def trained_like_upstream(source, steps=2, size=16):
    """A few SGD steps as the SSL repos take them (no weight decay on BN): what a real checkpoint
    holds. Returns the source, whose unused bn1 affine parameters never moved."""
    opt = torch.optim.SGD(source.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(3)
    source.train()
    for _ in range(steps):
        out = source(torch.randn(4, 3, size, size, generator=g))
        logits = out["logits"] if isinstance(out, dict) else out
        F.cross_entropy(logits, torch.randint(0, logits.shape[1], (4,), generator=g)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return source


@pytest.mark.parametrize("variant,expected", [("fixmatch", "fixmatch"), ("torchssl", "torchssl"),
                                              ("usb-2022", "usb"), ("usb-0.3", "usb")])
def test_auto_tells_the_families_apart_after_real_training_steps(variant, expected):
    torch.manual_seed(0)
    source = trained_like_upstream(SslWideResNet(variant, num_classes=4, depth=10, widen_factor=2))
    assert convert.detect_format(source.state_dict()) == expected
    ours = convert.load_pretrained(source.state_dict())
    compare_models(source, ours, torch.randn(2, 3, 16, 16))


def test_auto_tells_kekmodel_from_xternalz():
    torch.manual_seed(0)
    kekmodel = trained_like_upstream(SslWideResNet("fixmatch", num_classes=4, depth=10, widen_factor=2))
    xternalz = trained_like_upstream(XzWideResNet(10, 4, widen_factor=2), size=32)  # their 8x8 pooling
    assert convert.detect_format(kekmodel.state_dict()) == "fixmatch"
    assert convert.detect_format(xternalz.state_dict()) == "xternalz"


def test_auto_asks_when_the_keys_cannot_tell():
    for untrained, names in ((XzWideResNet(10, 4, widen_factor=2), "xternalz.*kekmodel"),
                             (SslWideResNet("torchssl", num_classes=4, depth=10), "TorchSSL.*USB 2022")):
        with pytest.raises(ValueError, match=rf"format='auto': .*fit {names}.*Pass the format explicitly"):
            convert.load_pretrained(untrained.state_dict())


@pytest.mark.parametrize("source_family,wrong_format,reason", [
    ("xternalz", "torchssl", r"format='torchssl': expected stem conv with bias.*xternalz"),
    ("xternalz", "usb", r"format='usb': expected .*without bias.*"),
    ("xternalz", "fixmatch", r"format='fixmatch': bn1 of block2.layer.0 / block3.layer.0 was trained"),
    ("torchssl", "xternalz", r"format='xternalz': expected stem conv without bias.*TorchSSL"),
    ("torchssl", "usb", r"format='usb': bn1 .* was never trained.*TorchSSL"),
    ("usb-2022", "torchssl", r"format='torchssl': bn1 .* was trained.*USB 2022"),
    ("fixmatch", "xternalz", r"format='xternalz': bn1 .* was never trained.*kekmodel"),
    ("usb-0.3", "torchssl", r"format='torchssl': .*head 'classifier'.*USB / semilearn 0.3"),
])
def test_checkpoints_contradicting_the_given_format_are_refused(source_family, wrong_format, reason):
    if source_family == "xternalz":
        source = randomize_(XzWideResNet(10, 4, widen_factor=2))  # every BN trained
    else:
        source = ssl_source(source_family)
    with pytest.raises(ValueError, match=reason):
        convert.load_pretrained(source.state_dict(), format=wrong_format)


def test_ssl_format_matters():
    # The same TorchSSL weights run as USB-2022 give other outputs: the formats are not interchangeable.
    source = ssl_source("torchssl").eval()
    sd = {k: v for k, v in source.state_dict().items()}
    for bn in DEAD_BN1:  # disguise: the bn1 evidence alone would refuse format='usb'
        sd[bn + ".bias"] = sd[bn + ".bias"] + 0.01
    as_usb = convert.load_pretrained(sd, format="usb").eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(as_usb(x), source(x), rtol=1e-3)


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
    source = randomize_(R.WideResNet(10, 3, num_classes=4, in_channels=1, block="B(3,1,3)", conv_bias=True,
                                     stem_bias=False, fc_bias=False))
    sd, kwargs = convert.convert_state_dict(source.state_dict(), format="native", activation="silu")
    assert kwargs == dict(depth=10, widen_factor=3, num_classes=4, in_channels=1, conv_bias=True,
                          block=(3, 1, 3), stem_bias=False, fc_bias=False, activation="silu")
    ours = R.WideResNet(**{**kwargs, "activation": "relu"})
    ours.load_state_dict(sd, strict=True)
    compare_models(source, ours, torch.randn(3, 1, 12, 12))


@pytest.mark.parametrize("variant", ["torchssl", "usb-0.3", "usb-2022", "fixmatch"])
def test_native_warns_when_the_state_dict_is_an_upstream_ssl_family(variant):
    # Regression: format='native' loaded these silently into a ReLU / eps 1e-5 model (eval errors 0.4-1.0
    # against the real TorchSSL, USB and kekmodel code).
    source = ssl_source(variant)
    with pytest.warns(UserWarning, match=r"format='native' builds ReLU.*looks like"):
        convert.load_pretrained(source.state_dict(), format="native")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # options said: no warning
        convert.convert_state_dict(source.state_dict(), format="native", activation="leaky_relu")


def test_native_does_not_warn_on_its_own_default_layout():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for model in (R.WideResNet(10, 1), randomize_(R.WideResNet(10, 1))):  # untrained, trained
            convert.convert_state_dict(model.state_dict(), format="native")


def test_detect_format():
    assert convert.detect_format(DMWideResNet(depth=10, width=1).state_dict()) == "dm"
    assert convert.detect_format(authors_params(10, 1, 10)) == "authors"
    assert convert.detect_format(randomize_(R.WideResNet(10, 1)).state_dict()) == "xternalz"
    with pytest.raises(ValueError, match="match none of the WRN families.*format='native'"):
        convert.detect_format(R.WideResNet(10, 1, conv_bias=True, stem_bias=False).state_dict())


def test_unknown_format_name():
    with pytest.raises(ValueError, match=r"format: expected one of .*got 'caffe'"):
        convert.convert_state_dict(R.WideResNet(10, 1).state_dict(), format="caffe")


def test_dataset_only_for_dm():
    with pytest.raises(ValueError, match="dataset: only DM"):
        convert.convert_state_dict(R.WideResNet(10, 1).state_dict(), format="xternalz", dataset="cifar10")


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
    sd = randomize_(R.WideResNet(10, 2)).state_dict()
    with pytest.raises(RuntimeError, match="size mismatch"):
        convert.load_pretrained(sd, model=R.WideResNet(10, 4))
    with pytest.raises(ValueError, match="model_kwargs"):
        convert.load_pretrained(sd, model=R.WideResNet(10, 2), num_classes=3)


def test_given_model_with_other_options_warns():
    source = DMWideResNet(depth=10, width=1, persistent_normalization=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        convert.load_pretrained(source.state_dict(), model=R.WideResNet(10, 1))
    messages = " ".join(str(w.message) for w in caught)
    assert "padding" in messages and "normalises its input" in messages


def test_given_model_unlike_the_xternalz_family_warns():
    # Regression: the xternalz family sets no option explicitly, so a given LeakyReLU / momentum 0.001 /
    # raw-input model (kekmodel's) took an xternalz checkpoint without a word (eval error 1.8).
    source = randomize_(XzWideResNet(10, 4, widen_factor=2))
    kekmodel_like = R.WideResNet(10, 2, num_classes=4, activation="leaky_relu", bn_momentum=0.001,
                                 activate_before_residual=(True, False, False))
    with pytest.warns(UserWarning, match="implies activation='relu', the given model has 'leaky_relu'"):
        convert.load_pretrained(source.state_dict(), model=kekmodel_like)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the matching model: silent
        ours = convert.load_pretrained(source.state_dict(), model=R.WideResNet(10, 2, num_classes=4))
        torchssl_like = R.WideResNet(10, 2, num_classes=6, conv_bias=True, **convert._FAMILY_OPTIONS["torchssl"])
        convert.load_pretrained(ssl_source("torchssl").state_dict(), model=torchssl_like)
    compare_models(source, ours, torch.randn(2, 3, 32, 32))


def test_given_model_supplies_what_a_dm_checkpoint_lacks():
    source = randomize_(DMWideResNet(depth=10, width=1, activation_fn=Swish))
    model = R.WideResNet(10, 1, activation="silu", padding="tf_same", input_mean=CIFAR10_MEAN, input_std=CIFAR10_STD)
    convert.load_pretrained(source.state_dict(), model=model)
    compare_models(source, model, torch.rand(2, 3, 32, 32))


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
    source = randomize_(R.WideResNet(10, 1, conv_bias=True))
    ours = convert.load_pretrained(source.state_dict(), format="native")
    assert isinstance(ours, wrn_fast.WideResNet) and isinstance(ours, R.WideResNet)
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in ours.state_dict().items())


def test_load_pretrained_rejects_corrupt_and_non_finite_files(tmp_path):
    """Issue 17 item 5: load_pretrained verifies wrn_fast checkpoints' checksum and rejects
    non-finite tensors in foreign files, naming the file (it used to load both silently)."""
    from wrn_fast.checkpoint import save_checkpoint

    model = R.WideResNet(10, 1, num_classes=10)
    sd = model.state_dict()
    ours = tmp_path / "ours.pt"
    save_checkpoint(str(ours), {"state_dict": sd})
    loaded = convert.load_pretrained(str(ours), format="xternalz")  # intact: loads
    assert torch.equal(loaded.state_dict()["fc.weight"], sd["fc.weight"])

    # flip the bytes of one weight tensor inside the (uncompressed) torch.save archive
    raw = bytearray(ours.read_bytes())
    needle = sd["block1.layer.0.conv1.weight"].contiguous().numpy().tobytes()
    at = bytes(raw).find(needle)
    assert at > 0
    raw[at:at + 64] = bytes(b ^ 0x5A for b in raw[at:at + 64])
    ours.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match=r"ours\.pt: checksum mismatch"):
        convert.load_pretrained(str(ours), format="xternalz")

    foreign = tmp_path / "foreign.pt"
    bad = dict(sd)
    bad["fc.weight"] = bad["fc.weight"].clone()
    bad["fc.weight"][0, 0] = float("nan")
    torch.save(bad, foreign)
    with pytest.raises(ValueError, match=r"foreign\.pt: tensor fc\.weight holds non-finite"):
        convert.load_pretrained(str(foreign), format="xternalz")
