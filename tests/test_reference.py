"""wrn_fast.reference: the specification. Checked against the published parameter counts, an
independent functional re-implementation (F.batch_norm / F.conv2d over the state_dict), and its
own construction contract."""
import io
import math

import pytest
import torch
import torch.nn.functional as F

from wrn_fast import reference as R


def count_params(model):
    return sum(p.numel() for p in model.parameters())


def randomize_bn(model, generator=None):
    """Non-trivial BN affine and running stats, so eval-mode BN is really exercised."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=generator)
                m.bias.uniform_(-0.5, 0.5, generator=generator)
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
            elif isinstance(m, torch.nn.Conv2d) and m.bias is not None:
                m.bias.uniform_(-0.1, 0.1, generator=generator)


# ----------------------------------------------------------------------------- parameter counts

# Published counts (paper Table 4 / RobustBench / torchvision) and WRN-70-16 as DeepMind's.
PARAM_COUNTS = [
    (R.wrn_28_10, {}, 36_479_194),
    (R.wrn_16_8, {}, 10_961_370),
    (R.wrn_40_4, {}, 8_949_210),
    (R.wrn_28_2, {}, 1_467_610),
    (R.wrn_34_10, {}, 46_160_474),
    (R.wrn_28_10, {"num_classes": 100}, 36_536_884),
    (R.wide_resnet50_2, {}, 68_883_240),
]


@pytest.mark.parametrize("factory,kwargs,expected", PARAM_COUNTS, ids=lambda v: getattr(v, "__name__", str(v)))
def test_parameter_counts(factory, kwargs, expected):
    # The meta device builds shapes without memory or init cost.
    with torch.device("meta"):
        model = factory(**kwargs)
    assert count_params(model) == expected


def analytic_wrn_params(depth, k, num_classes, in_channels=3):
    """Parameter count of WRN-depth-k B(3,3) from the architecture's definition."""
    n = (depth - 4) // 6
    widths = [16, 16 * k, 32 * k, 64 * k]
    total = in_channels * 16 * 9  # stem
    for g in range(3):
        cin, cout = widths[g], widths[g + 1]
        for i in range(n):
            bin_ = cin if i == 0 else cout
            total += 2 * bin_ + 9 * bin_ * cout + 2 * cout + 9 * cout * cout
            if i == 0 and bin_ != cout:
                total += bin_ * cout
    return total + 2 * widths[3] + widths[3] * num_classes + num_classes


@pytest.mark.parametrize("depth,k,classes", [(70, 16, 10), (10, 1, 10), (22, 3, 7), (28, 10, 100)])
def test_parameter_counts_match_the_definition(depth, k, classes):
    with torch.device("meta"):
        model = R.WideResNet(depth, k, num_classes=classes)
    assert count_params(model) == analytic_wrn_params(depth, k, classes)


def test_wrn_70_16_size():
    with torch.device("meta"):
        assert count_params(R.wrn_70_16()) == 266_796_506  # 266.8M, as in ARCHITECTURE.md


# The paper's Table 1 (block types at comparable size): its names, its parameter counts (rounded
# to 0.1M there); the exact counts are for 10 classes. Every group holds (depth - 4) / 6 blocks.
TABLE_1 = [
    ("WRN-40-2-B(1,3,1)", 40, "B(1,3,1)", 1.4, 1_429_082),
    ("WRN-40-2-B(3,1)", 40, "B(3,1)", 1.2, 1_211_354),
    ("WRN-40-2-B(1,3)", 40, "B(1,3)", 1.3, 1_297_370),
    ("WRN-40-2-B(3,1,1)", 40, "B(3,1,1)", 1.3, 1_343_066),
    ("WRN-28-2-B(3,3)", 28, "B(3,3)", 1.5, 1_467_610),
    ("WRN-22-2-B(3,1,3)", 22, "B(3,1,3)", 1.1, 1_145_498),
]


