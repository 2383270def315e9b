"""wrn_fast.compat and wrn_fast.load_pretrained against the upstream architectures.

For every family the SOURCE model (tests/_upstream.py: written from the upstream code's behaviour,
not from wrn_fast.reference) is built, given random weights (BN affine and running statistics
included; BNs that training never touches in that family are left as initialised, as a trained
checkpoint has them), saved as its repository saves it, and brought in through the public paths:

* 'compat':  the drop-in class with the upstream constructor, loading the upstream state_dict;
* 'convert': ``wrn_fast.load_pretrained(file, format=...)``.

Compared, on the default backend (the fused CPU ops when the extension is built) and on the
reference backend, in float64 and float32: eval logits; one train-mode step's logits, the gradient
of every parameter and of the input, and every BN buffer after it.

Tolerance (relative L2 error, tests/_checks.rel_err): float64 1e-12 (the same math in another
order; measured worst 4.4e-15 over all families, both backends); float32 1e-4 (float32 rounding
of ~6e-8 per operation grows through ~30 convolution/BN layers and the BN backward's cancellations;
measured worst 1.6e-6 to 2.9e-6 over runs, DM Swish BN gradients).
"""
import copy
import functools
import inspect
import warnings

import pytest
import torch
import torch.nn as nn

import wrn_fast
from wrn_fast import convert
from wrn_fast.compat import fixmatch, robustbench, torchssl, trades, usb, xternalz

from _checks import rel_err
from _upstream import (CIFAR100_MEAN, CIFAR100_STD, DEAD_BN1, DMWideResNet, SslWideResNet, Swish, XzWideResNet,
                       randomize_)

TOLERANCE = {torch.float64: 1e-12, torch.float32: 1e-4}

pytestmark = pytest.mark.usefixtures("one_thread")


def module_prefixed(state_dict, times=1):
    """What nn.DataParallel / DDP (nested: ``times``) saves."""
    return {"module." * times + k: v for k, v in state_dict.items()}


