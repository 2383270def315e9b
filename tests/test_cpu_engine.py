"""CpuEngine choices that the model tests do not see directly.

  * prepare(): a 3-channel NCHW input runs every conv channels-last (NHWC), and the
    logits still match the reference (fp32, relative L2 <= 1e-4 as bench/cpu_job.py);
  * eval without autograd caches each BN's running-statistics scale / shift (and the
    folded conv weights): changing a running statistic, a BN weight or a conv weight in
    place must change the result exactly as it changes the reference's.
"""
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import wrn_fast
from wrn_fast import reference

from _checks import needs_ext, rel_err

pytestmark = needs_ext


def _pair(**kw):
    torch.manual_seed(0)
    ref = reference.WideResNet(depth=10, widen_factor=2, num_classes=10, **kw)
    fast = wrn_fast.WideResNet(depth=10, widen_factor=2, num_classes=10, **kw)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


class _ConvInputLayouts(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.channels_last = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.convolution.default, torch.ops.mkldnn._convolution_pointwise.default):
            x = args[0]
            self.channels_last.append(x.is_contiguous(memory_format=torch.channels_last)
                                      and not x.is_contiguous())
        return func(*args, **(kwargs or {}))


def test_nchw_input_runs_channels_last_and_matches_the_reference():
    ref, fast = _pair()
    x = torch.randn(4, 3, 8, 8)
    layouts = _ConvInputLayouts()
    with layouts:
        out = fast(x)
    assert len(layouts.channels_last) >= 8 and all(layouts.channels_last)
    assert rel_err(out, ref(x)) <= 1e-4


def test_eval_caches_follow_in_place_changes():
    ref, fast = _pair()
    for m in (ref, fast):
        # running statistics that are not the defaults, so the BNs matter
        for bn in m.modules():
            if isinstance(bn, torch.nn.BatchNorm2d):
                g = torch.Generator().manual_seed(bn.num_features)
                bn.running_mean.copy_(torch.randn(bn.num_features, generator=g))
                bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
        m.eval()
    x = torch.randn(4, 3, 8, 8)
    edits = [
        lambda m: m.block1.layer[0].bn1.running_mean.add_(0.5),   # an unfolded BN: the scale / shift cache
        lambda m: m.block1.layer[0].bn2.running_var.mul_(2.0),    # a folded BN: the packed-weight cache
        lambda m: m.block2.layer[0].bn1.weight.mul_(1.5),
        lambda m: m.block2.layer[0].conv1.weight.mul_(0.5),
    ]
    with torch.no_grad():
        before = fast(x)
        assert rel_err(fast(x), ref(x)) <= 1e-4  # cached path
        for edit in edits:
            edit(ref)
            edit(fast)
            out = fast(x)
            assert rel_err(out, ref(x)) <= 1e-4
            assert rel_err(out, before) > 1e-3  # the edit did change the result
            before = out
