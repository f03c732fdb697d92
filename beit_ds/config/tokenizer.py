"""Visual tokenizer sections: which tokenizer and our dVAE's hyper-parameters (seed §2.2, App. C),
and the table of tokenizers (``TOKENIZERS``): what a recipe knows of each without loading it.

A tokenizer is one module, ``beit_ds/tokenizers/<name>.py`` (its model and
``load_tokenizer(path, cfg)``), and one line of ``TOKENIZERS``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

from safetensors import SafetensorError, safe_open

from beit_ds.config.torch_zip import torch_zip_shapes
from beit_ds.config.validate import choice, expect, non_negative_number, positive_int
from beit_ds.config.vqkd import VQKDConfig


@dataclass(frozen=True)
class TokenizerSpec:
    """What a recipe knows of a visual tokenizer without loading it (torch-free).

    ``view``: how the data pipeline prepares the tokenizer's input (a ``TOKENIZER_VIEWS`` name:
    ``"dalle"`` is DALL-E's ``map_pixels``, ``"raw"`` [0, 1] pixels); it is the tokenizer's
    ``preprocess``. ``file``: what ``tokenizer.path`` names. ``vocab``: the vocabulary of the file
    at a path, read without loading its weights (``None``: missing or unreadable; the tokenizer
    check names the file later). ``decoder``: ``tokenizer.decoder_path`` (a separate decoder file)
    applies. ``model_view``: the tokenizer reads the model's own view (BEiT v2's VQ-KD, a ViT at the
    model's resolution): ``tokenizer.image_size`` and the view's size and resampling are derived
    from the model's (``PretrainRecipe.derived``), and the loader resizes the crop once.
    """

    view: str
    file: str
    vocab: Callable[[str], int | None]
    decoder: bool = False
    model_view: bool = False


def fixed_vocab(size: int) -> Callable[[str], int | None]:
    """A vocabulary every file of the tokenizer has (``size`` codes)."""
    return lambda path: size


def safetensors_vocab(meta_key: str, field: str) -> Callable[[str], int | None]:
    """The vocabulary a ``.safetensors`` file records in its metadata: ``field`` of the JSON object
    stored under ``meta_key`` (read with ``safe_open``, no tensor loaded)."""

    def read(path: str) -> int | None:
        try:
            with safe_open(path, framework="numpy") as f:
                meta = f.metadata() or {}
            return int(json.loads(meta[meta_key])[field])
        except (OSError, SafetensorError, ValueError, KeyError, TypeError):
            return None

    return read


def vqkd_vocab(path: str) -> int | None:
    """The codebook size of a VQ-KD file: our ``.safetensors`` metadata, else the first dimension
    of ``quantize.embedding.weight`` in unilm's ``.pth`` (read without torch: ``torch_zip_shapes``)."""
    vocab = safetensors_vocab("vqkd_config", "codebook_size")(path)
    if vocab is None:
        shape = (torch_zip_shapes(path) or {}).get("quantize.embedding.weight")
        vocab = shape[0] if shape else None
    return vocab


TOKENIZERS: dict[str, TokenizerSpec] = {
    "dalle": TokenizerSpec("dalle", "OpenAI's encoder.pkl or a state dict of the DALL-E encoder", fixed_vocab(8192),
                           decoder=True),
    "dvae": TokenizerSpec("raw", "a .safetensors file written by save_dvae", safetensors_vocab("dvae_config", "codebook_size")),
    "vqkd": TokenizerSpec("raw", "a VQ-KD .safetensors file written by save_vqkd (a vqkd export's tokenizer.safetensors)"
                          " or unilm's released VQ-KD .pth", vqkd_vocab, model_view=True),
}
"""``tokenizer.name`` -> its ``TokenizerSpec``: OpenAI's DALL-E dVAE (8192 codes), our dVAE and
BEiT v2's VQ-KD (ours or unilm's)."""

