"""State-dict formats: export our BEiT to timm / Hugging Face and import theirs (house style rule 6).

Layouts, all for the same network (seed §2.1-2.2, App. B):

* **ours = unilm = timm.** Our keys are the ones unilm created and timm kept (``cls_token``,
  ``patch_embed.proj``, ``rel_pos_bias.*``, ``blocks.{i}.attn.qkv`` with ``q_bias``/``v_bias``,
  ``gamma_1/2``, ``norm``/``fc_norm``, ``head``; pre-training adds ``mask_token``/``lm_head``, BEiT
  v2's aggregation head ``cls_pt_layers.{i}.*``, ``cls_pt_norm``/``cls_pt_lm_head`` unshared). An
  unilm pre-training or fine-tuning checkpoint (``torch.load(path)["model"]``) is therefore
  already our layout; it only carries the derivable ``*.relative_position_index`` buffers, which
  ``from_timm_state_dict`` drops (so it is the unilm importer too). timm 1.0.31 keeps those buffers
  non-persistent as we do, so a backbone export differs from ours only by the MIM-only keys.
* **Hugging Face ``BeitModel``**, two spellings of one layout. ``"module"``: the names of the
  ``transformers`` 5.x modules (``layers.{i}.attention.q_proj``, ``shared_position_bias``, …),
  which ``BeitModel.load_state_dict`` accepts. ``"hub"``: the names in Hub files and in
  ``save_pretrained`` output (``encoder.layer.{i}.attention.attention.query``, …), which
  ``from_pretrained`` renames on load (and the module names of ``transformers`` 4.x). q/k/v are separate Linears (``k`` has no bias) where we keep
  one fused ``qkv``; ``BeitForImageClassification`` prefixes the backbone with ``beit.`` and names
  the classifier ``classifier``.

One key table (``_RULES``) drives every direction; nothing here imports timm or transformers.
Exported tensors share storage with the model, except the q/k/v thirds (copies).
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from beit_ds.config import ModelConfig
from beit_ds.config.presets import PRESETS
from beit_ds.models.beit import Beit
from beit_ds.models.resize import (  # noqa: F401  (re-exported: the conversion API)
    REL_POS_RESIZE,
    resize_pos_embed,
    resize_rel_pos_table,
)

Tensors = dict[str, torch.Tensor]
HFLayout = Literal["module", "hub"]

# Key prefixes only the masked-image-modeling model has; a backbone export leaves them out.
MIM_ONLY = ("mask_token", "lm_head.", "cls_pt_")
# Buffers rebuilt from the patch grid (persistent in unilm and old timm / HF files): dropped on import.
DERIVED_SUFFIXES = ("relative_position_index", ".k_bias")
# BEiT sizes timm registers (timm.models.beit); other sizes use the first with overridden kwargs.
TIMM_BEIT_MODELS = (
    "beit_base_patch16_224",
    "beit_base_patch16_384",
    "beit_large_patch16_224",
    "beit_large_patch16_384",
    "beit_large_patch16_512",
)
TIMM_BEITV2_MODELS = ("beitv2_base_patch16_224", "beitv2_large_patch16_224")  # the same class, ImageNet mean/std
TIMM_NORM_EPS = 1e-6  # eps of timm.layers.LayerNorm


@dataclass(frozen=True)
class KeyRule:
    """One parameter spelled in each layout (``{i}``: block index); ``required`` in every backbone.

    A column with three names holds q, k, v: dim-0 thirds of our fused ``qkv`` ``[3D, D]``.
    An empty column: that layout has no such parameter (Hugging Face has no MIM LM head).
    """

    ours: tuple[str, ...]
    hf: tuple[str, ...]
    hub: tuple[str, ...]
    required: bool = False

    def names(self, column: str, index: int) -> tuple[str, ...]:
        """The keys of this rule in ``column`` for block ``index``."""
        return tuple(t.replace("{i}", str(index)) for t in getattr(self, column))


def _rule(
    ours: str, hf: str | tuple[str, ...], hub: str | tuple[str, ...] = "=", req: bool = False
) -> KeyRule:
    as_names = lambda n: (n,) if isinstance(n, str) else n
    return KeyRule((ours,), as_names(hf), as_names(hf if hub == "=" else hub), req)


_QKV = tuple(f"attention.{n}_proj.weight" for n in "qkv")
_QKV_HUB = tuple(f"attention.attention.{n}.weight" for n in ("query", "key", "value"))
# Per block: ours under "blocks.{i}.", Hugging Face under "layers.{i}." / hub "encoder.layer.{i}.".
_BLOCK_RULES = [_rule(f"norm1.{p}", f"layernorm_before.{p}", req=True) for p in ("weight", "bias")] + [
    _rule("attn.qkv.weight", _QKV, _QKV_HUB, req=True),
    _rule("attn.q_bias", "attention.q_proj.bias", "attention.attention.query.bias"),
    _rule("attn.v_bias", "attention.v_proj.bias", "attention.attention.value.bias"),
    _rule(
        "attn.relative_position_bias_table",
        "relative_position_bias.relative_position_bias_table",
        "attention.attention.relative_position_bias.relative_position_bias_table",
    ),
    *(
        _rule(f"attn.proj.{p}", f"attention.o_proj.{p}", f"attention.output.dense.{p}", True)
        for p in ("weight", "bias")
    ),
    *(_rule(f"norm2.{p}", f"layernorm_after.{p}", req=True) for p in ("weight", "bias")),
    *(_rule(f"mlp.fc1.{p}", f"mlp.fc1.{p}", f"intermediate.dense.{p}", True) for p in ("weight", "bias")),
    *(_rule(f"mlp.fc2.{p}", f"mlp.fc2.{p}", f"output.dense.{p}", True) for p in ("weight", "bias")),
    _rule("gamma_1", "lambda_1"),
    _rule("gamma_2", "lambda_2"),
]
_RULES: list[KeyRule] = [
    _rule("cls_token", "embeddings.cls_token", req=True),
    _rule("mask_token", "embeddings.mask_token"),
    _rule("pos_embed", "embeddings.position_embeddings"),
    _rule("patch_embed.proj.weight", "embeddings.patch_embeddings.projection.weight", req=True),
    _rule("patch_embed.proj.bias", "embeddings.patch_embeddings.projection.bias", req=True),
    _rule(
        "rel_pos_bias.relative_position_bias_table",
        "shared_position_bias.relative_position_bias_table",
        "encoder.relative_position_bias.relative_position_bias_table",
    ),
    *(
        KeyRule(
            tuple("blocks.{i}." + n for n in r.ours),
            tuple("layers.{i}." + n for n in r.hf),
            tuple("encoder.layer.{i}." + n for n in r.hub),
            r.required,
        )
        for r in _BLOCK_RULES
    ),
    *(_rule(f"norm.{p}", f"layernorm.{p}") for p in ("weight", "bias")),
    *(_rule(f"fc_norm.{p}", f"pooler.layernorm.{p}") for p in ("weight", "bias")),
    # BeitForImageClassification: the classifier sits outside its "beit." backbone prefix.
    *(_rule(f"head.{p}", f"classifier.{p}") for p in ("weight", "bias")),
    *(_rule(f"lm_head.{p}", ()) for p in ("weight", "bias")),
    *(KeyRule(tuple("cls_pt_layers.{i}." + n for n in r.ours), (), ()) for r in _BLOCK_RULES),  # BEiT v2
    *(_rule(f"cls_pt_{m}.{p}", ()) for m in ("norm", "lm_head") for p in ("weight", "bias")),
]


@functools.cache
def _patterns(column: str) -> list[tuple[re.Pattern[str], KeyRule, int]]:
    """``(regex, rule, part)`` for every name in ``column``; ``{i}`` captures the block index."""
    out = []
    for rule in _RULES:
        for part, template in enumerate(getattr(rule, column)):
            regex = re.escape(template).replace(re.escape("{i}"), r"(\d+)")
            out.append((re.compile(regex), rule, part))
    return out


def _match(key: str, columns: tuple[str, ...]) -> tuple[str, KeyRule, int, int] | None:
    """Column, rule, block index (-1 outside blocks) and part that ``key`` spells, if any."""
    for column in columns:
        for regex, rule, part in _patterns(column):
            m = regex.fullmatch(key)
            if m:
                return column, rule, int(m.group(1)) if m.groups() else -1, part
    return None


_LAYOUT_NAMES = {
    "ours": "beit_ds/timm/unilm",
    "hf": "Hugging Face (module names)",
    "hub": "Hugging Face (hub names)",
}
_Parts = dict[tuple[KeyRule, int], dict[int, torch.Tensor]]


def _group(sd: Tensors, sources: tuple[str, ...], who: str) -> _Parts:
    """Tensors of ``sd`` by (rule, block index) and part; a one-line ``ValueError`` names keys
    no rule knows and required keys that are absent (spelled in the layout ``sd`` mostly uses)."""
    parts: _Parts = {}
    unexpected: list[str] = []
    seen: Counter[str] = Counter()
    for key, value in sd.items():
        if key.endswith(DERIVED_SUFFIXES):
            continue
        found = _match(key, sources)
        if found is None:
            unexpected.append(key)
            continue
        column, rule, index, part = found
        seen[column] += 1
        parts.setdefault((rule, index), {})[part] = value
    column = seen.most_common(1)[0][0] if seen else sources[0]
    depth = max(1, 1 + max((i for _, i in parts), default=-1))
    expected = {(r, i) for r in _RULES if r.required for i in (range(depth) if "{i}" in r.ours[0] else [-1])}
    missing = [
        name
        for rule, index in sorted(expected | set(parts), key=lambda ri: (ri[1], _RULES.index(ri[0])))
        for part, name in enumerate(rule.names(column, index))
        if part not in parts.get((rule, index), {})
    ]
    if missing or unexpected:
        layout = " or ".join(_LAYOUT_NAMES[c] for c in sources)
        raise ValueError(f"{who}: not a {layout} BEiT state dict: {key_report(missing, unexpected)}")
    return parts


def _convert(sd: Tensors, sources: tuple[str, ...], target: str, who: str) -> Tensors:
    """``sd`` renamed from the ``sources`` columns to ``target``, q/k/v fused or split as needed."""
    out: Tensors = {}
    for (rule, index), got in _group(sd, sources, who).items():
        names = rule.names(target, index)
        if not names:
            raise ValueError(f"{who}: {rule.names('ours', index)[0]} has no counterpart in the target layout")
        tensors = [got[p] for p in sorted(got)]
        if len(tensors) == len(names):
            out.update(zip(names, tensors, strict=True))
        else:  # q, k, v <-> qkv; cloned so each output tensor owns its storage (safetensors needs it)
            fused = torch.cat(tensors) if len(tensors) > 1 else tensors[0]
            out.update(zip(names, (t.clone() for t in fused.chunk(len(names))), strict=True))
    return out


def key_report(missing: list[str], unexpected: list[str], first: int = 4) -> str:
    def few(keys: list[str]) -> str:
        more = f", … ({len(keys) - first} more)" if len(keys) > first else ""
        return ", ".join(keys[:first]) + more

    parts = [f"missing {len(missing)} keys ({few(missing)})"] if missing else []
    parts += [f"unexpected {len(unexpected)} keys ({few(unexpected)})"] if unexpected else []
    return "; ".join(parts)


def backbone_state_dict(sd: Tensors) -> Tensors:
    """``sd`` without the MIM-only keys (``mask_token``, ``lm_head.*``, ``cls_pt_*``)."""
    return {k: v for k, v in sd.items() if not k.startswith(MIM_ONLY)}


# --- timm -----------------------------------------------------------------------------------
@dataclass
class TimmExport:
    """``timm.create_model(model_name, pretrained=False, **kwargs).load_state_dict(state_dict)``."""

    model_name: str
    kwargs: dict[str, Any]
    state_dict: Tensors


def timm_kwargs(cfg: ModelConfig) -> dict[str, Any]:
    """``timm.models.beit.Beit`` arguments that build the architecture of ``cfg``.

    Our ``global_pool="none"`` (MIM backbone: every token through ``norm``) is timm's ``"token"``,
    which keeps ``norm`` and pools [CLS] in ``forward_head``.
    """
    kwargs: dict[str, Any] = dict(
        img_size=cfg.img_size,
        patch_size=cfg.patch_size,
        in_chans=cfg.in_chans,
        embed_dim=cfg.embed_dim,
        depth=cfg.depth,
        num_heads=cfg.num_heads,
        mlp_ratio=cfg.mlp_ratio,
        qkv_bias=cfg.qkv_bias,
        use_abs_pos_emb=cfg.use_abs_pos_emb,
        use_rel_pos_bias=cfg.rel_pos_bias == "per_layer",
        use_shared_rel_pos_bias=cfg.rel_pos_bias == "shared",
        # 0 turns LayerScale off; None would not: create_model drops None kwargs, keeping the preset's value
        init_values=cfg.layer_scale_init,
        global_pool="avg" if cfg.global_pool == "avg" else "token",
        num_classes=cfg.num_classes,
        drop_path_rate=cfg.drop_path_rate,
    )
    if cfg.norm_eps != TIMM_NORM_EPS:
        kwargs["norm_layer"] = functools.partial(nn.LayerNorm, eps=cfg.norm_eps)
    return kwargs


def timm_model_name(cfg: ModelConfig, v2: bool = False) -> str:
    """The timm BEiT whose size matches ``cfg`` (image, patch, width, depth, heads), else BEiT-B/16;
    ``v2``: timm's ``beitv2_*`` name of that size, else ``beitv2_base_patch16_224``."""
    size = lambda c: (c.img_size, c.patch_size, c.embed_dim, c.depth, c.num_heads)
    name = next((n for n in TIMM_BEIT_MODELS if size(PRESETS[n]) == size(cfg)), TIMM_BEIT_MODELS[0])
    return next((n for n in TIMM_BEITV2_MODELS if n == name.replace("beit_", "beitv2_")), TIMM_BEITV2_MODELS[0]) if v2 else name


