"""Typed configuration sections (house style rule 3).

Each section is a frozen-free dataclass validated in ``__post_init__``; a bad value raises
``ConfigError`` with one line naming ``section.key``, the value and what is expected. This
module imports no torch so that recipes can be checked before any process group starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


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
    ``init_trunc``: where the trunc-normal(``init_std``) init is cut: ``"auto"`` as unilm per model
    (MIM model ±1σ, classifier/backbone timm's ±2 absolute), ``"1std"``, ``"2std"`` or ``"2abs"``.
    ``rel_pos_resize``: how loaded relative-position tables are resized to another grid:
    ``"geometric"`` (unilm / timm) or ``"bicubic"`` (``models/convert.py``).
    ``wd_exempt``: which weight matrices ``no_weight_decay()`` exempts besides biases and 1-d
    weights: ``"unilm"`` (``cls_token``, ``pos_embed``: unilm's pre-training and fine-tuning),
    ``"unilm_rel_pos"`` (+ relative-position tables: unilm's ``--disable_weight_decay_on_rel_pos_bias``)
    or ``"positional"`` (+ ``mask_token``: the earlier beit_ds rule).
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
    compile: bool = False
    attn_impl: str = "sdpa"

    def __post_init__(self) -> None:
        s = "model"
        for key in ("img_size", "patch_size", "in_chans", "embed_dim", "depth", "num_heads"):
            _positive_int(s, key, getattr(self, key))
        _positive_int(s, "num_classes", self.num_classes + 1)  # 0 allowed: no head
        _expect(
            self.img_size % self.patch_size == 0,
            s,
            "img_size",
            self.img_size,
            f"a multiple of model.patch_size={self.patch_size}",
        )
        _expect(
            self.embed_dim % self.num_heads == 0,
            s,
            "embed_dim",
            self.embed_dim,
            f"divisible by model.num_heads={self.num_heads}",
        )
        _expect(self.mlp_ratio > 0, s, "mlp_ratio", self.mlp_ratio, "a positive number")
        _fraction(s, "drop_path_rate", self.drop_path_rate)
        _expect(self.layer_scale_init >= 0, s, "layer_scale_init", self.layer_scale_init, ">= 0")
        _choice(s, "rel_pos_bias", self.rel_pos_bias, ("shared", "per_layer", "none"))
        _choice(s, "global_pool", self.global_pool, ("none", "avg", "token"))
        _choice(s, "attn_impl", self.attn_impl, ("sdpa", "eager"))
        _choice(s, "init_trunc", self.init_trunc, ("auto", "1std", "2std", "2abs"))
        _choice(s, "rel_pos_resize", self.rel_pos_resize, ("geometric", "bicubic"))
        _choice(s, "wd_exempt", self.wd_exempt, ("unilm", "unilm_rel_pos", "positional"))

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
            _expect(key in known, "model", key, overrides[key], "a known model key")
        return dataclasses.replace(self, **overrides)


@dataclass
class MIMConfig:
    """Masked-image-modeling head and target (seed §2.3; Table 4 ablations).

    ``target``: ``"tokens"`` (visual tokens of the dVAE, cross-entropy) or ``"pixels"`` (MSE on
    the pixels of the patches). ``pixel_target``: ``"raw"`` (the [0, 1] pixels: seed Table 4's
    "recover the raw pixels of masked patches") or ``"normalized"`` (each patch standardised by
    its own mean and variance, MAE's stronger target). ``predict_all``: compute the loss on every
    position instead of only the masked ones (ablation).
    """

    vocab_size: int = 8192
    target: str = "tokens"
    predict_all: bool = False
    pixel_target: str = "raw"
    pixel_norm_eps: float = 1e-6

    def __post_init__(self) -> None:
        _positive_int("mim", "vocab_size", self.vocab_size)
        _choice("mim", "target", self.target, ("tokens", "pixels"))
        _choice("mim", "pixel_target", self.pixel_target, ("raw", "normalized"))


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


# ---- data pipeline (issue 4; used by beit_ds/data/) -------------------------------------------------

DATA_SOURCES = ("demo", "folder", "filelist", "shards", "archive")
INTERPOLATIONS = ("bilinear", "bicubic", "lanczos")
TOKENIZER_VIEWS = ("dalle", "raw")


@dataclass
class TransformConfig:
    """Augmentation (seed §2.5, App. G): one random-resized crop gives two views.

    The crop covers a fraction in ``scale`` of the image area with an aspect ratio in ``ratio``; the
    patch view is ``input_size``² (``interpolation``), normalised by ``mean`` / ``std``; the tokenizer
    view is ``second_input_size``² (``second_interpolation``), prepared as ``tokenizer_view`` says
    (``"dalle"``: DALL-E ``map_pixels``, ``"raw"``: [0, 1] pixels). Both get the same horizontal flip
    (probability ``hflip``) and brightness / contrast / saturation jitter of strength ``color_jitter``
    (0 disables). Evaluation resizes so that a centre crop of ``crop_pct`` of the shorter side becomes
    ``input_size``². ``fast_decode``: JPEGs may decode at 1/2, 1/4 or 1/8 scale when the crop stays at
    least as large as the output (PIL's draft mode: faster, but not unilm's full decode — a crop of
    ≥ 2× the output comes out ≈ 34 dB PSNR against a full decode; ``false`` always decodes fully).
    """

    input_size: int = 224
    second_input_size: int = 112
    interpolation: str = "bicubic"
    second_interpolation: str = "lanczos"
    tokenizer_view: str = "dalle"
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (0.75, 1.3333333333333333)
    hflip: float = 0.5
    color_jitter: float = 0.4
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    crop_pct: float = 0.875
    fast_decode: bool = True

    def __post_init__(self) -> None:
        s = "data.transform"
        _positive_int(s, "input_size", self.input_size)
        _positive_int(s, "second_input_size", self.second_input_size)
        _choice(s, "interpolation", self.interpolation, INTERPOLATIONS)
        _choice(s, "second_interpolation", self.second_interpolation, INTERPOLATIONS)
        _choice(s, "tokenizer_view", self.tokenizer_view, TOKENIZER_VIEWS)
        lo, hi = _pair(s, "scale", self.scale)
        _expect(0 < lo <= hi <= 1, s, "scale", self.scale, "two numbers 0 < lo <= hi <= 1")
        lo, hi = _pair(s, "ratio", self.ratio)
        _expect(0 < lo <= hi, s, "ratio", self.ratio, "two numbers 0 < lo <= hi")
        _expect(0 <= self.hflip <= 1, s, "hflip", self.hflip, "a probability in [0, 1]")
        _fraction(s, "color_jitter", self.color_jitter)
        _expect(len(self.mean) == 3, s, "mean", self.mean, "three numbers (R, G, B)")
        ok = len(self.std) == 3 and all(v > 0 for v in self.std)
        _expect(ok, s, "std", self.std, "three positive numbers (R, G, B)")
        _expect(0 < self.crop_pct <= 1, s, "crop_pct", self.crop_pct, "a number in (0, 1]")


def _pair(section: str, key: str, value: Any) -> tuple[float, float]:
    ok = isinstance(value, (list, tuple)) and len(value) == 2
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    _expect(ok, section, key, value, "a list of two numbers")
    return float(value[0]), float(value[1])


def _non_negative_int(section: str, key: str, value: Any) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    _expect(ok, section, key, value, "an integer >= 0")


@dataclass
class DataConfig:
    """Where images come from and how they are read (issue 4; formats in ``beit_ds/data``).

    ``source``: ``"demo"`` (scikit-image's bundled photographs; no ``path``), ``"folder"`` (images
    under ``path``; class = first sub-folder when every image sits in one), ``"filelist"`` (``path``
    is a text file of ``image[,label]`` lines relative to its folder), ``"shards"`` (a folder of
    WebDataset tar shards, see ``launch/make_shards.py``) or ``"archive"`` (a ``.tar`` read in place,
    a ``.tar.gz`` extracted once into ``cache_dir``). ``subdir``: a folder inside ``path`` or the
    archive. ``eval_path`` / ``eval_subdir``: the fine-tuning evaluation set (``""``: same as
    training). ``repeats``: every image is visited this many times per epoch. Undecodable images are
    skipped, counted and reported; more than ``max_skip_fraction`` of the distinct files read being
    bad is an error (1 disables). Images over ``max_image_pixels`` are skipped (decompression
    bombs). ``check_files``: how many paths of a file list are checked up front. ``timeout``:
    seconds the loader workers may deliver no batch before a one-line error (a read that hangs);
    0 waits forever.
    """

    source: str = "demo"
    path: str = ""
    subdir: str = ""
    eval_path: str = ""
    eval_subdir: str = ""
    repeats: int = 1
    num_workers: int = 8
    pin_memory: bool = True
    prefetch_factor: int = 2
    cache_dir: str = ""
    max_image_pixels: int = 89_478_485
    max_skip_fraction: float = 0.01
    check_files: int = 256
    timeout: float = 300.0
    transform: TransformConfig = dataclasses.field(default_factory=TransformConfig)

    def __post_init__(self) -> None:
        s = "data"
        _choice(s, "source", self.source, DATA_SOURCES)
        expected = f"a path for data.source={self.source!r}"
        _expect(bool(self.path) or self.source == "demo", s, "path", self.path, expected)
        _positive_int(s, "repeats", self.repeats)
        _non_negative_int(s, "num_workers", self.num_workers)  # 0: load in the training process
        _positive_int(s, "prefetch_factor", self.prefetch_factor)
        _positive_int(s, "max_image_pixels", self.max_image_pixels)
        ok = isinstance(self.max_skip_fraction, (int, float)) and 0 <= self.max_skip_fraction <= 1
        _expect(ok, s, "max_skip_fraction", self.max_skip_fraction, "a number in [0, 1]")
        _non_negative_int(s, "check_files", self.check_files)  # 0: no up-front check
        _non_negative_number(s, "timeout", self.timeout)  # 0: wait for the workers forever
        _expect(isinstance(self.transform, TransformConfig), s, "transform", self.transform, "a mapping")


# ---- end of data pipeline block ----------------------------------------------------------------------


# ---- visual tokenizers (issue 5; used by beit_ds/tokenizers/) ----------------------------------------

TOKENIZER_NAMES = ("dalle", "dvae")
TOKENIZER_DTYPES = ("auto", "float32", "bfloat16", "float16")


def _non_negative_number(section: str, key: str, value: Any, integer: bool = False) -> None:
    kinds = (int,) if integer else (int, float)
    ok = isinstance(value, kinds) and not isinstance(value, bool) and value >= 0
    _expect(ok, section, key, value, "an integer >= 0" if integer else "a number >= 0")


@dataclass
class DVAEConfig:
    """Our trainable discrete VAE (seed App. C; DALL-E's recipe, Ramesh et al. 2021 §2.1).

    Architecture: a conv encoder downsampling by ``downsample`` (a power of two; 8 turns a 112²
    view into 14×14 tokens) with ``hidden_dim`` channels and ``num_res_blocks`` residual blocks
    at the token resolution, logits over ``codebook_size`` codes, a ``codebook_dim``-wide
    codebook, and a mirrored decoder. Training: Gumbel-softmax temperature annealed (cosine) from
    ``temperature_start`` to ``temperature_end`` over ``temperature_steps``; the KL to the
    uniform prior (weight ``kl_weight``) and the codebook-usage term against collapse (weight
    ``diversity_weight``: 1 - entropy of the batch's mean code distribution / log K) are both
    warmed up (cosine) from 0 over ``prior_warmup_steps``. The weights are relative to a
    per-pixel MSE in [0, 1] units (DALL-E's β = 6.6 is not: its reconstruction term is a sum
    over pixels). ``kl_weight`` defaults to 0: on the demo photographs (``bench/dvae_demo.py``,
    600 steps) 0.001 and 0.01 only worsened the reconstruction (MSE 0.0062 -> 0.0067 -> 0.0136)
    and the code perplexity (372 -> 308 -> 103 of 512 codes).
    """

    codebook_size: int = 8192
    codebook_dim: int = 256
    hidden_dim: int = 64
    num_res_blocks: int = 1
    downsample: int = 8
    in_channels: int = 3
    temperature_start: float = 1.0
    temperature_end: float = 0.0625
    temperature_steps: int = 150_000
    kl_weight: float = 0.0
    prior_warmup_steps: int = 5000
    diversity_weight: float = 0.1

    def __post_init__(self) -> None:
        s = "tokenizer.dvae"
        for key in ("codebook_size", "codebook_dim", "hidden_dim", "in_channels", "downsample"):
            _positive_int(s, key, getattr(self, key))
        _expect(self.codebook_size >= 2, s, "codebook_size", self.codebook_size, "an integer >= 2")
        d = self.downsample
        _expect(d & (d - 1) == 0, s, "downsample", d, "a power of two (1, 2, 4, 8, 16, ...)")
        _non_negative_number(s, "num_res_blocks", self.num_res_blocks, integer=True)
        for key in ("temperature_start", "temperature_end"):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            _expect(ok, s, key, value, "a positive number")
        _positive_int(s, "temperature_steps", self.temperature_steps)
        _non_negative_number(s, "kl_weight", self.kl_weight)
        _non_negative_number(s, "prior_warmup_steps", self.prior_warmup_steps, integer=True)  # 0: none
        _non_negative_number(s, "diversity_weight", self.diversity_weight)


@dataclass
class TokenizerConfig:
    """Which visual tokenizer gives the pre-training targets (seed §2.1, App. C).

    ``name``: ``"dalle"`` (OpenAI's dVAE: ``path`` is ``encoder.pkl`` or a state dict of it,
    ``decoder_path`` optionally ``decoder.pkl`` for reconstructions) or ``"dvae"`` (ours:
    ``path`` is a ``.safetensors`` file saved by ``beit_ds.tokenizers.save_dvae``, which holds
    the decoder too; ``dvae`` configures training one). ``image_size``: the tokenizer view
    (112 for 224² images with 16² patches and downsampling 8). ``dtype``: inference precision,
    ``"float32"`` by default (unilm tokenizes outside autocast; the tokenizer view is never cast to
    the run's precision); ``"auto"`` is the run's (bf16 / fp16 under DeepSpeed's half precision),
    cheaper but it changes targets (``bench/tokenizer.py`` reports agreement and img/s). ``compile``:
    ``torch.compile`` the DALL-E encoder with weight freezing (inference only; on the 2-core CPU
    1.35× the reference's img/s against 1.19× eager, ``bench/tokenizer.py``).
    """

    name: str = "dalle"
    path: str = ""
    decoder_path: str = ""
    image_size: int = 112
    dtype: str = "float32"
    compile: bool = False
    dvae: DVAEConfig = dataclasses.field(default_factory=DVAEConfig)

    def __post_init__(self) -> None:
        s = "tokenizer"
        _choice(s, "name", self.name, TOKENIZER_NAMES)
        _expect(isinstance(self.path, str), s, "path", self.path, "a file path string")
        ok = isinstance(self.decoder_path, str) and (self.name == "dalle" or not self.decoder_path)
        _expect(ok, s, "decoder_path", self.decoder_path, "empty unless tokenizer.name='dalle'")
        _positive_int(s, "image_size", self.image_size)
        _choice(s, "dtype", self.dtype, TOKENIZER_DTYPES)
        _expect(self.compile in (False, self.name == "dalle"), s, "compile", self.compile, "false unless name='dalle'")
        _expect(isinstance(self.dvae, DVAEConfig), s, "dvae", self.dvae, "a mapping")


# ---- end of visual tokenizers block ------------------------------------------------------------------


# ---- fine-tuning (issue 7; used by beit_ds/engine/finetune.py) ----------------------------------------

HEAD_POLICIES = ("auto", "reset", "keep")


def _number(section: str, key: str, value: Any, lo: float, hi: float, expected: str) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and lo <= value <= hi
    _expect(ok, section, key, value, expected)


@dataclass
class FinetuneConfig:
    """Where the weights come from and the classification loss (seed §3.1, App. H).

    ``init``: the starting weights, one of: our export (``model.safetensors``), a DeepSpeed
    checkpoint of pre-training or fine-tuning (a ``step_*`` folder, its ``checkpoints/`` folder
    or the run folder: the newest complete one), timm / unilm weights (``.safetensors``,
    ``.pth``), Hugging Face BEiT weights (a file or a ``save_pretrained`` folder); ``""``: random
    initialisation (training from scratch). ``head``: ``"auto"`` re-initialises the classifier
    when the weights have none or another class count, ``"reset"`` always, ``"keep"`` never (a
    mismatch is an error). The new head is trunc-normal(0.02) × ``head_init_scale``.
    ``label_smoothing``: ε of the smoothed one-hot target. ``ema_decay``: keep an exponential
    moving average of the weights with this decay (0 disables); it is saved in checkpoints,
    evaluated next to the weights and exported as ``model_ema.safetensors``. ``evaluate``: run the
    evaluation split after every checkpoint (off for ImageNet-22K, which has none).
    """

    init: str = ""
    head: str = "auto"
    head_init_scale: float = 0.001
    label_smoothing: float = 0.1
    ema_decay: float = 0.0
    evaluate: bool = True

    def __post_init__(self) -> None:
        s = "finetune"
        _expect(isinstance(self.init, str), s, "init", self.init, "a path string or ''")
        _choice(s, "head", self.head, HEAD_POLICIES)
        _number(s, "head_init_scale", self.head_init_scale, 1e-12, 1e6, "a positive number")
        _fraction(s, "label_smoothing", self.label_smoothing)
        _fraction(s, "ema_decay", self.ema_decay)


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation beyond the crop and flip of ``data.transform`` (seed App. H, DeiT's).

    RandAugment: ``rand_augment_ops`` operations per image (0 disables) of magnitude
    ``rand_augment_magnitude``. ``rand_augment_impl: timm`` (default) is timm's
    ``rand-m{magnitude}-n{ops}-mstd{rand_augment_mstd}-inc1`` as DeiT and unilm use it (magnitude of
    10, jittered by a normal of std ``rand_augment_mstd``, each op applied with probability 0.5);
    ``torchvision`` is torchvision's ``RandAugment`` (magnitude of 30 bins, every op applied: at 9 a
    third of timm's strength). ``random_erasing``: probability of erasing one
    rectangle with per-pixel noise after normalisation. Mixup (``mixup`` = α of its Beta(α, α),
    0 disables) or CutMix (``cutmix`` = α) is applied to a batch with probability ``mix_prob``;
    with both enabled CutMix is chosen with probability ``switch_prob``.
    """

    rand_augment_ops: int = 2
    rand_augment_magnitude: int = 9
    rand_augment_mstd: float = 0.5
    rand_augment_impl: str = "timm"
    random_erasing: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        s = "augment"
        _non_negative_int(s, "rand_augment_ops", self.rand_augment_ops)
        _choice(s, "rand_augment_impl", self.rand_augment_impl, ("timm", "torchvision"))
        top = 10 if self.rand_augment_impl == "timm" else 30
        ok = isinstance(self.rand_augment_magnitude, int) and 0 <= self.rand_augment_magnitude <= top
        _expect(ok, s, "rand_augment_magnitude", self.rand_augment_magnitude, f"an integer in [0, {top}]")
        _number(s, "rand_augment_mstd", self.rand_augment_mstd, 0, 100, "a number >= 0 (0: no jitter)")
        _number(s, "random_erasing", self.random_erasing, 0, 1, "a probability in [0, 1]")
        for key in ("mixup", "cutmix"):
            _number(s, key, getattr(self, key), 0, 1e3, "a number >= 0 (0 disables)")
        _number(s, "mix_prob", self.mix_prob, 0, 1, "a probability in [0, 1]")
        _number(s, "switch_prob", self.switch_prob, 0, 1, "a probability in [0, 1]")


@dataclass
class ProbeConfig:
    """Linear probe (seed App. D): features after block ``layer`` (1-based; ``None``: the middle
    block, ``(depth + 1) // 2``), pooled, one linear layer; the backbone is frozen. ``pool``:
    ``"mean"`` of the patch tokens (the seed's "average pooling", default) or ``"cls_mean"``, the
    [CLS] token concatenated with that mean (``2·D`` features: unilm's ``run_linear_eval.py``)."""

    layer: int | None = None
    pool: str = "mean"

    def __post_init__(self) -> None:
        if self.layer is not None:
            _positive_int("probe", "layer", self.layer)
        _choice("probe", "pool", self.pool, ("mean", "cls_mean"))


# ---- end of fine-tuning block ------------------------------------------------------------------------