@pytest.mark.parametrize("name,depth,block,paper_millions,exact", TABLE_1, ids=[row[0] for row in TABLE_1])
def test_paper_table_1_networks(name, depth, block, paper_millions, exact):
    with torch.device("meta"):
        model = R.WideResNet(depth, 2, block=block)
    assert model.num_blocks_per_group == (depth - 4) // 6
    assert round(count_params(model) / 1e6, 1) == paper_millions, name
    assert count_params(model) == exact
    # The same network spelled with an explicit blocks_per_group.
    with torch.device("meta"):
        explicit = R.WideResNet(None, 2, block=block, blocks_per_group=(depth - 4) // 6)
    assert explicit.depth == depth and count_params(explicit) == exact


def test_paper_table_2_deepening_factor_keeps_36_convolutions():
    # Table 2: WRN-40-2 with l = 1..4 convolutions of 3x3 per block, "same number of parameters
    # (2.2M)": 36 convolutions in blocks, i.e. 12, 6, 4, 3 blocks per group.
    for l, n in ((1, 12), (2, 6), (3, 4), (4, 3)):
        with torch.device("meta"):
            model = R.WideResNet(40, 2, block=(3,) * l, blocks_per_group=n)
        assert model.num_blocks_per_group == n and round(count_params(model) / 1e6, 1) == 2.2


def test_depth_counted_in_convolutions_is_refused_with_the_paper_name():
    # 31 = 3 * 3 * 3 + 4: 3 blocks of B(3,1,3) counted by convolutions; the paper calls it WRN-22.
    with pytest.raises(ValueError, match=r"got 31; 31 = 3 \* 3 \* 3 \+ 4 .*WideResNet\(22, \.\.\., block='B\(3,1,3\)'\)"
                                         r", or pass blocks_per_group=3"):
        R.WideResNet(31, 2, block="B(3,1,3)")
    assert R.WideResNet(31, 1, block="B(3,1,3)", blocks_per_group=3).num_blocks_per_group == 3


def test_two_convolution_blocks_keep_their_sizes():
    with torch.device("meta"):
        assert count_params(R.WideResNet(28, 10, block="B(3,3)")) == 36_479_194
        assert count_params(R.WideResNet(40, 2, block=(3, 1))) == count_params(R.WideResNet(40, 2, block="B(3,1)"))


def test_positional_widen_factor_guard_explains_the_argument_order():
    # xternalz's WideResNet(16, 100) means 100 classes; here it would be widen_factor=100.
    with pytest.raises(ValueError, match=r"widen_factor: got 100 as the second positional argument.*"
                                         r"WideResNet\(depth, widen_factor, dropout_rate, num_classes\).*"
                                         r"wrn_fast.compat.xternalz"):
        R.WideResNet(16, 100)
    with pytest.raises(ValueError, match=r"dropout_rate: expected a float in \[0, 1\), got 10 \(the positional order"):
        R.WideResNet(28, 10, 10)  # xternalz's (depth, num_classes, widen_factor)
    with torch.device("meta"):
        assert R.WideResNet(16, widen_factor=40).widen_factor == 40  # a keyword means it


# ----------------------------------------------------------------------------- state_dict names


def test_state_dict_names_are_xternalz():
    model = R.WideResNet(10, 2)
    keys = set(model.state_dict())
    for key in [
        "conv1.weight",
        "block1.layer.0.bn1.weight",
        "block1.layer.0.bn1.running_mean",
        "block1.layer.0.bn1.num_batches_tracked",
        "block1.layer.0.conv1.weight",
        "block1.layer.0.bn2.running_var",
        "block1.layer.0.conv2.weight",
        "block1.layer.0.convShortcut.weight",
        "block2.layer.0.convShortcut.weight",
        "block3.layer.0.convShortcut.weight",
        "bn1.running_mean",
        "fc.weight",
        "fc.bias",
    ]:
        assert key in keys, key
    assert not any("bias" in k and "conv" in k for k in keys)
    normalised = R.WideResNet(10, 2, input_mean=[0.5, 0.4, 0.3], input_std=[0.2, 0.2, 0.2])
    assert set(normalised.state_dict()) == keys  # the normalisation buffers are not persistent


def test_bottleneck_state_dict_names_are_torchvision():
    torchvision = pytest.importorskip("torchvision")
    with torch.device("meta"):
        ours = R.wide_resnet50_2().state_dict()
        theirs = torchvision.models.wide_resnet50_2().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_block_attributes():
    model = R.WideResNet(16, 2, shortcut="raw", activation="swish", padding="tf_same",
                         activate_before_residual=(True, False, False))
    assert model.activation == "silu" and model.block_kernel_sizes == (3, 3)
    assert model.activate_before_residual == (True, False, False)
    assert model.widths == (16, 32, 64, 128) and model.num_blocks_per_group == 2
    first2, second2 = model.block2.layer
    assert (first2.in_planes, first2.out_planes, first2.stride) == (32, 64, 2)
    assert not first2.equal_in_out and first2.convShortcut is not None and first2.raw_input
    assert second2.equal_in_out and second2.convShortcut is None and not second2.raw_input
    assert first2.conv_paddings == ((0, 1, 0, 1), (1, 1, 1, 1))
    assert second2.conv_paddings == ((1, 1, 1, 1), (1, 1, 1, 1))
    assert not model.block1.layer[0].raw_input  # group 1 activates before the residual
    assert first2.shortcut == "raw" and first2.activation == "silu" and first2.kernel_sizes == (3, 3)
    b = R.WideResNet(10, 1, block="B(3,1,3)").block1.layer[0]
    assert b.kernel_sizes == (3, 1, 3) and b.equal_in_out and b.convShortcut is None  # 16 -> 16
    assert [getattr(b, f"bn{i}").num_features for i in (1, 2, 3)] == [16, 16, 16]
    assert [getattr(b, f"conv{i}").kernel_size for i in (1, 2, 3)] == [(3, 3), (1, 1), (3, 3)]
    assert b.conv_paddings == ((1, 1, 1, 1), (0, 0, 0, 0), (1, 1, 1, 1))


def test_parse_block():
    assert R.parse_block("B(3,1,3)") == (3, 1, 3)
    assert R.parse_block(" B( 3, 3 ) ") == (3, 3)
    assert R.parse_block([1, 3]) == (1, 3)
    assert R.parse_block("B(3)") == (3,)


# ----------------------------------------------------------------------------- independent forward


def pads_of(kernel, stride, padding):
    """(left, right, top, bottom) for F.pad, derived from the DM / TF 'SAME' rule for even sizes."""
    if padding == "tf_same" and stride == 2:
        extra = kernel - 2  # TF SAME on an even input: total k - s, the extra pixel after
        return (0, extra, 0, extra) if extra > 0 else (0, 0, 0, 0)
    p = kernel // 2
    return (p, p, p, p)


def act_fn(x, activation, slope):
    if activation == "relu":
        return torch.clamp_min(x, 0)
    if activation == "leaky_relu":
        return torch.where(x >= 0, x, x * slope)
    return x * torch.sigmoid(x)  # silu


def functional_wrn(x, p, cfg, training):
    """WRN forward over a flat tensor dict p (running stats updated in place when training)."""
    mom, eps = cfg.get("bn_momentum", 0.1), cfg.get("bn_eps", 1e-5)
    activation = R.normalize_activation(cfg.get("activation", "relu"))
    slope = cfg.get("negative_slope", 0.1)
    kernels = R.parse_block(cfg.get("block", (3, 3)))
    padding = cfg.get("padding", "symmetric")
    abr = cfg.get("activate_before_residual")
    abr = (True, True, True) if abr is None else abr
    abr = (abr, abr, abr) if isinstance(abr, bool) else abr
    drop = cfg.get("dropout_rate", 0.0)

    def bn(t, name, bn_eps=eps):
        return F.batch_norm(t, p[name + ".running_mean"], p[name + ".running_var"], p[name + ".weight"],
                            p[name + ".bias"], training, mom, bn_eps)

    def conv(t, name, stride, kernel):
        return F.conv2d(F.pad(t, pads_of(kernel, stride, padding)), p[name + ".weight"], p.get(name + ".bias"), stride)

    if cfg.get("input_mean") is not None:
        # The model keeps mean/std as fp32 buffers (cast with the model): round the same way.
        mean = torch.tensor(cfg["input_mean"], dtype=torch.float32).to(x.dtype).view(1, -1, 1, 1)
        std = torch.tensor(cfg["input_std"], dtype=torch.float32).to(x.dtype).view(1, -1, 1, 1)
        x = (x - mean) / std
    out = conv(x, "conv1", 1, 3)
    n = cfg.get("blocks_per_group") or (cfg["depth"] - 4) // 6  # the paper's naming for every block
    for g in range(3):
        for i in range(n):
            base = f"block{g + 1}.layer.{i}"
            stride = (cfg.get("first_stride", 1) if g == 0 else 2) if i == 0 else 1
            projects = base + ".convShortcut.weight" in p
            raw = projects and not abr[g]
            a = act_fn(bn(out, base + ".bn1"), activation, slope)
            h = conv(out if raw else a, base + ".conv1", stride, kernels[0])
            for j, kernel in enumerate(kernels[1:], start=2):
                h = conv(F.dropout(act_fn(bn(h, f"{base}.bn{j}"), activation, slope), drop, training),
                         f"{base}.conv{j}", 1, kernel)
            if projects:
                source = a if (cfg.get("shortcut", "preact") == "preact" and not raw) else out
                short = F.conv2d(source, p[base + ".convShortcut.weight"], p.get(base + ".convShortcut.bias"), stride)
            else:
                short = out
            out = h + short
    out = act_fn(bn(out, "bn1", cfg.get("final_bn_eps", eps)), activation, slope).mean(dim=(2, 3))
    return F.linear(out, p["fc.weight"], p.get("fc.bias"))


FUNCTIONAL_CONFIGS = [
    dict(depth=10, widen_factor=2),
    dict(depth=10, widen_factor=1),  # group 1 has no projection (16 -> 16)
    dict(depth=16, widen_factor=2, activation="leaky_relu", negative_slope=0.2, shortcut="raw"),
    dict(depth=10, widen_factor=2, activation="swish", padding="tf_same",
         input_mean=[0.49, 0.48, 0.45], input_std=[0.25, 0.24, 0.26], bn_momentum=0.3, bn_eps=1e-3),
    dict(depth=10, widen_factor=2, activation="leaky_relu", conv_bias=True, bn_momentum=0.001, bn_eps=1e-3,
         activate_before_residual=(True, False, False)),
    dict(depth=10, widen_factor=2, activate_before_residual=False, shortcut="raw"),
    dict(depth=10, widen_factor=2, block="B(3,1,3)", padding="tf_same"),
    dict(depth=10, widen_factor=2, block=(1, 3, 1), padding="tf_same"),
    dict(depth=10, widen_factor=2, block=(1, 3)),
    dict(depth=10, widen_factor=2, block=(3, 1)),
    dict(depth=10, widen_factor=2, block=(3, 1, 1)),
    dict(depth=10, widen_factor=2, block=(3,)),
    dict(depth=10, widen_factor=2, block=(3, 3, 3)),
    dict(depth=16, widen_factor=2, block=(3, 3, 3, 3), blocks_per_group=1),  # Table 2's naming: 12 convs + 4
    dict(depth=10, widen_factor=2, conv_bias=True, stem_bias=False, bn_eps=1e-5, final_bn_eps=1e-3, fc_bias=False),
    dict(depth=10, widen_factor=2, first_stride=2, activate_before_residual=(True, False, False)),
]


@pytest.mark.parametrize("cfg", FUNCTIONAL_CONFIGS, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k not in ("input_mean", "input_std")))
def test_matches_independent_functional_forward(cfg):
    torch.manual_seed(0)
    model = R.WideResNet(**cfg).double()
    randomize_bn(model)
    params = {k: v.detach().clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)

    # Train mode: outputs, running statistics (all of them, incl. discarded raw-input bn1) and input grads.
    model.train()
    x_model = x.clone().requires_grad_(True)
    x_func = x.clone().requires_grad_(True)
    out = model(x_model)
    ref = functional_wrn(x_func, params, cfg, training=True)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    (out * torch.arange(out.numel(), dtype=out.dtype).view_as(out)).sum().backward()
    (ref * torch.arange(ref.numel(), dtype=ref.dtype).view_as(ref)).sum().backward()
    torch.testing.assert_close(x_model.grad, x_func.grad, rtol=1e-9, atol=1e-10)
    after = model.state_dict()
    for key, value in params.items():
        if key.endswith("running_mean") or key.endswith("running_var"):
            torch.testing.assert_close(after[key], value, rtol=1e-10, atol=1e-12, msg=key)
        if key.endswith("num_batches_tracked"):
            assert int(after[key]) == 1, key

    # Eval mode: running statistics, no update.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), functional_wrn(x, params, cfg, training=False), rtol=1e-10, atol=1e-10)