# Each family: the source, the drop-in built with the upstream constructor, how the repo saves, the
# load_pretrained arguments (None: that path does not exist), the input size.
FAMILIES = {
    "xternalz": dict(
        source=lambda: XzWideResNet(10, 5, widen_factor=1),
        compat=lambda: xternalz.WideResNet(10, 5, widen_factor=1),
        save=lambda sd: {"epoch": 3, "state_dict": module_prefixed(sd), "best_prec1": 0.5},  # their train.py
        convert=dict(format="xternalz"), size=32),
    "robustbench": dict(
        source=lambda: XzWideResNet(10, 5, widen_factor=1, sub_block1=True, bias_last=False),
        compat=lambda: robustbench.WideResNet(depth=10, num_classes=5, widen_factor=1, sub_block1=True,
                                              bias_last=False),
        save=lambda sd: sd, convert=dict(format="robustbench"), warns="sub_block1", size=32),
    "trades": dict(
        source=lambda: XzWideResNet(10, 5, widen_factor=1, sub_block1=True),
        compat=lambda: trades.WideResNet(depth=10, num_classes=5, widen_factor=1),
        save=lambda sd: module_prefixed(sd),  # torch.save(model.state_dict()) of a DataParallel model
        convert=dict(format="trades"), warns="sub_block1", size=32),
    "dm-swish-cifar100": dict(
        source=lambda: DMWideResNet(5, depth=10, width=1, activation_fn=Swish, mean=CIFAR100_MEAN, std=CIFAR100_STD),
        compat=lambda: robustbench.DMWideResNet(5, depth=10, width=1, activation_fn=robustbench.Swish,
                                                mean=robustbench.CIFAR100_MEAN, std=robustbench.CIFAR100_STD),
        save=lambda sd: sd, convert=dict(format="dm", activation="silu", dataset="cifar100"),
        warns=r"cifar100 defaults mean=\(0.5071", size=32),
    "dm-relu-padded": dict(
        source=lambda: DMWideResNet(5, depth=10, width=1, activation_fn=nn.ReLU, padding=2),
        compat=lambda: robustbench.DMWideResNet(5, depth=10, width=1, activation_fn=nn.ReLU, padding=2),
        save=lambda sd: sd, convert=None, size=28),  # input padding: only the drop-in has it
    "dm-leaky-factory": dict(  # regression: RobustBench calls activation_fn(): a factory is valid there
        source=lambda: DMWideResNet(5, depth=10, width=1, activation_fn=functools.partial(nn.LeakyReLU, 0.2)),
        compat=lambda: robustbench.DMWideResNet(5, depth=10, width=1,
                                                activation_fn=functools.partial(nn.LeakyReLU, 0.2)),
        save=lambda sd: sd, convert=None, size=32),
    "dm-relu": dict(
        source=lambda: DMWideResNet(5, depth=10, width=1, activation_fn=nn.ReLU),
        compat=lambda: robustbench.DMWideResNet(5, depth=10, width=1),
        save=lambda sd: sd, convert=dict(format="dm", activation="relu", dataset="cifar10"),
        warns="cifar10 defaults", size=32),
    "torchssl": dict(
        source=lambda: SslWideResNet("torchssl", 5, depth=10, widen_factor=2), dead_bn1=True,
        compat=lambda: torchssl.WideResNet(1, 5, depth=10, widen_factor=2),
        save=lambda sd: {"model": module_prefixed(sd), "ema_model": sd, "it": 100},  # TorchSSL save_model
        convert=dict(format="torchssl"), size=16),
    "torchssl-stl10": dict(
        source=lambda: SslWideResNet("torchssl", 5, depth=10, widen_factor=2, first_stride=2), dead_bn1=True,
        compat=lambda: torchssl.build_WideResNet(first_stride=2, depth=10, widen_factor=2).build(5),
        save=lambda sd: {"model": module_prefixed(sd), "it": 100},
        convert=dict(format="torchssl", first_stride=2), size=32),
    "usb-0.3": dict(
        source=lambda: SslWideResNet("usb-0.3", 5, depth=10, widen_factor=2), dead_bn1=True,
        compat=lambda: usb.WideResNet(1, 5, depth=10, widen_factor=2),
        save=lambda sd: {"model": module_prefixed(sd), "ema_model": sd, "it": 100},  # semilearn save_model
        convert=dict(format="usb"), size=16),
    "usb-2022": dict(
        source=lambda: SslWideResNet("usb-2022", 5, depth=10, widen_factor=2),
        compat=lambda: usb.WideResNet(1, 5, depth=10, widen_factor=2, layout="2022"),
        save=lambda sd: {"model": module_prefixed(sd), "it": 100},
        convert=dict(format="usb"), size=16),
    "fixmatch": dict(
        source=lambda: SslWideResNet("fixmatch", 5, depth=10, widen_factor=2), dead_bn1=True,
        compat=lambda: fixmatch.WideResNet(5, depth=10, widen_factor=2),
        save=lambda sd: {"epoch": 2, "state_dict": sd, "ema_state_dict": sd},  # kekmodel save_checkpoint
        convert=dict(format="fixmatch"), size=16),
}


def build_source(family, seed=0):
    torch.manual_seed(seed)
    spec = FAMILIES[family]
    return randomize_(spec["source"](), seed, keep_untrained=DEAD_BN1 if spec.get("dead_bn1") else ())


def logits_of(output):
    return output["logits"] if isinstance(output, dict) else output


def assert_close(ours, theirs, dtype, what, scale=None):
    """rel_err, or with ``scale`` the error relative to max(||theirs||, scale)."""
    if theirs.dtype == torch.long:
        assert torch.equal(ours, theirs), what
        return
    err = rel_err(ours, theirs)
    if scale is not None:
        err = err * theirs.double().norm().item() / max(theirs.double().norm().item(), scale)
    assert err <= TOLERANCE[dtype], f"{what}: relative error {err:.3g} > {TOLERANCE[dtype]:g} ({dtype})"


