"""Typed configuration sections (house style rule 3).

Each section is a frozen-free dataclass validated in ``__post_init__``; a bad value raises
``ConfigError`` with one line naming ``section.key``, the value and what is expected. This
module imports no torch so that recipes can be checked before any process group starts.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Iterable


class ConfigError(ValueError):
    """A configuration value is unknown or invalid; the message is one line."""


def _expect(ok: bool, section: str, key: str, value: Any, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{section}.{key}={value!r}: expected {expected}")


def _choice(section: str, key: str, value: Any, choices: Iterable[str]) -> None:
    choices = tuple(choices)
    _expect(value in choices, section, key, value, "one of " + ", ".join(map(repr, choices)))


def _positive_int(section: str, key: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value > 0
    _expect(ok, section, key, value, "a positive integer")


def _fraction(section: str, key: str, value: Any, lo_open: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0.0 < value < 1.0 if lo_open else 0.0 <= value < 1.0)
    interval = "(0, 1)" if lo_open else "[0, 1)"
    _expect(ok, section, key, value, f"a number in {interval}")


@dataclass
class ModelConfig:
    """Backbone hyper-parameters (seed §2.2, §3; App. B for BEiT+).

    ``rel_pos_bias``: ``"shared"`` (one table for all layers, used for pre-training),
    ``"per_layer"`` (one table per block, timm's fine-tuned layout) or ``"none"``.
    ``layer_scale_init``: LayerScale gamma init; ``0`` disables LayerScale.
    ``global_pool``: ``"none"`` (all tokens through the final norm: MIM), ``"avg"`` (mean of
    patch tokens + ``fc_norm``: the seed's fine-tuning choice) or ``"token"`` ([CLS] + ``norm``).
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
    grad_checkpointing: bool = False
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        s = "model"
        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            _positive_int(s, key, getattr(self, key))
        _positive_int(s, "num_classes", self.num_classes + 1)  # 0 allowed: no head
        _expect(
            self.img_size % self.patch_size == 0,
            s, "img_size", self.img_size, f"a multiple of model.patch_size={self.patch_size}",
        )
        _expect(
            self.embed_dim % self.num_heads == 0,
            s, "embed_dim", self.embed_dim, f"divisible by model.num_heads={self.num_heads}",
        )
        _expect(self.mlp_ratio > 0, s, "mlp_ratio", self.mlp_ratio, "a positive number")
        _fraction(s, "drop_path_rate", self.drop_path_rate)
        _expect(self.layer_scale_init >= 0, s, "layer_scale_init", self.layer_scale_init, ">= 0")
        _choice(s, "rel_pos_bias", self.rel_pos_bias, ("shared", "per_layer", "none"))
        _choice(s, "global_pool", self.global_pool, ("none", "avg", "token"))
        _choice(s, "attn_impl", self.attn_impl, ("sdpa", "eager"))

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid (H, W) = img_size / patch_size."""
        n = self.img_size // self.patch_size
        return (n, n)

    @property
    def num_patches(self) -> int:
        h, w = self.grid_size
        return h * w

    def replace(self, **overrides: Any) -> "ModelConfig":
        """A copy with ``overrides`` applied; unknown names raise ``ConfigError``."""
        known = {f.name for f in dataclasses.fields(self)}
        for key in overrides:
            _expect(key in known, "model", key, overrides[key], "a known model key")
        return dataclasses.replace(self, **overrides)


@dataclass
class MIMConfig:
    """Masked-image-modeling head and target (seed §2.3; Table 4 ablations).

    ``target``: ``"tokens"`` (visual tokens of the dVAE, cross-entropy) or ``"pixels"``
    (per-patch normalised pixels, MSE). ``predict_all``: compute the loss on every position
    instead of only the masked ones (ablation).
    """

    vocab_size: int = 8192
    target: str = "tokens"
    predict_all: bool = False
    pixel_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _positive_int("mim", "vocab_size", self.vocab_size)
        _choice("mim", "target", self.target, ("tokens", "pixels"))


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
        _choice(s, "strategy", self.strategy, ("blockwise", "random"))
        _fraction(s, "mask_ratio", self.mask_ratio, lo_open=True)
        if self.num_masking_patches is not None:
            _positive_int(s, "num_masking_patches", self.num_masking_patches)
        _positive_int(s, "min_block_patches", self.min_block_patches)
        if self.max_block_patches is not None:
            _positive_int(s, "max_block_patches", self.max_block_patches)
        ok = 0.0 < self.min_aspect <= 1.0
        _expect(ok, s, "min_aspect", self.min_aspect, "a number in (0, 1]")