def test_running_stats_actually_move():
    # Guards the comparison above: a step in train mode must change the BN buffers.
    model = R.WideResNet(10, 1)
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    model.train()(torch.randn(4, 3, 8, 8))
    after = model.state_dict()
    assert all(not torch.equal(before[k], after[k]) for k in before)


def test_raw_input_block_ignores_bn1_output_but_updates_its_stats():
    block = R.BasicBlock(8, 16, 2, raw_input=True).double()
    x = torch.randn(2, 8, 8, 8, dtype=torch.float64)
    out1 = block.train()(x)
    assert int(block.bn1.num_batches_tracked) == 1
    with torch.no_grad():
        block.bn1.weight.mul_(3)  # bn1's output is discarded: changing it changes nothing
        block.bn1.bias.add_(1)
    torch.testing.assert_close(block(x), out1)
    preact = R.BasicBlock(8, 16, 2).double()
    preact.load_state_dict(block.state_dict())
    assert not torch.allclose(preact(x), out1)


# ----------------------------------------------------------------------------- shapes


SHAPE_CASES = [
    dict(),
    dict(activation="leaky_relu"),
    dict(activation="silu"),
    dict(activation="swish"),
    dict(shortcut="raw"),
    dict(conv_bias=True),
    dict(padding="tf_same"),
    dict(input_mean=(0.5, 0.5, 0.5), input_std=(0.25, 0.25, 0.25)),
    dict(activate_before_residual=(True, False, False)),
    dict(activate_before_residual=True),
    dict(dropout_rate=0.3),
    dict(in_channels=1),
    dict(num_classes=100),
    *[dict(block=b, depth=10) for b in R.BLOCK_STRUCTURES],
]


