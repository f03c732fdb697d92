"""Files shipped inside the package, named in recipes as ``package:<name>``.

``demo_dvae.safetensors``: our dVAE (seed App. C) trained on the bundled scikit-image photographs
by ``python launch/train_tokenizer.py`` (recipe ``tokenizer_demo_cpu``); the tokenizer of the CPU
demo recipe, so the README's first command needs no download and no tokenizer training.
"""

from __future__ import annotations

from pathlib import Path

PREFIX = "package:"
ASSETS_DIR = Path(__file__).parent


def resolve(path: str) -> Path:
    """``package:<name>`` -> the shipped file; any other string is a plain path."""
    if path.startswith(PREFIX):
        return ASSETS_DIR / path[len(PREFIX) :]
    return Path(path)