TOKENIZER_NAMES = tuple(TOKENIZERS)
TOKENIZER_DTYPES = ("auto", "float32", "bfloat16", "float16")


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
            positive_int(s, key, getattr(self, key))
        expect(self.codebook_size >= 2, s, "codebook_size", self.codebook_size, "an integer >= 2")
        d = self.downsample
        expect(d & (d - 1) == 0, s, "downsample", d, "a power of two (1, 2, 4, 8, 16, ...)")
        non_negative_number(s, "num_res_blocks", self.num_res_blocks, integer=True)
        for key in ("temperature_start", "temperature_end"):
            value = getattr(self, key)
            ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0
            expect(ok, s, key, value, "a positive number")
        positive_int(s, "temperature_steps", self.temperature_steps)
        non_negative_number(s, "kl_weight", self.kl_weight)
        non_negative_number(s, "prior_warmup_steps", self.prior_warmup_steps, integer=True)  # 0: none
        non_negative_number(s, "diversity_weight", self.diversity_weight)


@dataclass
class TokenizerConfig:
    """Which visual tokenizer gives the pre-training targets (seed §2.1, App. C).

    ``name`` (a ``TOKENIZERS`` key): ``"dalle"`` (OpenAI's dVAE: ``path`` is ``encoder.pkl`` or a state dict of it,
    ``decoder_path`` optionally ``decoder.pkl`` for reconstructions) or ``"dvae"`` (ours:
    ``path`` is a ``.safetensors`` file saved by ``beit_ds.tokenizers.save_dvae``, which holds
    the decoder too; ``dvae`` configures training one) or ``"vqkd"`` (BEiT v2's VQ-KD: ``path`` a
    ``save_vqkd`` file or unilm's released ``.pth``; ``vqkd`` configures training one, kind
    ``vqkd``; it reads the raw [0, 1] view, 224² in BEiT v2). ``image_size``: the tokenizer view
    (112 for 224² images with 16² patches and downsampling 8). ``dtype``: inference precision,
    ``"float32"`` by default (the exact targets: unilm calls its tokenizer outside autocast, but its
    DALL-E encoder runs its convolutions in fp16 on GPUs, ``docs/FIDELITY.md``; the tokenizer view
    is never cast to the run's precision); ``"auto"`` is the run's (bf16 / fp16 under DeepSpeed's half precision),
    cheaper but it changes targets (``bench/tokenizer.py`` reports agreement and img/s). ``compile``:
    ``torch.compile`` the encoder (DALL-E's or our dVAE's) with weight freezing (inference only;
    on the 2-core CPU DALL-E 1.35× the reference's img/s against 1.19× eager,
    ``bench/tokenizer.py``; the demo dVAE ≈ 1.5× its channels-last eager encode, a few seconds of
    compilation, ``bench/small_pretrain.py``).
    """

    name: str = "dalle"
    path: str = ""
    decoder_path: str = ""
    image_size: int = 112
    dtype: str = "float32"
    compile: bool = False
    dvae: DVAEConfig = dataclasses.field(default_factory=DVAEConfig)
    vqkd: VQKDConfig = dataclasses.field(default_factory=VQKDConfig)

    def __post_init__(self) -> None:
        s = "tokenizer"
        choice(s, "name", self.name, tuple(TOKENIZERS))
        expect(isinstance(self.path, str), s, "path", self.path, "a file path string")
        with_decoder = " or ".join(f"tokenizer.name={n!r}" for n, spec in TOKENIZERS.items() if spec.decoder)
        ok = isinstance(self.decoder_path, str) and (TOKENIZERS[self.name].decoder or not self.decoder_path)
        expect(ok, s, "decoder_path", self.decoder_path, f"empty unless {with_decoder}")
        positive_int(s, "image_size", self.image_size)
        choice(s, "dtype", self.dtype, TOKENIZER_DTYPES)
        expect(isinstance(self.compile, bool), s, "compile", self.compile, "true or false")
        expect(isinstance(self.dvae, DVAEConfig), s, "dvae", self.dvae, "a mapping")
        expect(isinstance(self.vqkd, VQKDConfig), s, "vqkd", self.vqkd, "a mapping")