@pytest.mark.parametrize("size", [(16, 16), (24, 24), (40, 40), (12, 20)])
@pytest.mark.parametrize("case", SHAPE_CASES, ids=str)
def test_forward_shapes(case, size):
    cfg = {"depth": 10, "widen_factor": 2, **case}
    model = R.WideResNet(**cfg)
    x = torch.randn(2, cfg.get("in_channels", 3), *size)
    for mode in (True, False):
        out = model.train(mode)(x)
        assert out.shape == (2, cfg.get("num_classes", 10))
        assert torch.isfinite(out).all()


def test_odd_sizes_with_symmetric_padding_and_tf_same_rejects_them():
    assert R.WideResNet(10, 1)(torch.randn(2, 3, 15, 13)).shape == (2, 10)
    with pytest.raises(ValueError, match="tf_same"):
        R.WideResNet(10, 1, padding="tf_same")(torch.randn(2, 3, 14, 14))


def test_block_output_shapes():
    x = torch.randn(2, 16, 12, 12)
    assert R.BasicBlock(16, 32, 2)(x).shape == (2, 32, 6, 6)
    assert R.BasicBlock(16, 32, 2, padding="tf_same", kernel_sizes=(1, 3, 1))(x).shape == (2, 32, 6, 6)
    assert R.BasicBlock(16, 16, 1, kernel_sizes=(3, 3, 3, 3))(x).shape == (2, 16, 12, 12)


