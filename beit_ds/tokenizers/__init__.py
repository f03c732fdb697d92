"""Visual tokenizers (seed §2.1, App. C): images -> discrete visual tokens, the targets of
masked image modeling. ``build_tokenizer(cfg.tokenizer)`` gives a frozen ``VisualTokenizer``:
OpenAI's DALL-E dVAE (``dalle.py``), our own trained dVAE (``dvae.py``) or BEiT v2's VQ-KD
(``vqkd.py``, its quantizer in ``quantizer.py``, unilm's files in ``vqkd_format.py``). A tokenizer is its
module here (named after it, with a ``load_tokenizer``) and its line in
``config.tokenizer.TOKENIZERS`` (its view, file and vocabulary, read torch-free by recipes).
"""

from __future__ import annotations

from importlib import import_module
from typing import cast

import torch

from beit_ds.assets import resolve
from beit_ds.config import ConfigError, TokenizerConfig
from beit_ds.config.tokenizer import TOKENIZERS
from beit_ds.tokenizers.dalle import (
    DalleDecoder,
    DalleEncoder,
    DalleTokenizer,
    load_dalle_decoder,
    load_dalle_encoder,
    load_dalle_tokenizer,
)
from beit_ds.tokenizers.dvae import (
    DiscreteVAE,
    DVAEOutput,
    code_usage,
    dvae_schedule,
    load_dvae,
    save_dvae,
)
from beit_ds.tokenizers.protocol import (
    TokenizerLoader,
    VisualTokenizer,
    check_images,
    map_pixels,
    unmap_pixels,
)
from beit_ds.tokenizers.vqkd import VQKD, VQKDOutput, load_vqkd, save_vqkd

__all__ = [
    "DVAEOutput",
    "DalleDecoder",
    "DalleEncoder",
    "DalleTokenizer",
    "DiscreteVAE",
    "VQKD",
    "VQKDOutput",
    "VisualTokenizer",
    "build_tokenizer",
    "check_images",
    "code_usage",
    "dvae_schedule",
    "load_dalle_decoder",
    "load_dalle_encoder",
    "load_dalle_tokenizer",
    "load_dvae",
    "load_vqkd",
    "map_pixels",
    "save_dvae",
    "save_vqkd",
    "unmap_pixels",
]


def build_tokenizer(cfg: TokenizerConfig) -> VisualTokenizer:
    """The frozen (``requires_grad=False``), eval-mode tokenizer ``cfg`` names, on the CPU in
    ``cfg.dtype`` (``"auto"``: float32 until the caller casts it); move it with ``.to(device)``.
    Its input is ``cfg.image_size``² pixels prepared as its ``preprocess`` says ("dalle":
    map_pixels, "raw": [0, 1]). ``cfg.name`` is a key of ``config.tokenizer.TOKENIZERS``; its
    weights are read by ``load_tokenizer`` of the module of that name (a ``TokenizerLoader``)."""
    if not cfg.path:
        raise ConfigError(f"tokenizer.path='': expected {TOKENIZERS[cfg.name].file}")
    load: TokenizerLoader = import_module(f"{__name__}.{cfg.name}").load_tokenizer
    tokenizer = load(resolve(cfg.path), cfg)  # "package:<file>" names a shipped asset
    tokenizer.to(torch.float32 if cfg.dtype == "auto" else getattr(torch, cfg.dtype))
    return cast(VisualTokenizer, tokenizer.eval().requires_grad_(False))