def to_timm(model: Beit, v2: bool = False) -> TimmExport:
    """Export the backbone (and classifier, if any) of ``model`` for ``timm.create_model`` (``v2``: named
    as timm's ``beitv2_*``, whose pre-trained config normalises by ImageNet's mean and std)."""
    sd = _convert(backbone_state_dict(model.state_dict()), ("ours",), "ours", "to_timm")
    return TimmExport(timm_model_name(model.cfg, v2), timm_kwargs(model.cfg), sd)


def from_timm_state_dict(sd: Tensors) -> Tensors:
    """A timm (or unilm) BEiT state dict in our layout; derivable index buffers are dropped."""
    return _convert(sd, ("ours",), "ours", "from_timm_state_dict")


# --- Hugging Face -------------------------------------------------------------------------------
@dataclass
class HFExport:
    """``BeitModel(BeitConfig(**config)).load_state_dict(state_dict)`` (``layout="module"``;
    ``"hub"`` names are for files that ``BeitModel.from_pretrained`` reads).

    ``head``: ``classifier.*`` of ``BeitForImageClassification`` (empty without a classifier);
    ``for_image_classification()`` merges both for that class.
    """

    config: dict[str, Any]
    state_dict: Tensors
    head: Tensors

    def for_image_classification(self) -> Tensors:
        """The ``BeitForImageClassification`` state dict: ``beit.``-prefixed backbone + ``head``."""
        return {"beit." + k: v for k, v in self.state_dict.items()} | self.head