def assert_same_function(source, ours, pairs, x, dtype):
    """Eval logits; train logits, every gradient, every BN buffer. ``pairs``: (name, ours, theirs)
    tensors of the two state_dicts (keep_vars=True), matched by name."""
    source.eval()
    ours.eval()
    with torch.no_grad():
        assert_close(logits_of(ours(x)), logits_of(source(x)), dtype, "eval logits")
    source.train()
    ours.train()
    x_theirs, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    theirs_logits, ours_logits = logits_of(source(x_theirs)), logits_of(ours(x_ours))
    assert_close(ours_logits, theirs_logits, dtype, "train logits")
    weights = torch.randn(theirs_logits.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    (theirs_logits * weights.to(dtype)).sum().backward()
    (ours_logits * weights.to(dtype)).sum().backward()
    assert_close(x_ours.grad, x_theirs.grad, dtype, "input gradient")
    checked = 0
    theirs_by_name = {name: b for name, _, b in pairs}
    for name, a, b in pairs:
        if isinstance(b, nn.Parameter):
            assert (a.grad is None) == (b.grad is None), f"{name}: gradient present on one side only"
            if b.grad is not None:
                # The bias of a conv whose output goes into a train-mode BN has a zero gradient (BN
                # removes any per-channel shift): both sides hold rounding noise there, measured
                # on the scale of the same layer's weight gradient.
                weight = theirs_by_name.get(name[: -len("bias")] + "weight") if name.endswith("bias") else None
                scale = weight.grad.double().norm().item() if weight is not None and weight.grad is not None else None
                assert_close(a.grad, b.grad, dtype, f"{name} gradient", scale)
                checked += 1
        else:
            assert_close(a, b, dtype, f"{name} after a train step")
    assert checked > 10


def compat_pairs(ours, source):
    ours_sd, theirs_sd = ours.state_dict(keep_vars=True), source.state_dict(keep_vars=True)
    assert list(ours_sd) == list(theirs_sd)  # the upstream keys, in the upstream order
    return [(k, ours_sd[k], theirs_sd[k]) for k in ours_sd]


def convert_pairs(ours, source, convert_kwargs):
    # convert_state_dict renames without copying: the converted dict holds the source's own tensors.
    theirs_sd, _ = convert.convert_state_dict(source.state_dict(keep_vars=True), **convert_kwargs)
    ours_sd = ours.state_dict(keep_vars=True)
    assert set(ours_sd) == set(theirs_sd)
    return [(k, ours_sd[k], theirs_sd[k]) for k in ours_sd]


@pytest.fixture(params=["default", "reference"])
def backend(request):
    with wrn_fast.use_backend("auto" if request.param == "default" else "reference"):
        yield request.param


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_drop_in_class_computes_what_the_source_does(family, dtype, backend, tmp_path):
    spec = FAMILIES[family]
    source = build_source(family)
    path = tmp_path / "state_dict.pt"
    torch.save(source.state_dict(), path)
    ours = spec["compat"]()
    assert isinstance(ours, wrn_fast.WideResNet)
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    source, ours = source.to(dtype), ours.to(dtype)
    x = torch.randn(2, 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert_same_function(source, ours, compat_pairs(ours, source), x, dtype)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["fp64", "fp32"])
@pytest.mark.parametrize("family", sorted(f for f in FAMILIES if FAMILIES[f]["convert"] is not None))
def test_load_pretrained_computes_what_the_source_does(family, dtype, backend, tmp_path):
    spec = FAMILIES[family]
    source = build_source(family)
    path = tmp_path / "checkpoint.pt"
    torch.save(spec["save"](source.state_dict()), path)
    if "warns" in spec:
        with pytest.warns(UserWarning, match=spec["warns"]):
            ours = wrn_fast.load_pretrained(path, **spec["convert"])
    else:
        ours = wrn_fast.load_pretrained(path, **spec["convert"])
    assert type(ours) is wrn_fast.WideResNet
    source, ours = source.to(dtype), ours.to(dtype)
    pairs = convert_pairs(ours, source, spec["convert"])
    x = torch.randn(2, 3, spec["size"], spec["size"], generator=torch.Generator().manual_seed(2), dtype=dtype)
    assert_same_function(source, ours, pairs, x, dtype)


# ----------------------------------------------------------------------------- constructors and extras

# The upstream signatures, as their code declares them (default values compared by repr).
UPSTREAM_SIGNATURES = {
    xternalz.WideResNet: "(depth, num_classes, widen_factor=1, dropRate=0.0)",
    robustbench.WideResNet: "(depth=28, num_classes=10, widen_factor=10, sub_block1=False, dropRate=0.0, bias_last=True)",
    trades.WideResNet: "(depth=34, num_classes=10, widen_factor=10, dropRate=0.0)",
    torchssl.WideResNet: "(first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, is_remix=False)",
    torchssl.build_WideResNet: "(first_stride=1, depth=28, widen_factor=2, bn_momentum=0.01, leaky_slope=0.0, "
                               "dropRate=0.0, use_embed=False, is_remix=False)",
    fixmatch.WideResNet: "(num_classes, depth=28, widen_factor=2, drop_rate=0.0)",
    fixmatch.build_wideresnet: "(depth, widen_factor, dropout, num_classes, verbose)",
    # USB's class takes no 6th parameter: the layout choice must hide in **kwargs (regression: an explicit
    # layout='0.3' parameter made the signature differ from semilearn's).
    usb.WideResNet: "(first_stride, num_classes, depth=28, widen_factor=2, drop_rate=0.0, **kwargs)",
    usb.wrn_28_2: "(pretrained=False, pretrained_path=None, **kwargs)",
    usb.wrn_28_8: "(pretrained=False, pretrained_path=None, **kwargs)",
}


@pytest.mark.parametrize("entry", list(UPSTREAM_SIGNATURES), ids=lambda e: f"{e.__module__}.{e.__name__}")
def test_upstream_signatures(entry):
    assert str(inspect.signature(entry)).replace("'", "") == UPSTREAM_SIGNATURES[entry]


def test_dm_signature_and_defaults():
    params = inspect.signature(robustbench.DMWideResNet).parameters
    assert list(params) == ["num_classes", "depth", "width", "activation_fn", "mean", "std", "padding",
                            "num_input_channels"]
    with torch.device("meta"):
        model = robustbench.DMWideResNet()
    assert (model.depth, model.widen_factor, model.num_classes, model.activation) == (28, 10, 10, "relu")
    assert model.mean.flatten().tolist() == pytest.approx(robustbench.CIFAR10_MEAN)


def test_defaults_build_the_upstream_networks():
    with torch.device("meta"):
        assert trades.WideResNet().depth == 34 and trades.WideResNet().widen_factor == 10  # WRN-34-10
        assert robustbench.WideResNet().depth == 28 and robustbench.WideResNet().widen_factor == 10
        assert usb.wrn_28_8(num_classes=10).widen_factor == 8
        assert fixmatch.WideResNet(10).widen_factor == 2
    # xternalz's argument order: 100 classes, not widen_factor 100 (which wrn_fast.WideResNet refuses).
    model = xternalz.WideResNet(16, 100)
    assert (model.num_classes, model.widen_factor) == (100, 1)
    with pytest.raises(ValueError, match="second positional argument"):
        wrn_fast.WideResNet(16, 100)


def test_dropout_arguments_reach_every_block():
    for model in (xternalz.WideResNet(10, 3, 1, 0.3), trades.WideResNet(10, 3, 1, dropRate=0.3),
                  torchssl.WideResNet(1, 3, depth=10, drop_rate=0.3), usb.WideResNet(1, 3, depth=10, drop_rate=0.3),
                  fixmatch.build_wideresnet(10, 1, 0.3, 3, verbose=False)):
        assert {b.dropout_rate for b in model.blocks()} == {0.3}


def test_torchssl_ood_test_and_remix_outputs():
    source = build_source("torchssl")
    source.rot_classifier = nn.Linear(source.channels, 4)
    ours = torchssl.WideResNet(1, 5, depth=10, widen_factor=2, is_remix=True)
    ours.load_state_dict(source.state_dict())
    source.eval()
    ours.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        feat = nn.functional.adaptive_avg_pool2d(source.relu(source.bn1(source.block3(source.block2(source.block1(
            source.conv1(x)))))), 1).flatten(1)
        logits, rot = ours(x)
        assert rel_err(logits, source(x)) < 1e-5 and rel_err(rot, source.rot_classifier(feat)) < 1e-5
        logits, ours_feat = ours(x, ood_test=True)
        assert rel_err(ours_feat, feat) < 1e-5


def test_usb_forward_modes_extract_and_pretrained(tmp_path):
    source = build_source("usb-0.3").eval()
    ours = usb.WideResNet(1, 5, depth=10, widen_factor=2)
    ours.load_state_dict(source.state_dict())
    ours.eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        theirs = source(x)
        out = ours(x)
        assert rel_err(out["logits"], theirs["logits"]) < 1e-5 and rel_err(out["feat"], theirs["feat"]) < 1e-5
        assert rel_err(ours(x, only_feat=True), theirs["feat"]) < 1e-5
        assert rel_err(ours(theirs["feat"], only_fc=True), theirs["logits"]) < 1e-5
        assert rel_err(ours.extract(x).mean(dim=(2, 3)), theirs["feat"]) < 1e-5
    assert ours.classifier is ours.fc and "block1.layer.0.bn1.weight" in ours.no_weight_decay()
    # pretrained=True: semilearn's load_checkpoint (the head skipped, the backbone loaded).
    wrn_28_2_source = randomize_(SslWideResNet("usb-0.3", 5, depth=28, widen_factor=2))
    path = tmp_path / "usb.pth"
    torch.save({"model": module_prefixed(wrn_28_2_source.state_dict()), "it": 10}, path)
    pretrained = usb.wrn_28_2(pretrained=True, pretrained_path=str(path), num_classes=5)
    assert torch.equal(pretrained.block3.layer[3].conv2.weight, wrn_28_2_source.block3.layer[3].conv2.weight)
    assert not torch.equal(pretrained.fc.weight, wrn_28_2_source.classifier.weight)


def test_dm_older_checkpoint_with_saved_normalisation_loads_it():
    source = randomize_(DMWideResNet(5, depth=10, width=1, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6),
                                     persistent_normalization=True))
    ours = robustbench.DMWideResNet(5, depth=10, width=1)  # CIFAR-10 defaults until loaded
    ours.load_state_dict(source.state_dict())
    assert ours.mean.flatten().tolist() == pytest.approx([0.1, 0.2, 0.3])
    assert "mean" not in ours.state_dict()  # non-persistent, as in RobustBench today
    with pytest.raises(RuntimeError, match="std: expected 3 values"):
        ours.load_state_dict({**source.state_dict(), "std": torch.ones(4, 1, 1)})


