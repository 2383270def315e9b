"""sync_bn=True: two gloo ranks on CPU equal one process on the global batch.

With synchronised statistics every BatchNorm sees the statistics of the global
batch, so (DDP-averaged) gradients, logits and running buffers of 2 ranks x 4
images equal those of 1 process x 8 images. Tolerance 1e-4 relative (fp32;
different reduction order of the statistics: all_gather + Chan merge).
"""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

import wrn_fast

CFG = dict(depth=10, widen_factor=1, num_classes=4)
BOTTLENECK_CFG = dict(layers=(1, 1, 1, 1), num_classes=4)


def _bottleneck(how):
    """The ImageNet WRN with global statistics by its constructor option, or (how='convert_sync_batchnorm',
    see _worker) with nn.SyncBatchNorm modules the way the trainer converted it on GPUs: the fused
    forward must honour them, not silently keep per-rank statistics."""
    return wrn_fast.WideResNetBottleneck(**BOTTLENECK_CFG, sync_bn=how == "option").double()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank, world, port, state, x, y, out_dir, bottleneck=None):
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        model = wrn_fast.WideResNet(**CFG, sync_bn=True) if bottleneck is None else _bottleneck(bottleneck)
        model.load_state_dict(state)
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        if bottleneck == "convert_sync_batchnorm":
            # after DDP's init, which refuses SyncBatchNorm on CPU; the converted modules keep the
            # same Parameter and buffer objects, so DDP still averages their gradients
            torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
            assert any(isinstance(m, torch.nn.SyncBatchNorm) for m in model.modules())
        per_rank = x.shape[0] // world
        shard = slice(rank * per_rank, (rank + 1) * per_rank)
        with wrn_fast.use_backend("cpu"):
            logits = ddp(x[shard])
            F.cross_entropy(logits, y[shard]).backward()
        torch.save(
            {"logits": logits.detach(), "grads": {n: p.grad for n, p in model.named_parameters()},
             "buffers": {n: b for n, b in model.named_buffers()}},
            os.path.join(out_dir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


def test_sync_bn_two_gloo_ranks_equal_single_process_global_batch(tmp_path):
    if not wrn_fast.build_info()["extension_loaded"]:
        pytest.skip("wrn_fast._C not built")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.manual_seed(0)
    single = wrn_fast.WideResNet(**CFG)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    x = torch.randn(8, 3, 8, 8) * 2 + 0.3
    y = torch.randint(0, 4, (8,))
    mp.spawn(_worker, args=(2, _free_port(), state, x, y, str(tmp_path)), nprocs=2, join=True)
    with wrn_fast.use_backend("cpu"):
        logits = single(x)
        # DDP averages gradients over ranks of per-rank mean losses = mean over the global batch.
        F.cross_entropy(logits, y).backward()
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")

    def rel(a, b):
        assert torch.isfinite(a).all()
        return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()

    assert rel(torch.cat([r0["logits"], r1["logits"]]), logits.detach()) < 1e-4
    floor_norm = torch.cat([p.grad.flatten() for p in single.parameters()]).norm()
    for n, p in single.named_parameters():
        for r in (r0, r1):
            err = (r["grads"][n] - p.grad).norm() / max(p.grad.norm(), 1e-3 * floor_norm)
            assert err < 2e-4, n
    for n, b in single.named_buffers():
        if b.is_floating_point():
            assert rel(r0["buffers"][n], b) < 1e-4, n
        else:
            assert torch.equal(r0["buffers"][n], b), n


@pytest.mark.parametrize("how", ["option", "convert_sync_batchnorm"])
def test_sync_bn_bottleneck_two_gloo_ranks_equal_single_process_global_batch(tmp_path, how):
    """Issue 15.5: the fused bottleneck forward kept per-rank statistics (sync_bn ignored,
    nn.SyncBatchNorm modules never called). float64: the post-activation bottleneck's
    ReLUs before BN over few values flip under fp32 rounding (see test_model.py)."""
    if not wrn_fast.build_info()["extension_loaded"]:
        pytest.skip("wrn_fast._C not built")
    if not dist.is_available():
        pytest.skip("torch.distributed unavailable")
    torch.manual_seed(0)
    single = wrn_fast.WideResNetBottleneck(**BOTTLENECK_CFG).double()
    with torch.no_grad():  # random BN affine: weight=1/bias=0 would hide a wrong formula
        for m in single.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    state = {k: v.clone() for k, v in single.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64) + 0.3
    y = torch.randint(0, 4, (4,))
    mp.spawn(_worker, args=(2, _free_port(), state, x, y, str(tmp_path), how), nprocs=2, join=True)
    with wrn_fast.use_backend("cpu"):
        logits = single(x)
        F.cross_entropy(logits, y).backward()
    r0 = torch.load(tmp_path / "rank0.pt")
    r1 = torch.load(tmp_path / "rank1.pt")

    def rel(a, b):
        assert torch.isfinite(a).all()
        return ((a - b).norm() / b.norm().clamp_min(1e-12)).item()

    # per-rank statistics (the bug) differ by ~1e-1 here: layer4 normalises over 2 values per rank
    assert rel(torch.cat([r0["logits"], r1["logits"]]), logits.detach()) < 1e-10
    for n, p in single.named_parameters():
        for r in (r0, r1):
            assert rel(r["grads"][n], p.grad) < 1e-9, n
    for n, b in single.named_buffers():
        if b.is_floating_point():
            assert rel(r0["buffers"][n], b) < 1e-10, n
        else:
            assert torch.equal(r0["buffers"][n], b), n