def hf_config(cfg: ModelConfig) -> dict[str, Any]:
    """``transformers.BeitConfig`` keyword arguments for the architecture of ``cfg``.

    ``use_mean_pooling`` is our ``global_pool="avg"`` (``fc_norm`` = ``pooler.layernorm``);
    otherwise ``layernorm`` normalises all tokens and the pooler takes [CLS].
    """
    config: dict[str, Any] = dict(
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        num_channels=cfg.in_chans,
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        hidden_act="gelu",  # exact (erf) GELU, as nn.GELU()
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=cfg.drop_path_rate,
        initializer_range=cfg.init_std,
        layer_norm_eps=cfg.norm_eps,
        use_mask_token=False,
        use_absolute_position_embeddings=cfg.use_abs_pos_emb,
        use_relative_position_bias=cfg.rel_pos_bias == "per_layer",
        use_shared_relative_position_bias=cfg.rel_pos_bias == "shared",
        layer_scale_init_value=cfg.layer_scale_init,
        use_mean_pooling=cfg.global_pool == "avg",
    )
    if cfg.num_classes:
        config["num_labels"] = cfg.num_classes
    return config


def to_hf(model: Beit, layout: HFLayout = "module") -> HFExport:
    """Export ``model`` to Hugging Face ``BeitModel`` (``layout``: see the module docstring).

    Hugging Face's q and v projections always carry a bias: a model without ``q_bias`` exports zeros.
    """
    if layout not in ("module", "hub"):
        raise ValueError(f"to_hf layout={layout!r}: expected 'module' or 'hub'")
    sd = backbone_state_dict(model.state_dict())
    if not model.cfg.qkv_bias:
        zeros = model.cls_token.new_zeros(model.cfg.embed_dim)
        for i in range(model.cfg.depth):
            sd |= {f"blocks.{i}.attn.q_bias": zeros, f"blocks.{i}.attn.v_bias": zeros.clone()}
    out = _convert(sd, ("ours",), "hf" if layout == "module" else "hub", "to_hf")
    head = {k: out.pop(k) for k in [k for k in out if k.startswith("classifier.")]}
    return HFExport(hf_config(model.cfg), out, head)


