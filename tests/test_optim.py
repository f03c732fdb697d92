"""Parameter groups from model metadata: weight-decay exclusions and layer-wise lr decay."""

from __future__ import annotations

import pytest
import torch

from beit_ds.config import MIMConfig
from beit_ds.models import build_mim_model, build_model, model_config
from beit_ds.optim import apply_schedule, param_groups


def _group_of(groups, model):
    ids = {id(p): g for g in groups for p in g["params"]}
    return {n: ids[id(p)] for n, p in model.named_parameters()}


def _decayed(model) -> dict[str, bool]:
    return {n: g["weight_decay"] > 0 for n, g in _group_of(param_groups(model, 0.05), model).items()}


def _unilm_decayed(model, skip: set[str]) -> dict[str, bool]:
    """unilm's optim_factory.get_parameter_groups rule: no decay for 1-d params, ``*.bias`` and
    names in the skip list (``model.no_weight_decay()`` = {pos_embed, cls_token}, plus the
    per-layer tables with ``--disable_weight_decay_on_rel_pos_bias``)."""
    return {n: not (p.ndim == 1 or n.endswith(".bias") or n in skip) for n, p in model.named_parameters()}


UNILM_SKIP = {"pos_embed", "cls_token"}


def test_pretraining_weight_decay_matches_unilm_per_parameter():
    cfg = model_config("beit_debug_patch4_32", rel_pos_bias="shared", use_abs_pos_emb=True)
    model = build_mim_model(cfg, MIMConfig(vocab_size=16))
    decayed = _decayed(model)
    assert decayed == _unilm_decayed(model, UNILM_SKIP)
    # unilm run_beit_pretraining.py: mask_token and the shared table are decayed
    assert decayed["mask_token"] and decayed["rel_pos_bias.relative_position_bias_table"]
    for name in [
        "cls_token",
        "pos_embed",
        "blocks.0.attn.q_bias",
        "blocks.0.norm1.weight",
        "blocks.1.gamma_1",
        "lm_head.bias",
    ]:
        assert not decayed[name], name
    assert (
        sum(decayed.values()) == 4 * cfg.depth + 4
    )  # per block qkv, proj, fc1, fc2; conv, lm_head, table, mask_token
    old = build_mim_model(cfg.replace(wd_exempt="positional"), MIMConfig(vocab_size=16))
    assert not _decayed(old)["mask_token"] and not _decayed(old)["rel_pos_bias.relative_position_bias_table"]


@pytest.mark.parametrize("wd_exempt", ["unilm", "unilm_rel_pos"])
def test_finetuning_weight_decay_matches_unilm_per_parameter(wd_exempt):
    cfg = model_config("beit_debug_patch4_32", rel_pos_bias="per_layer", global_pool="avg", num_classes=3)
    model = build_model(cfg.replace(wd_exempt=wd_exempt))
    skip = set(UNILM_SKIP)
    if wd_exempt == "unilm_rel_pos":  # unilm run_class_finetuning.py --disable_weight_decay_on_rel_pos_bias
        skip |= {f"blocks.{i}.attn.relative_position_bias_table" for i in range(cfg.depth)}
    decayed = _decayed(model)
    assert decayed == _unilm_decayed(model, skip)
    assert decayed["blocks.0.attn.relative_position_bias_table"] == (wd_exempt == "unilm")
    assert decayed["head.weight"] and not decayed["fc_norm.weight"] and not decayed["cls_token"]


