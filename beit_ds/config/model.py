"""Model-side sections: the backbone, its MIM head, and blockwise masking (seed §2-§3, Alg. 1)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from beit_ds.config.validate import choice, expect, fraction, positive_int

COMPILE_MODES = ("none", "branches", "blocks")
"""The values of ``model.compile``."""


@dataclass
class ModelConfig:
    """Backbone hyper-parameters (seed §2.2, §3; App. B for BEiT+).

    ``rel_pos_bias``: ``"shared"`` (one table for all layers, used for pre-training),
    ``"per_layer"`` (one table per block, timm's fine-tuned layout) or ``"none"``.
    ``layer_scale_init``: LayerScale gamma init; ``0`` disables LayerScale.
    ``global_pool``: ``"none"`` (all tokens through the final norm: MIM), ``"avg"`` (mean of
    patch tokens + ``fc_norm``: the seed's fine-tuning choice) or ``"token"`` ([CLS] + ``norm``).
    ``init_trunc``: where the trunc-normal(``init_std``) init is cut: ``"auto"`` as unilm per model
    (MIM model ±1σ, classifier/backbone timm's ±2 absolute), ``"1std"``, ``"2std"`` or ``"2abs"``.
    ``rel_pos_resize``: how loaded relative-position tables are resized to another grid:
    ``"geometric"`` (unilm / timm) or ``"bicubic"`` (``models/convert.py``).
    ``wd_exempt``: which weight matrices ``no_weight_decay()`` exempts besides biases and 1-d
    weights: ``"unilm"`` (``cls_token``, ``pos_embed``: unilm's pre-training and fine-tuning),
    ``"unilm_rel_pos"`` (+ relative-position tables: unilm's ``--disable_weight_decay_on_rel_pos_bias``),
    ``"positional"`` (+ ``mask_token``: the earlier beit_ds rule) or ``"none"`` (no name: unilm's
    segmentation, whose optimizer compares ``cls_token`` with the prefixed ``backbone.cls_token``).
    ``compile``: what runs through ``torch.compile``: ``"none"``, ``"branches"`` (each block's
    attention and MLP branches, drop path eager) or ``"blocks"`` (each whole block as one region,
    DINOv3's regional compilation); ``false`` / ``true`` still read as ``"none"`` / ``"branches"``.
    """

    img_size: int = 224
    patch_size: int = 16
    in_chans: int = 3
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    drop_path_rate: float = 0.1
    layer_scale_init: float = 0.1
    use_abs_pos_emb: bool = False
    rel_pos_bias: str = "per_layer"
    global_pool: str = "none"
    num_classes: int = 0
    norm_eps: float = 1e-6
    init_std: float = 0.02
    init_trunc: str = "auto"
    rel_pos_resize: str = "geometric"
    wd_exempt: str = "unilm"
    grad_checkpointing: bool = False
    compile: str | bool = "none"
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        s = "model"
        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            positive_int(s, key, getattr(self, key))
        positive_int(s, "num_classes", self.num_classes + 1)  # 0 allowed: no head
        expect(
            self.img_size % self.patch_size == 0,
            s,
            "img_size",
            self.img_size,
            f"a multiple of model.patch_size={self.patch_size}",
        )
        expect(
            self.embed_dim % self.num_heads == 0,
            s,
            "embed_dim",
            self.embed_dim,
            f"divisible by model.num_heads={self.num_heads}",
        )
        expect(self.mlp_ratio > 0, s, "mlp_ratio", self.mlp_ratio, "a positive number")
        fraction(s, "drop_path_rate", self.drop_path_rate)
        expect(self.layer_scale_init >= 0, s, "layer_scale_init", self.layer_scale_init, ">= 0")
        choice(s, "rel_pos_bias", self.rel_pos_bias, ("shared", "per_layer", "none"))
        choice(s, "global_pool", self.global_pool, ("none", "avg", "token"))
        choice(s, "attn_impl", self.attn_impl, ("sdpa", "eager"))
        if isinstance(self.compile, bool):  # the key's earlier form, in old recipes and checkpoints
            self.compile = "branches" if self.compile else "none"
        choice(s, "compile", self.compile, COMPILE_MODES)
        choice(s, "init_trunc", self.init_trunc, ("auto", "1std", "2std", "2abs"))
        choice(s, "rel_pos_resize", self.rel_pos_resize, ("geometric", "bicubic"))
        choice(s, "wd_exempt", self.wd_exempt, ("unilm", "unilm_rel_pos", "positional", "none"))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (H, W) = img_size / patch_size."""
        n = self.img_size // self.patch_size
        return (n, n)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    def replace(self, **overrides: Any) -> ModelConfig:
        """A copy with ``overrides`` applied; unknown names raise ``ConfigError``."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            expect(key in known, "model", key, overrides[key], "a known model key")
        return dataclasses.replace(self, **overrides)


@dataclass
class AggregationConfig:
    """BEiT v2's patch aggregation (arXiv 2208.06366 §2.3; unilm ``beit2`` ``--early_layers 9
    --head_layers 2 --shared_lm_head True``): the last layer's [CLS] concatenated with the patch
    tokens after block ``early_layer`` (1-based: 9 of ViT-B's 12) runs through ``depth`` more
    Transformer blocks and the shared final norm and LM head; its MIM loss is added to the last
    layer's. Off (``enabled: false``): BEiT v1's model, unchanged.
    """

    enabled: bool = False
    early_layer: int = 9
    depth: int = 2

    def __post_init__(self) -> None:
        s = "mim.aggregation"
        expect(isinstance(self.enabled, bool), s, "enabled", self.enabled, "true or false")
        positive_int(s, "early_layer", self.early_layer)
        positive_int(s, "depth", self.depth)


@dataclass
class MIMConfig:
    """Masked-image-modeling head and target (seed §2.3; Table 4 ablations).

    ``target``: ``"tokens"`` (visual tokens of the dVAE, cross-entropy) or ``"pixels"`` (MSE on
    the pixels of the patches). ``pixel_target``: ``"raw"`` (the [0, 1] pixels: seed Table 4's
    "recover the raw pixels of masked patches") or ``"normalized"`` (each patch standardised by
    its own mean and variance, MAE's stronger target). ``predict_all``: compute the loss on every
    position instead of only the masked ones (ablation). ``max_masked``: the most patches an image
    has masked (derived from ``masking`` in a pre-training recipe): the LM head then runs on that
    many rows per image, masked patches first, padding rows weighted 0 — the fixed shape of the
    masked-only computation; ``None`` runs it on every position (same loss, more FLOPs).
    ``aggregation``: BEiT v2's patch-aggregation head (``AggregationConfig``; off by default).
    """

    vocab_size: int = 8192
    target: str = "tokens"
    predict_all: bool = False
    pixel_target: str = "raw"
    pixel_norm_eps: float = 1e-6
    max_masked: int | None = None
    aggregation: AggregationConfig = dataclasses.field(default_factory=AggregationConfig)

    def __post_init__(self) -> None:
        positive_int("mim", "vocab_size", self.vocab_size)
        expect(isinstance(self.aggregation, AggregationConfig), "mim", "aggregation", self.aggregation, "a mapping")
        if self.max_masked is not None:
            positive_int("mim", "max_masked", self.max_masked)
        choice("mim", "target", self.target, ("tokens", "pixels"))
        choice("mim", "pixel_target", self.pixel_target, ("raw", "normalized"))


@dataclass
class MaskingConfig:
    """Which patches are masked (seed §2.3, Algorithm 1).

    ``num_masking_patches``: the target count (the seed's 75 of 196); ``None`` derives it as
    ``round(mask_ratio * num_patches)``. Blocks have at least ``min_block_patches`` patches and a
    log-uniform aspect ratio in ``[min_aspect, 1 / min_aspect]``.
    """

    strategy: str = "blockwise"
    mask_ratio: float = 0.4
    num_masking_patches: int | None = 75
    min_block_patches: int = 16
    max_block_patches: int | None = None
    min_aspect: float = 0.3

    def __post_init__(self) -> None:
        s = "masking"
        choice(s, "strategy", self.strategy, ("blockwise", "random"))
        fraction(s, "mask_ratio", self.mask_ratio, lo_open=True)
        if self.num_masking_patches is not None:
            positive_int(s, "num_masking_patches", self.num_masking_patches)
        positive_int(s, "min_block_patches", self.min_block_patches)
        if self.max_block_patches is not None:
            positive_int(s, "max_block_patches", self.max_block_patches)
        ok = 0.0 < self.min_aspect <= 1.0
        expect(ok, s, "min_aspect", self.min_aspect, "a number in (0, 1]")
