"""unilm's released VQ-KD checkpoints (``beit2/TOKENIZER.md``: ``vqkd_encoder_base_decoder_{1,3}x768x12_
{clip,dino}-*.pth``) read into our ``VQKD``: their keys are ours (``encoder.*``, ``decoder.*``,
``encode_task_layer.*``, ``decode_task_layer.*``, ``quantize.embedding.{weight,cluster_size,
embed_avg,initted}``, ``quantize.cluster_size``), so the import only unwraps the file, drops what
unilm's own tokenizer loader drops (keys starting with ``teacher``, ``loss`` or ``scaling``: the
teacher, its loss and input scaling) and reads the architecture from the tensors' shapes.

The file goes through PyTorch's restricted unpickler (``weights_only=True``), allowing only the
``argparse.Namespace`` that unilm's ``save_model`` stores: a crafted pickle is refused, not run.
"""

from __future__ import annotations

import argparse
import math
import pickle
from pathlib import Path

import torch

from beit_ds.config import VQKDConfig

Tensors = dict[str, torch.Tensor]
DROPPED = ("teacher", "loss", "scaling")  # unilm's as_tokenzer loading deletes keys starting with these
WRAPPERS = ("model", "state_dict")
HEAD_DIM = 64  # unilm's VQ-KD transformers are ViT-B (768 = 12 heads x 64): heads are not in the weights


def read_unilm(path: Path) -> Tensors:
    """The tokenizer's state dict in the unilm checkpoint ``path`` (teacher / loss / scaling keys
    dropped); one-line ``ValueError`` for anything else."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError) as err:
        first = next((line for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise ValueError(f"{path}: not a readable torch file of plain tensors ({first.strip()[:200]})") from None
    for key in WRAPPERS:  # unilm's loader: weights["model"], else weights["state_dict"]
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path}: no state dict of tensors (expected one of {WRAPPERS} or a bare state dict)")
    return {k: v for k, v in obj.items() if not k.startswith(DROPPED)}


def _blocks(sd: Tensors, prefix: str) -> int:
    return len({k.split(".")[2] for k in sd if k.startswith(f"{prefix}.blocks.")})


def unilm_config(sd: Tensors, where: str) -> tuple[VQKDConfig, int]:
    """(``VQKDConfig``, view size) of a VQ-KD state dict in unilm's layout, from its shapes; heads
    are ``width / 64`` (unilm's ViT-B). A missing key is a one-line ``ValueError`` naming it."""
    try:
        width = sd["encoder.cls_token"].shape[-1]
        patch = sd["encoder.patch_embed.proj.weight"].shape[-1]
        grid = math.isqrt(sd["encoder.pos_embed"].shape[1] - 1)
        codes, code_dim = sd["quantize.embedding.weight"].shape
        dec_width = sd["decoder.cls_token"].shape[-1]
        cfg = VQKDConfig(
            patch_size=patch, embed_dim=width, depth=_blocks(sd, "encoder"), num_heads=max(1, width // HEAD_DIM),
            mlp_ratio=sd["encoder.blocks.0.mlp.fc1.weight"].shape[0] / width,
            decoder_depth=_blocks(sd, "decoder"), decoder_embed_dim=dec_width,
            decoder_num_heads=max(1, dec_width // HEAD_DIM),
            decoder_out_dim=sd["decode_task_layer.2.weight"].shape[0], codebook_size=codes, code_dim=code_dim,
        )
    except KeyError as err:
        raise ValueError(f"{where}: not a VQ-KD checkpoint in unilm's layout (no {err.args[0]})") from None
    return cfg, grid * patch
