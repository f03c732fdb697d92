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
from beit_ds.segmentation.layers import CPUSyncBatchNorm, FP32BatchNorm2d, FP32SyncBatchNorm, sync_batchnorm
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


def _unilm_segmentation_groups(model: torch.nn.Module, weight_decay: float, layer_decay: float,
                               depth: int) -> dict[str, tuple[float, float]]:
    """(weight decay, lr scale) per parameter as unilm's segmentation optimizer gives them
    (``beit/semantic_segmentation/mmcv_custom/layer_decay_optimizer_constructor.py``): no decay for
    1-d params, ``*.bias`` and names in ``('pos_embed', 'cls_token')``, tested against the full
    names (``backbone.cls_token``), so never; layer 0 for ``backbone.{cls_token, mask_token,
    pos_embed}`` and ``backbone.patch_embed*``, ``backbone.blocks.i`` i + 1, the rest the last of
    depth + 2 layers, lr scale ``layer_decay ** (num_layers - layer - 1)``."""
    num_layers = depth + 2
    out = {}
    for name, p in model.named_parameters():
        no_decay = p.ndim == 1 or name.endswith(".bias") or name in ("pos_embed", "cls_token")
        if name in ("backbone.cls_token", "backbone.mask_token", "backbone.pos_embed") or name.startswith(
                "backbone.patch_embed"):
            layer = 0
        elif name.startswith("backbone.blocks"):
            layer = int(name.split(".")[2]) + 1
        else:
            layer = num_layers - 1
        out[name] = (0.0 if no_decay else weight_decay, layer_decay ** (num_layers - layer - 1))
    return out


def _per_param(model: torch.nn.Module) -> dict[str, tuple[float, float]]:
    """(weight decay, lr scale) per parameter name from our groups (wd 0.05, layer decay 0.9)."""
    group = {id(p): g for g in param_groups(model, 0.05, 0.9) for p in g["params"]}
    return {n: (group[id(p)]["weight_decay"], group[id(p)]["lr_scale"]) for n, p in model.named_parameters()}


@pytest.mark.parametrize("pos", ["relative", "absolute"])
def test_weight_decay_and_lr_scales_are_unilm_segmentation_ones(pos) -> None:
    d = DecoderConfig(num_classes=5, out_indices=(0, 1, 2, 3), channels=24, aux_channels=16)
    cfg = TINY.replace(use_abs_pos_emb=pos == "absolute", wd_exempt="none")  # the paper recipes' setting
    model = BeitForSegmentation(cfg, d)
    ours = _per_param(model)
    unilm = _unilm_segmentation_groups(model, 0.05, 0.9, TINY.depth)
    assert ours.keys() == unilm.keys() and all(ours[n] == pytest.approx(unilm[n]) for n in unilm)
    assert unilm["backbone.cls_token"] == pytest.approx((0.05, 0.9**5))  # unilm decays it (wd 0.05), layer 0
    if pos == "absolute":
        assert unilm["backbone.pos_embed"] == pytest.approx((0.05, 0.9**5))
    exempting = BeitForSegmentation(cfg.replace(wd_exempt="unilm"), d)  # the demo's (classification) rule
    theirs = _per_param(exempting)
    differ = {n for n in unilm if theirs[n] != pytest.approx(unilm[n])}
    assert differ == ({"backbone.cls_token", "backbone.pos_embed"} if pos == "absolute" else {"backbone.cls_token"})


