"""pack_mask / unpack_mask / dropout_mask of wrn_fast._C, and build_info's view of the ops."""
import pytest
import torch

import wrn_fast
from wrn_fast import _ext
from wrn_fast.ops import ext

from _checks import needs_ext

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() and wrn_fast.build_info()["extension_cuda_kernels"] else [])
pytestmark = needs_ext

OPS = ["channel_stats", "merge_partial_stats", "bn_finalize", "bn_update_running_stats", "bn_backward_apply",
       "bn_act_dropout", "bn_act_dropout_backward", "pack_mask", "unpack_mask", "dropout_mask"]
# CUDA kernels: Triton, registered from Python (wrn_fast/ops/bn_act.py) when triton is installed
TRITON_CUDA_OPS = ["bn_act_dropout", "bn_act_dropout_backward"]
DIFFERENTIABLE = ["channel_stats", "merge_partial_stats", "bn_finalize", "bn_backward_apply", "bn_act_dropout"]


def reference_pack(mask):
    bits = mask.reshape(-1).to(torch.uint8)
    pad = (-bits.numel()) % 8
    bits = torch.cat([bits, bits.new_zeros(pad)]).view(-1, 8)
    return (bits << torch.arange(8, dtype=torch.uint8)).sum(1).to(torch.uint8)  # little-endian bit order


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("numel", [0, 1, 7, 8, 9, 1000, 4099])
def test_pack_matches_reference_and_roundtrips(device, numel):
    mask = torch.rand(numel, generator=torch.Generator().manual_seed(numel)) > 0.5
    packed = ext.pack_mask(mask.to(device))
    assert packed.dtype == torch.uint8 and packed.shape == ((numel + 7) // 8,)
    assert torch.equal(packed.cpu(), reference_pack(mask))
    assert torch.equal(ext.unpack_mask(packed, numel).cpu(), mask)


@pytest.mark.parametrize("device", DEVICES)
def test_pack_uses_logical_order_of_strided_masks(device):
    mask = (torch.rand(4, 3, 5, 6) > 0.3).to(device)
    cl = mask.to(memory_format=torch.channels_last)
    assert torch.equal(ext.pack_mask(cl), ext.pack_mask(mask))
    assert torch.equal(ext.unpack_mask(ext.pack_mask(mask.transpose(0, 2)), mask.numel()).cpu(),
                       mask.transpose(0, 2).reshape(-1).cpu())


@pytest.mark.parametrize("device", DEVICES)
def test_dropout_mask_roundtrips_through_packing(device):
    keep = ext.dropout_mask(torch.tensor([42], device=device), [3, 4, 5, 5], 0.3)
    assert keep.shape == (3, 4, 5, 5) and keep.dtype == torch.bool
    assert torch.equal(ext.unpack_mask(ext.pack_mask(keep), keep.numel()).view_as(keep), keep)


def test_bitmask_errors():
    with pytest.raises(RuntimeError, match=r"wrn_fast::pack_mask: mask must be bool, got Float"):
        ext.pack_mask(torch.zeros(3))
    with pytest.raises(RuntimeError, match=r"wrn_fast::unpack_mask: packed must have shape \[ceil\(numel / 8\)\] = \[2\]"):
        ext.unpack_mask(torch.zeros(3, dtype=torch.uint8), 9)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_bitmask_ops(device):
    mask = torch.rand(3, 11, device=device) > 0.5
    torch.library.opcheck(torch.ops.wrn_fast.pack_mask.default, (mask,))
    torch.library.opcheck(torch.ops.wrn_fast.unpack_mask.default, (ext.pack_mask(mask), 33))
    torch.library.opcheck(torch.ops.wrn_fast.dropout_mask.default, (torch.tensor([9], device=device), [2, 3, 4], 0.4))


def test_build_info_lists_every_op_with_its_dispatch_keys():
    info = wrn_fast.build_info()
    assert info["extension_loaded"], info["extension_error"]
    for name in OPS:
        keys = info["ops"][name]
        assert "CPU" in keys and "Meta" in keys, (name, keys)
        has_cuda = info["triton"]["version"] is not None if name in TRITON_CUDA_OPS else info["extension_cuda_kernels"]
        assert ("CUDA" in keys) == has_cuda, (name, keys)
        if name in DIFFERENTIABLE:
            assert "Autograd" in keys, (name, keys)
    assert "name" not in info["ops"]
    # with_cuda() is the truth build_info reports; CI checks it is True for the full build
    assert info["extension_cuda_kernels"] == _ext._C.with_cuda()


def test_ext_wrappers_raise_clear_error_without_extension(monkeypatch):
    monkeypatch.setattr(_ext, "ext_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"wrn_fast._C is unavailable"):
        ext.channel_stats(torch.zeros(2, 3))
