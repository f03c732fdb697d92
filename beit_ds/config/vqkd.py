"""The VQ-KD tokenizer of BEiT v2 (Peng et al. 2022, §2.1 "Training visual tokenizer"): its
architecture and codebook (``tokenizer.vqkd``) and the teacher whose features it learns to
reconstruct (``teacher``). Torch-free, like every module of ``beit_ds.config``.

Defaults are unilm's ``vqkd_encoder_base_decoder_3x768x12_clip`` (``beit2/modeling_vqkd.py``,
``run_vqkd_training.py``): a ViT-B/16 encoder, 8192 codes of dimension 32, a 3-block decoder
regressing the 512-d features of OpenAI CLIP ViT-B/16.
"""

from __future__ import annotations

from dataclasses import dataclass

from beit_ds.config.validate import choice, expect, fraction, non_negative_number, positive_int

TEACHER_SOURCES = ("beit", "timm", "open_clip")
TEACHER_DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class VQKDConfig:
    """The VQ-KD tokenizer (``tokenizer.vqkd``; BEiT v2 §2.1, Fig. 2).

    Encoder: a ViT (``patch_size``, ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``) with
    absolute positions and no relative-position bias or LayerScale, its patch tokens through a
    LayerNorm (``fc_norm``, unilm's mean-pooling layout) and the task layer Linear-Tanh-Linear
    down to ``code_dim``. Quantizer: ``codebook_size`` l2-normalised codes looked up by cosine
    similarity, updated by an EMA of decay ``ema_decay`` (unilm: the normalised EMA of the
    normalised mean of the vectors each code was assigned), initialised by ``kmeans_iters``
    rounds of spherical k-means on the first batch (``kmeans_init``; else random unit vectors),
    straight-through gradients and the commitment term ``beta · ‖sg[e] - z‖²`` (unilm's beta 1).
    Decoder: ``decoder_depth`` blocks of width ``decoder_embed_dim`` / ``decoder_num_heads`` on
    the code grid (patch size 1), then Linear-Tanh-Linear to ``decoder_out_dim``, which must be
    the teacher's feature width. ``drop_path_rate`` and ``grad_checkpointing`` apply to both
    transformers.

    Codebook health: a code is dead when its EMA assignment count per update (decay
    ``ema_decay``) is below ``dead_code_threshold``; with ``restart_dead_codes`` each training
    update moves the dead codes onto the encoder outputs of that update (all ranks) that are worst
    served by their code, and gives them the average count. unilm has no restart (off here by
    default): its codebook stays in use through k-means initialisation, l2 normalisation and the
    low code dimension (BEiT v2 reports 100 % usage for the 1-block decoder).
    """

    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    decoder_depth: int = 3
    decoder_embed_dim: int = 768
    decoder_num_heads: int = 12
    decoder_out_dim: int = 512
    codebook_size: int = 8192
    code_dim: int = 32
    ema_decay: float = 0.99
    kmeans_init: bool = True
    kmeans_iters: int = 10
    beta: float = 1.0
    drop_path_rate: float = 0.0
    grad_checkpointing: bool = False
    dead_code_threshold: float = 1.0
    restart_dead_codes: bool = False

    def __post_init__(self) -> None:
        s = "tokenizer.vqkd"
        for key in ("patch_size", "embed_dim", "depth", "num_heads", "decoder_depth", "decoder_embed_dim",
                    "decoder_num_heads", "decoder_out_dim", "code_dim", "kmeans_iters"):
            positive_int(s, key, getattr(self, key))
        positive_int(s, "codebook_size", self.codebook_size)
        expect(self.codebook_size >= 2, s, "codebook_size", self.codebook_size, "an integer >= 2")
        for dim, heads in (("embed_dim", "num_heads"), ("decoder_embed_dim", "decoder_num_heads")):
            ok = getattr(self, dim) % getattr(self, heads) == 0
            expect(ok, s, dim, getattr(self, dim), f"divisible by tokenizer.vqkd.{heads}={getattr(self, heads)}")
        expect(self.mlp_ratio > 0, s, "mlp_ratio", self.mlp_ratio, "a positive number")
        fraction(s, "ema_decay", self.ema_decay, lo_open=True)
        fraction(s, "drop_path_rate", self.drop_path_rate)
        non_negative_number(s, "beta", self.beta)
        non_negative_number(s, "dead_code_threshold", self.dead_code_threshold)
        for key in ("kmeans_init", "grad_checkpointing", "restart_dead_codes"):
            expect(isinstance(getattr(self, key), bool), s, key, getattr(self, key), "true or false")

    def grid(self, image_size: int) -> int:
        """Codes per side for ``image_size``² views (one-line ``ConfigError`` unless it divides)."""
        ok = image_size % self.patch_size == 0
        expect(ok, "tokenizer", "image_size", image_size, f"a multiple of tokenizer.vqkd.patch_size={self.patch_size}")
        return image_size // self.patch_size


@dataclass
class TeacherConfig:
    """The model whose patch features VQ-KD reconstructs (``teacher``; BEiT v2 §2.1).

    ``source``: ``"open_clip"`` (``name`` an open_clip model, e.g. ``ViT-B-16``; ``path`` OpenAI's
    ``ViT-B-16.pt`` or an open_clip / Hugging Face state dict of it; features: the last block's
    patch tokens through ``ln_post`` and the projection ``proj``, 512-d: unilm's CLIP target),
    ``"timm"`` (``name`` a timm model, ``path`` its weights file, or a folder with ``timm.json`` —
    the ``timm/`` of our exports; features: ``forward_features`` without the prefix tokens) or
    ``"beit"`` (``path`` anything beit_ds loads weights from: an export folder or a DeepSpeed
    checkpoint of any kind — their own architecture —, or a timm / Hugging Face / unilm / our
    weights file with ``name`` the preset of its architecture; features: the patch tokens after
    the final norm, or through ``fc_norm`` for a mean-pooling model, as unilm's teacher). The
    teacher sees the tokenizer view: its patch grid must be the code grid.

    ``mean`` / ``std``: the teacher's input normalisation of [0, 1] pixels; None is the source's
    own (OpenAI CLIP's, the timm model's ``pretrained_cfg``, the export's recipe, else 0.5).
    ``dtype``: its precision; ``"auto"`` is the run's (unilm runs it under fp16 autocast).
    """

    source: str = "open_clip"
    name: str = "ViT-B-16"
    path: str = ""
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    dtype: str = "auto"

    def __post_init__(self) -> None:
        s = "teacher"
        choice(s, "source", self.source, TEACHER_SOURCES)
        expect(isinstance(self.name, str), s, "name", self.name, "a model name string")
        expect(isinstance(self.path, str), s, "path", self.path, "a file or folder path string")
        choice(s, "dtype", self.dtype, TEACHER_DTYPES)
        for key in ("mean", "std"):
            value = getattr(self, key)
            ok = value is None or (len(value) == 3 and (key == "mean" or all(v > 0 for v in value)))
            expect(ok, s, key, value, "three numbers (R, G, B)" + (", positive" if key == "std" else "") + " or null")
