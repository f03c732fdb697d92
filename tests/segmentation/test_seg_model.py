"""BeitForSegmentation: shapes, the pyramid, heads, loss, SyncBN on gloo ranks (issue 15)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from beit_ds.config import ModelConfig
from beit_ds.config.segmentation import DecoderConfig
from beit_ds.optim import param_groups
from beit_ds.segmentation.layers import CPUSyncBatchNorm, sync_batchnorm
from beit_ds.segmentation.model import BeitForSegmentation, seg_cross_entropy

TINY = ModelConfig(img_size=64, patch_size=16, embed_dim=32, depth=4, num_heads=2, drop_path_rate=0.0)


def tiny(head: str = "upernet", **decode: object) -> BeitForSegmentation:
    d = DecoderConfig(head=head, num_classes=5, out_indices=(0, 1, 2, 3), channels=24, aux_channels=16, **decode)  # type: ignore[arg-type]
    return BeitForSegmentation(TINY, d)


def test_upernet_shapes_and_pyramid_strides() -> None:
    model = tiny()
    x = torch.randn(2, 3, 64, 96)  # another size than built: positions resized at run time
    feats = model.features(x)
    assert [tuple(f.shape[-2:]) for f in feats] == [(16, 24), (8, 12), (4, 6), (2, 3)]  # strides 4, 8, 16, 32
    out = model(x)
    assert out.logits.shape == (2, 5, 16, 24) and out.loss is None


def test_setr_pup_upsamples_sixteen_times_with_three_aux_heads() -> None:
    model = tiny("setr_pup", up_convs=4, aux_num_convs=2, dropout=0.0)
    assert len(model.auxiliary_head) == 3  # type: ignore[arg-type]
    labels = torch.randint(0, 5, (2, 64, 64))
    out = model(torch.randn(2, 3, 64, 64), labels)
    assert out.logits.shape == (2, 5, 64, 64)  # stride 16 -> 1
    assert "aux_loss" in out.metrics and torch.isfinite(out.loss)  # type: ignore[arg-type]


def test_loss_is_decode_plus_weighted_aux_and_ignores_255() -> None:
    model = tiny().eval()
    labels = torch.randint(0, 5, (1, 64, 64))
    labels[:, :32] = 255
    out = model(torch.randn(1, 3, 64, 64), labels)
    decode, aux = out.metrics["decode_loss"], out.metrics["aux_loss"]
    assert torch.allclose(out.loss, decode + 0.4 * aux)  # type: ignore[arg-type]
    # mmseg 0.x: the mean over all pixels, ignored ones counting 0 -> half of the valid-pixel mean
    up = F.interpolate(out.logits, size=(64, 64), mode="bilinear", align_corners=False)
    valid_mean = F.cross_entropy(up, labels, ignore_index=255)
    assert torch.allclose(seg_cross_entropy(out.logits, labels), valid_mean / 2, rtol=1e-5)


def test_backbone_pruned_after_last_index_and_no_final_norm() -> None:
    d = DecoderConfig(num_classes=3, out_indices=(0, 1, 2, 3), channels=24, aux_channels=8)
    model = BeitForSegmentation(ModelConfig(img_size=64, embed_dim=32, depth=6, num_heads=2), d)
    keys = model.state_dict().keys()
    assert not any(k.startswith(("backbone.blocks.4.", "backbone.norm.", "backbone.head")) for k in keys)
    with pytest.raises(ValueError, match="out_indices"):
        BeitForSegmentation(ModelConfig(img_size=64, embed_dim=32, depth=3, num_heads=2), d)


def test_layer_decay_groups_compose_backbone_and_decoder() -> None:
    groups = param_groups(tiny(), 0.05, layer_decay=0.65)
    scales = {g["group_name"]: g["lr_scale"] for g in groups}
    names = {id(p): n for n, p in tiny().named_parameters()}
    assert scales["layer_0_no_decay"] == pytest.approx(0.65**5)  # embeddings: depth 4 + 2 layers
    assert scales["layer_5_decay"] == 1.0  # decoder and neck: the last layer
    assert names  # every parameter is in a group
    assert sum(len(g["params"]) for g in groups) == sum(1 for _ in tiny().parameters())


def _sync_bn_rank(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    bn = CPUSyncBatchNorm(3)
    part = x[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(3.0)[None, :, None, None]).sum().backward()
    queue.put((rank, *(t.tolist() for t in (y.detach(), part.grad, bn.running_mean, bn.running_var))))
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_over_the_global_batch() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5) * 2 + 1).requires_grad_(True)
    ref = torch.nn.BatchNorm2d(3)
    y = ref(x)
    (y * torch.arange(3.0)[None, :, None, None]).sum().backward()
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = 29500 + os.getpid() % 1000
    procs = [ctx.Process(target=_sync_bn_rank, args=(r, 2, port, queue)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(queue.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(60)
    for rank, *values in results:
        out, grad, mean, var = (torch.tensor(v) for v in values)
        assert torch.allclose(out, y[rank * 2 : rank * 2 + 2].detach(), atol=1e-5)
        # the gradient is the global one; each rank holds its half (its loss term counted per rank)
        assert torch.allclose(grad, x.grad[rank * 2 : rank * 2 + 2], atol=1e-5)  # type: ignore[index]
        assert torch.allclose(mean, ref.running_mean, atol=1e-6) and torch.allclose(var, ref.running_var, atol=1e-5)


def test_sync_batchnorm_swaps_every_bn_and_keeps_keys() -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    swapped = sync_batchnorm(model, torch.device("cpu"))
    assert not any(type(m) is torch.nn.BatchNorm2d for m in swapped.modules())
    after = swapped.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
