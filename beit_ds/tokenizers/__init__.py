"""Visual tokenizers (seed §2.1, App. C): images -> discrete visual tokens, the targets of
masked image modeling. ``build_tokenizer(cfg.tokenizer)`` gives a frozen ``VisualTokenizer``:
OpenAI's DALL-E dVAE (``dalle.py``) or our own trained dVAE (``dvae.py``).
"""

from __future__ import annotations

import torch

from beit_ds.assets import resolve
from beit_ds.config import ConfigError, TokenizerConfig
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
from beit_ds.tokenizers.protocol import VisualTokenizer, check_images, map_pixels, unmap_pixels

__all__ = [
    "DVAEOutput",
    "DalleDecoder",
    "DalleEncoder",
    "DalleTokenizer",
    "DiscreteVAE",
    "VisualTokenizer",
    "build_tokenizer",
    "check_images",
    "code_usage",
    "dvae_schedule",
    "load_dalle_decoder",
    "load_dalle_encoder",
    "load_dalle_tokenizer",
    "load_dvae",
    "map_pixels",
    "save_dvae",
    "unmap_pixels",
]

_EXPECTED_FILE = {
    "dalle": "OpenAI's encoder.pkl or a state dict of the DALL-E encoder",
    "dvae": "a .safetensors file written by save_dvae",
}


def build_tokenizer(cfg: TokenizerConfig) -> DalleTokenizer | DiscreteVAE:
    """The frozen (``requires_grad=False``), eval-mode tokenizer ``cfg`` names, on the CPU in
    ``cfg.dtype`` (``"auto"``: float32 until the caller casts it); move it with ``.to(device)``. Its input is ``cfg.image_size``² pixels
    prepared as its ``preprocess`` says ("dalle": map_pixels, "raw": [0, 1])."""
    if not cfg.path:
        raise ConfigError(f"tokenizer.path='': expected {_EXPECTED_FILE[cfg.name]}")
    path = resolve(cfg.path)  # "package:<file>" names a shipped asset
    tokenizer: DalleTokenizer | DiscreteVAE
    if cfg.name == "dalle":
        tokenizer = load_dalle_tokenizer(path, cfg.decoder_path or None, cfg.image_size)
        if cfg.compile:
            tokenizer.compile_encoder()
    else:
        tokenizer = load_dvae(path, cfg.image_size)
        if cfg.compile:
            tokenizer.compile_encoder()
    tokenizer.to(torch.float32 if cfg.dtype == "auto" else getattr(torch, cfg.dtype))
    return tokenizer.eval().requires_grad_(False)
