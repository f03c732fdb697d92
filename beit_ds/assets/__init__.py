"""Files shipped inside the package, named in recipes as ``package:<name>``.

``demo_dvae.safetensors``: our dVAE (seed App. C) trained on the bundled scikit-image photographs
by ``python launch/train_tokenizer.py`` (recipe ``tokenizer_demo_cpu``); the tokenizer of the CPU
demo recipe, so the README's first command needs no download and no tokenizer training.

``demo_teacher/``: the teacher of the VQ-KD demo (``tokenizer_vqkd_demo_cpu``), an export folder of
kind ``pretrain``: ``model.safetensors`` of ``beit-ds train --config pretrain_demo_cpu``'s export,
with the model, MIM and input-normalisation sections of its ``recipe.json``.

``demo_vqkd.safetensors``: BEiT v2's VQ-KD tokenizer trained by ``beit-ds train --config
tokenizer_vqkd_demo_cpu`` (its export's ``tokenizer.safetensors``; a second run gives the same
tensors): ``tokenizer.name=vqkd tokenizer.path=package:demo_vqkd.safetensors`` in a BEiT v2 demo.
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