def _sync_bn_rank(rank: int, world: int, port: int, queue: mp.Queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.manual_seed(0)
    x = torch.randn(4, 3, 5, 5) * 2 + 1
    bn = CPUSyncBatchNorm(3)
    part = x[rank * 2 : rank * 2 + 2].clone().requires_grad_(True)
    y = bn(part)
    (y * torch.arange(3.0)[None, :, None, None]).sum().backward()
    low = _cast_like_deepspeed(CPUSyncBatchNorm(3), torch.bfloat16)  # synchronised in fp32 beside bf16 params
    y_low = low(part.detach().bfloat16())
    (y_low.float() * torch.arange(3.0)[None, :, None, None]).sum().backward()  # through the collective
    assert y_low.dtype == torch.bfloat16 and low.running_mean.dtype == low.running_var.dtype == torch.float32  # type: ignore[union-attr]
    assert low.weight.grad is not None and low.weight.grad.dtype == torch.bfloat16
    values = (y.detach(), part.grad, bn.running_mean, bn.running_var, y_low.float(), low.running_mean, low.running_var)
    queue.put((rank, *(t.tolist() for t in values)))  # type: ignore[union-attr]
    dist.destroy_process_group()


def test_cpu_sync_batchnorm_equals_batchnorm_over_the_global_batch() -> None:
    torch.manual_seed(0)
    x = (torch.randn(4, 3, 5, 5) * 2 + 1).requires_grad_(True)
    ref = torch.nn.BatchNorm2d(3)
    y = ref(x)
    (y * torch.arange(3.0)[None, :, None, None]).sum().backward()
    ref_low = torch.nn.BatchNorm2d(3)  # the global batch of the bf16 inputs, in fp32
    y_low = ref_low(x.detach().bfloat16().float())
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
        out, grad, mean, var, out_low, mean_low, var_low = (torch.tensor(v) for v in values)
        assert torch.allclose(out_low, y_low[rank * 2 : rank * 2 + 2].detach(), atol=2e-2)  # bf16 output rounding
        assert torch.allclose(mean_low, ref_low.running_mean, atol=1e-6)
        assert torch.allclose(var_low, ref_low.running_var, atol=1e-5)
        assert torch.allclose(out, y[rank * 2 : rank * 2 + 2].detach(), atol=1e-5)
        # the gradient is the global one; each rank holds its half (its loss term counted per rank)
        assert torch.allclose(grad, x.grad[rank * 2 : rank * 2 + 2], atol=1e-5)  # type: ignore[index]
        assert torch.allclose(mean, ref.running_mean, atol=1e-6) and torch.allclose(var, ref.running_var, atol=1e-5)


def test_sync_batchnorm_swaps_every_bn_and_keeps_keys() -> None:
    model = tiny()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    swapped = sync_batchnorm(model, torch.device("cpu"))
    assert sum(type(m) is CPUSyncBatchNorm for m in swapped.modules()) == norms > 0
    after = swapped.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    on_cuda = sync_batchnorm(tiny(), torch.device("cuda"))  # the swap itself needs no GPU
    assert sum(type(m) is FP32SyncBatchNorm for m in on_cuda.modules()) == norms
    assert on_cuda.state_dict().keys() == before.keys()


LOW = [torch.bfloat16, torch.float16]


def _cast_like_deepspeed(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """What DeepSpeed's bf16 / fp16 modes do to the module they wrap: every parameter cast to
    ``dtype`` (the optimizer keeps fp32 masters), buffers left as they are."""
    for p in module.parameters():
        p.data = p.data.to(dtype)
    return module


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("cls", [FP32BatchNorm2d, CPUSyncBatchNorm, FP32SyncBatchNorm])
def test_batchnorm_computes_in_fp32_beside_low_precision_parameters(cls, dtype, monkeypatch) -> None:
    monkeypatch.setattr(dist, "is_initialized", lambda: False)  # one process (torch's SyncBN refuses CPU ranks)
    torch.manual_seed(0)
    bn = cls(3)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1.0, 1.0)
    _cast_like_deepspeed(bn, dtype)
    ref = torch.nn.BatchNorm2d(3)  # fp32 throughout, on the same (rounded) parameters
    ref.load_state_dict({k: v.float() for k, v in bn.state_dict().items()})
    x = (torch.randn(4, 3, 5, 5) * 3 + 2).to(dtype).requires_grad_(True)
    xf = x.detach().float().requires_grad_(True)
    y, y_ref = bn(x), ref(xf)
    assert y.dtype == dtype and torch.equal(y, y_ref.to(dtype))
    for name in ("running_mean", "running_var"):
        assert getattr(bn, name).dtype == torch.float32
        assert torch.equal(getattr(bn, name), getattr(ref, name))  # statistics of the fp32 input
    w = torch.arange(1.0, 4.0)[None, :, None, None]
    (y.float() * w).sum().backward()
    (y_ref * w).sum().backward()
    assert bn.weight.grad is not None and bn.weight.grad.dtype == dtype and x.grad is not None
    assert torch.allclose(bn.weight.grad.float(), ref.weight.grad, rtol=1e-2, atol=1e-2)  # type: ignore[arg-type]
    assert torch.allclose(x.grad.float(), xf.grad, rtol=1e-2, atol=1e-2)  # type: ignore[arg-type]
    bn.eval(), ref.eval()
    assert torch.equal(bn(x.detach()), ref(xf.detach()).to(dtype))
    half = cls(3).to(dtype)  # a module cast whole (.half()): the statistics become fp32 again
    half(torch.randn(2, 3, 4, 4).to(dtype))
    assert half.running_mean.dtype == half.running_var.dtype == torch.float32  # type: ignore[union-attr]


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("head", ["upernet", "setr_pup"])
def test_a_low_precision_step_keeps_batchnorm_in_fp32(head, dtype) -> None:
    torch.manual_seed(0)
    model = _cast_like_deepspeed(tiny(head), dtype)
    out = model(torch.randn(2, 3, 64, 64).to(dtype), torch.randint(0, 5, (2, 64, 64)))
    out.loss.backward()  # type: ignore[union-attr]
    assert torch.isfinite(out.loss) and out.logits.dtype == dtype  # type: ignore[arg-type]
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == (14 if head == "upernet" else 7)  # pyramid 1, UperNet 12, FCN 1; SETR 4 + 3 aux x 1
    for m in norms:
        assert m.running_mean.dtype == m.running_var.dtype == torch.float32  # type: ignore[union-attr]
        assert int(m.num_batches_tracked) == 1 and not torch.equal(m.running_var, torch.ones_like(m.running_var))  # type: ignore[arg-type]
        assert m.weight.grad is not None and m.weight.grad.dtype == dtype