def from_hf_state_dict(sd: Tensors) -> Tensors:
    """A Hugging Face ``BeitModel`` / ``BeitForImageClassification`` state dict (module or hub
    names, with or without the ``beit.`` prefix) in our layout; q/k/v are fused into ``qkv``."""
    sd = {k.removeprefix("beit."): v for k, v in sd.items()}
    return _convert(sd, ("hf", "hub"), "ours", "from_hf_state_dict")


SHARED_TABLE = "rel_pos_bias.relative_position_bias_table"


def shared_to_per_layer(sd: Tensors, depth: int) -> Tensors:
    """``sd`` with the shared bias table (BEiT+ pre-training) copied into each of ``depth`` blocks'
    ``blocks.{i}.attn.relative_position_bias_table`` (unilm's fine-tuning initialisation)."""
    if SHARED_TABLE not in sd:
        return sd
    out = {k: v for k, v in sd.items() if k != SHARED_TABLE}
    out |= {f"blocks.{i}.attn.relative_position_bias_table": sd[SHARED_TABLE].clone() for i in range(depth)}
    return out


def adapt_positions(sd: Tensors, cfg: ModelConfig) -> Tensors:
    """``sd`` (our layout) for ``cfg``: a shared bias table becomes per-layer tables when
    ``cfg.rel_pos_bias == "per_layer"``; position embeddings and bias tables are resized to
    ``cfg.grid_size`` (tables by ``cfg.rel_pos_resize``). Another patch size is a one-line ``ValueError``."""
    proj = sd.get("patch_embed.proj.weight")
    if proj is not None and tuple(proj.shape[-2:]) != (cfg.patch_size, cfg.patch_size):
        raise ValueError(
            f"the weights have {proj.shape[-1]}x{proj.shape[-2]} patches: expected"
            f" model.patch_size={cfg.patch_size} (resolution changes keep the patch size)"
        )
    if cfg.rel_pos_bias == "per_layer":
        sd = shared_to_per_layer(sd, cfg.depth)
    out = {}
    for key, value in sd.items():
        name = key.rsplit(".", 1)[-1]
        if name == "pos_embed":
            value = resize_pos_embed(value, cfg.grid_size)
        elif name == "relative_position_bias_table":
            value = resize_rel_pos_table(value, cfg.grid_size, cfg.rel_pos_resize)
        out[key] = value
    return out