def test_bottleneck_forward_shape():
    model = R.WideResNetBottleneck(layers=(1, 1, 1, 1), width_per_group=16, num_classes=7, in_channels=1)
    assert model.layer2[0].stride == 2 and model.layer2[0].downsample is not None
    assert model(torch.randn(2, 1, 32, 32)).shape == (2, 7)


# ----------------------------------------------------------------------------- dropout, round trip, init


def test_dropout_is_stochastic_in_train_and_deterministic_in_eval():
    torch.manual_seed(0)
    model = R.WideResNet(10, 2, dropout_rate=0.5)
    x = torch.randn(4, 3, 8, 8)
    model.train()
    assert not torch.allclose(model(x), model(x))
    model.eval()
    no_dropout = R.WideResNet(10, 2, dropout_rate=0.0)
    no_dropout.load_state_dict(model.state_dict())  # after the train steps moved the running stats
    no_dropout.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x), rtol=0, atol=0)
        torch.testing.assert_close(model(x), no_dropout(x), rtol=0, atol=0)


def test_state_dict_round_trip():
    torch.manual_seed(0)
    model = R.WideResNet(10, 2, activation="leaky_relu", conv_bias=True, block=(3, 1, 3))
    randomize_bn(model)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    torch.manual_seed(1)
    fresh = R.WideResNet(10, 2, activation="leaky_relu", conv_bias=True, block=(3, 1, 3))
    x = torch.randn(3, 3, 16, 16)
    assert not torch.allclose(fresh.eval()(x), model.eval()(x))
    fresh.load_state_dict(torch.load(buffer, weights_only=True), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
        torch.testing.assert_close(fresh.train()(x), model.train()(x), rtol=0, atol=0)


def test_initialisation_statistics():
    torch.manual_seed(0)
    model = R.WideResNet(16, 4, conv_bias=True)
    checked = 0
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert torch.equal(m.weight, torch.ones_like(m.weight)) and torch.equal(m.bias, torch.zeros_like(m.bias))
        elif isinstance(m, torch.nn.Conv2d):
            assert torch.equal(m.bias, torch.zeros_like(m.bias)), name
            fan_out = m.out_channels * m.kernel_size[0] * m.kernel_size[1]
            if m.weight.numel() >= 10_000:  # enough samples for a 5% estimate of the std
                std = m.weight.std().item()
                assert abs(std / math.sqrt(2.0 / fan_out) - 1) < 0.05, (name, std)
                assert abs(m.weight.mean().item()) < 0.05 * std, name
                checked += 1
    assert checked >= 8
    assert torch.equal(model.fc.bias, torch.zeros_like(model.fc.bias))
    bound = 1 / math.sqrt(model.fc.in_features)  # PyTorch's default Linear init
    assert model.fc.weight.abs().max() <= bound and model.fc.weight.std() > bound / 4


# ----------------------------------------------------------------------------- configuration errors


@pytest.mark.parametrize(
    "kwargs,parameter",
    [
        (dict(depth=27), "depth"),
        (dict(depth=4), "depth"),
        (dict(depth=28.0), "depth"),
        (dict(depth=13, block=(3, 1, 3)), "depth"),
        (dict(depth=40, block=(3, 3, 3), blocks_per_group=3), "depth"),
        (dict(depth=10, blocks_per_group=0), "blocks_per_group"),
        (dict(negative_slope=float("nan")), "negative_slope"),
        (dict(negative_slope=float("inf")), "negative_slope"),
        (dict(negative_slope="0.1"), "negative_slope"),
        (dict(bn_eps=float("inf")), "bn_eps"),
        (dict(bn_eps=float("nan")), "bn_eps"),
        (dict(final_bn_eps=-1.0), "final_bn_eps"),
        (dict(bn_momentum=float("nan")), "bn_momentum"),
        (dict(first_stride=0), "first_stride"),
        (dict(fc_bias=None), "fc_bias"),
        (dict(input_mean=[float("nan")] * 3, input_std=[1.0] * 3), "input_mean"),
        (dict(input_mean=[0.5] * 3, input_std=[float("inf")] * 3), "input_std"),
        (dict(widen_factor=0), "widen_factor"),
        (dict(widen_factor=2.5), "widen_factor"),
        (dict(dropout_rate=1.0), "dropout_rate"),
        (dict(dropout_rate=-0.1), "dropout_rate"),
        (dict(activation="gelu"), "activation"),
        (dict(block="B(5,5)"), "block"),
        (dict(block="C(3,3)"), "block"),
        (dict(block="B(3,"), "block"),
        (dict(block=(3, 2)), "block"),
        (dict(shortcut="identity"), "shortcut"),
        (dict(padding="same"), "padding"),
        (dict(num_classes=0), "num_classes"),
        (dict(in_channels=0), "in_channels"),
        (dict(activate_before_residual=(True, False)), "activate_before_residual"),
        (dict(input_mean=[0.5, 0.5], input_std=[1.0, 1.0, 1.0]), "input_mean"),
        (dict(input_mean=[0.5] * 3, input_std=[1.0, 0.0, 1.0]), "input_std"),
        (dict(bn_eps=0.0), "bn_eps"),
    ],
)
def test_bad_configuration(kwargs, parameter):
    cfg = {"depth": 10, "widen_factor": 1, **kwargs}
    with pytest.raises(ValueError, match=parameter):
        R.WideResNet(**cfg)


def test_bad_configuration_messages_say_what_was_given():
    with pytest.raises(ValueError, match=r"depth: expected 6n \+ 4.*got 27"):
        R.WideResNet(27, 1)
    with pytest.raises(ValueError, match=r"activation: expected .*'relu'.*got 'gelu'"):
        R.WideResNet(10, 1, activation="gelu")


def test_bad_bottleneck_configuration():
    with pytest.raises(ValueError, match="layers"):
        R.WideResNetBottleneck(layers=(3, 4, 6))
    with pytest.raises(ValueError, match="width_per_group"):
        R.WideResNetBottleneck(width_per_group=0)


def test_factories_accept_overrides():
    with torch.device("meta"):
        model = R.wrn_28_10(num_classes=100, dropout_rate=0.3, activation="silu")
    assert (model.depth, model.widen_factor, model.num_classes, model.dropout_rate) == (28, 10, 100, 0.3)
    assert model.block1.layer[0].dropout_rate == 0.3 and model.activation == "silu"
    with torch.device("meta"):
        assert R.wide_resnet101_2(num_classes=10).fc.out_features == 10