def test_layer_decay_scales():
    model = build_model(model_config("beit_debug_patch4_32", depth=2, global_pool="avg", num_classes=3))
    of = _group_of(param_groups(model, 0.05, layer_decay=0.5), model)
    # num_layers = depth + 2 = 4: embeddings 0.5^3, block i 0.5^(2-i), head 1
    assert of["patch_embed.proj.weight"]["lr_scale"] == pytest.approx(0.125)
    assert of["blocks.0.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.25)
    assert of["blocks.1.mlp.fc1.weight"]["lr_scale"] == pytest.approx(0.5)
    assert of["head.weight"]["lr_scale"] == 1.0 and of["fc_norm.weight"]["lr_scale"] == 1.0
    opt = torch.optim.AdamW(param_groups(model, 0.05, layer_decay=0.5))
    apply_schedule(opt, lr=1e-3, weight_decay=0.1)
    lrs = sorted({g["lr"] for g in opt.param_groups})
    assert lrs == pytest.approx([1.25e-4, 2.5e-4, 5e-4, 1e-3])
    assert {g["weight_decay"] for g in opt.param_groups} == {0.0, 0.1}


# --- composition (issue 13 §2, house style rule 23) -------------------------------------------
class _Segmenter(torch.nn.Module):
    """A backbone + small decoder, as a UperNet / SETR model wraps it."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.decoder = torch.nn.Sequential(
            torch.nn.Conv2d(32, 16, 1), torch.nn.BatchNorm2d(16), torch.nn.Conv2d(16, 4, 1)
        )


class _Student(torch.nn.Module):
    """A DINO-style student: a wrapper one level deeper, + projection head with its own exemption."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.student = torch.nn.ModuleDict({"encoder": _Segmenter(backbone)})
        self.head = torch.nn.Linear(32, 64)
        self.prototypes = torch.nn.Parameter(torch.zeros(64, 8))

    def no_weight_decay(self) -> set[str]:
        return {"prototypes"}


def _per_param(groups, model) -> dict[str, tuple[float, float]]:
    return {n: (g["weight_decay"], g["lr_scale"]) for n, g in _group_of(groups, model).items()}


@pytest.mark.parametrize("layer_decay", [1.0, 0.65])
@pytest.mark.parametrize("kind", ["pretrain", "finetune_unilm_rel_pos"])
def test_wrapped_backbone_gets_the_groups_of_the_backbone_alone(kind, layer_decay):
    if kind == "pretrain":
        cfg = model_config("beit_debug_patch4_32", rel_pos_bias="shared", use_abs_pos_emb=True, depth=3)
        backbone = build_mim_model(cfg, MIMConfig(vocab_size=16))
    else:
        cfg = model_config("beit_debug_patch4_32", depth=3, global_pool="avg", num_classes=3)
        backbone = build_model(cfg.replace(wd_exempt="unilm_rel_pos"))
    alone = _per_param(param_groups(backbone, 0.05, layer_decay), backbone)
    for wrapper, prefix in (
        (_Segmenter(backbone), "backbone."),
        (_Student(backbone), "student.encoder.backbone."),
    ):
        wrapped = _per_param(param_groups(wrapper, 0.05, layer_decay), wrapper)
        inside = {n.removeprefix(prefix): v for n, v in wrapped.items() if n.startswith(prefix)}
        assert inside == alone  # every backbone parameter: same weight decay, same lr scale
        rest = {n: v for n, v in wrapped.items() if not n.startswith(prefix)}
        for name, (wd, scale) in rest.items():  # the wrapper's own: the last layer, ndim / bias rule
            p = dict(wrapper.named_parameters())[name]
            decayed = p.ndim > 1 and not name.endswith(".bias") and name != "prototypes"
            assert (wd, scale) == (0.05 if decayed else 0.0, 1.0), name
        assert wrapped["decoder.0.weight" if prefix == "backbone." else "head.weight"] == (0.05, 1.0)
    if layer_decay < 1:  # the layer ids really are the backbone's: embeddings 0.65^4, block 0 0.65^3
        assert alone["patch_embed.proj.weight"][1] == pytest.approx(0.65**4)
        assert alone["blocks.0.mlp.fc1.weight"][1] == pytest.approx(0.65**3)
    # the model itself still gives exactly the groups (names, order, members) it gave before
    got = param_groups(backbone, 0.05, layer_decay)
    expected = _groups_before_issue_13(backbone, 0.05, layer_decay)
    assert [(g["group_name"], g["weight_decay"], g["lr_scale"]) for g in got] == [
        (g["group_name"], g["weight_decay"], g["lr_scale"]) for g in expected
    ]
    assert [[id(p) for p in g["params"]] for g in got] == [[id(p) for p in g["params"]] for g in expected]


def _groups_before_issue_13(model, weight_decay, layer_decay):
    """``param_groups`` as it was for a model that carries the metadata itself (the reference)."""
    skip, groups = model.no_weight_decay(), {}
    for name, p in model.named_parameters():
        no_decay = p.ndim <= 1 or name in skip or name.endswith(".bias")
        layer = model.layer_id(name) if layer_decay < 1.0 else 0
        key = f"layer_{layer}_{'no_decay' if no_decay else 'decay'}"
        scale = layer_decay ** (model.num_layers - 1 - layer) if layer_decay < 1.0 else 1.0
        groups.setdefault(key, {"params": [], "weight_decay": 0.0 if no_decay else weight_decay})
        groups[key] |= {"lr_scale": scale, "group_name": key}
        groups[key]["params"].append(p)
    return list(groups.values())


def test_two_backbones_scale_by_their_own_depth():
    """Teacher + student of different depths: each keeps its own layer decay; groups by prefix."""
    small = build_model(model_config("beit_debug_patch4_32", depth=2))
    deep = build_model(model_config("beit_debug_patch4_32", depth=4))
    pair = torch.nn.ModuleDict({"small": small, "deep": deep, "proj": torch.nn.Linear(32, 8)})
    of = _per_param(param_groups(pair, 0.05, 0.5), pair)
    assert (
        of["small.blocks.0.mlp.fc1.weight"]
        == _per_param(param_groups(small, 0.05, 0.5), small)["blocks.0.mlp.fc1.weight"]
    )
    assert of["deep.blocks.0.mlp.fc1.weight"] == (0.05, 0.5**4)
    assert of["small.blocks.0.mlp.fc1.weight"] == (0.05, 0.5**2)
    assert of["proj.weight"] == (0.05, 1.0) and of["proj.bias"] == (0.0, 1.0)
    assert {g["group_name"] for g in param_groups(pair, 0.05, 0.5)} >= {
        "deep.layer_1_decay",
        "rest.layer_0_decay",
    }