def test_sub_block1_is_saved_but_never_trained():
    model = trades.WideResNet(10, 3, 1)
    names = list(model.state_dict())
    assert names.index("sub_block1.layer.0.bn1.weight") < names.index("block2.layer.0.bn1.weight")
    model(torch.randn(2, 3, 32, 32)).sum().backward()
    assert all(p.grad is None for p in model.sub_block1.parameters())
    assert model.block1.layer[0].conv1.weight.grad is not None


def test_upstream_module_names_reach_the_modules_forward_uses():
    """Fine-tuning code replaces the head under its upstream name (USB ``classifier``, RobustBench DM
    ``logits``); that must replace the head forward runs, and save under the upstream key (regression:
    ``classifier`` was a read-only property, so assigning it registered a second, unused Linear)."""
    model = usb.WideResNet(1, 5, depth=10, widen_factor=1)
    head = nn.Linear(64, 7)
    model.classifier = head
    assert model.fc is head and model.classifier is head
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        out = model.eval()(x)
        assert out["logits"].shape == (2, 7)
        assert rel_err(out["logits"], head(out["feat"])) < 1e-6
    assert [k for k in model.state_dict() if k.startswith(("fc.", "classifier."))] == ["classifier.weight",
                                                                                    "classifier.bias"]
    dm = robustbench.DMWideResNet(5, depth=10, width=1)
    assert dm.init_conv is dm.conv1 and dm.batchnorm is dm.bn1 and dm.logits is dm.fc
    dm.logits = nn.Linear(64, 3)
    assert dm(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert "logits.weight" in dm.state_dict() and not any(k.startswith("fc.") for k in dm.state_dict())


def test_usb_layout_keyword_is_checked():
    with pytest.raises(ValueError, match="layout: expected one of"):
        usb.WideResNet(1, 5, depth=10, layout="0.2")
    assert usb.wrn_28_2(num_classes=3, layout="2022").layout == "2022"


def test_usb_checkpoint_of_the_other_layout_names_the_fix():
    """Regression: a 2022-layout checkpoint loaded non-strict (as semilearn's load_checkpoint does) into the
    default 0.3-layout class kept half of it without a word."""
    model_2022, model_03 = build_source("usb-2022"), build_source("usb-0.3")
    with pytest.warns(UserWarning, match=r"USB '2022' layout .* build it with layout='2022'"):
        usb.WideResNet(1, 5, depth=10, widen_factor=2).load_state_dict(model_2022.state_dict(), strict=False)
    with pytest.warns(UserWarning, match=r"USB '0.3' layout .* build it with layout='0.3'"):
        usb.WideResNet(1, 5, depth=10, widen_factor=2, layout="2022").load_state_dict(model_03.state_dict(),
                                                                                     strict=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usb.WideResNet(1, 5, depth=10, widen_factor=2).load_state_dict(model_03.state_dict())
