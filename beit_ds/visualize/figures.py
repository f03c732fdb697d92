"""The pictures ``launch/visualize.py`` writes: from a recipe (the architecture, the patch view's
normalisation, the masking, the tokenizer), weights and images to one PNG each.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from beit_ds.cli import recipe_parser
from beit_ds.config import ConfigError
from beit_ds.models.beit import Beit
from beit_ds.models.mim import BeitForMaskedImageModeling
from beit_ds.recipe import PretrainRecipe
from beit_ds.visualize.attention import attention_figure, attention_maps, parse_query
from beit_ds.visualize.canvas import save_png
from beit_ds.visualize.inputs import load_model, normalize, read_images

MODES = ("attention", "mim", "curves")


@dataclass
class Look:
    """What to look at: ``weights`` ("" = random init, seeded by ``seed``), the ``images`` source
    (first ``limit``; 0 = all) at ``size = (H, W)`` (None: the model's), where the PNG goes and
    how much each panel is enlarged."""

    weights: str = ""
    images: str = "demo"
    size: tuple[int, int] | None = None
    limit: int = 4
    out: str = "attention.png"
    scale: int = 2
    seed: int = 0


def _inputs(recipe: PretrainRecipe, look: Look, mim: bool) -> tuple[Beit, torch.Tensor, torch.Tensor]:
    """(model, images in [0, 1], the normalised patch view) of ``look``."""
    torch.manual_seed(look.seed)
    model = load_model(look.weights, recipe.model, recipe.mim if mim else None)
    size = look.size or (model.cfg.img_size, model.cfg.img_size)
    _, pixels = read_images(look.images, size, look.limit)
    t = recipe.data.transform
    return model, pixels, normalize(pixels, t.mean, t.std)


def attention_png(
    recipe: PretrainRecipe, look: Look, queries: Sequence[str], block: int = -1, mass: float = 0.6
) -> Path:
    """Per-head and head-mean attention of ``queries`` (``attention.parse_query`` strings) in
    ``block`` over each image, with the top-``mass`` masks, as one PNG."""
    model, pixels, images = _inputs(recipe, look, mim=False)
    patch = model.patch_embed.patch_size
    parsed = [parse_query(q, patch) for q in queries]
    maps = attention_maps(model, images, parsed, block)
    return save_png(attention_figure(pixels, maps, parsed, patch, mass, look.scale), look.out)


def mim_png(recipe: PretrainRecipe, look: Look, mask_seed: int = 0) -> tuple[Path, list[float]]:
    """Image, blockwise mask, reconstruction of the true and of the predicted tokens, as one PNG;
    returns it with each image's masked-token accuracy."""
    from beit_ds.tokenizers import build_tokenizer, map_pixels
    from beit_ds.visualize.mim import blockwise_masks, mim_figure, predict_tokens

    model, pixels, images = _inputs(recipe, look, mim=True)
    tokenizer = build_tokenizer(recipe.tokenizer)
    side = recipe.tokenizer.image_size
    view = torch.nn.functional.interpolate(
        pixels, size=(side, side), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    view = map_pixels(view) if tokenizer.preprocess == "dalle" else view
    grid = model.patch_embed.dynamic_grid(*images.shape[-2:])
    masks = blockwise_masks(recipe.masking, grid, len(images), mask_seed)
    if not isinstance(model, BeitForMaskedImageModeling):
        raise ConfigError(f"--weights {look.weights!r}: no MIM head (lm_head) to predict tokens with")
    pred = predict_tokens(model, tokenizer, images, view, masks)
    return save_png(mim_figure(pixels, pred, tokenizer, look.scale), look.out), pred.accuracy.tolist()


def parse(mode: str, argv: list[str]) -> argparse.Namespace:
    """The options of ``launch/visualize.py MODE`` (the recipe options of ``cli.recipe_parser``)."""
    if mode == "curves":
        parser = argparse.ArgumentParser(description="curves of several runs' metrics.jsonl, one PNG")
        parser.add_argument("runs", nargs="+", help="run folders or metrics.jsonl files")
        parser.add_argument("--label", action="append", default=[], help="legend name per run (in order)")
    else:
        parser = recipe_parser(f"visualize {mode}", "pretrain_demo_cpu")
        parser.add_argument(
            "--weights", default="", help="export folder / checkpoint / weights file ('' = random init)"
        )
        parser.add_argument(
            "--images", default="demo", help="demo, an image folder, a .txt file list or one image"
        )
        parser.add_argument("--limit", type=int, default=4, help="first N images (0 = all)")
        parser.add_argument(
            "--size",
            type=int,
            nargs=2,
            metavar=("H", "W"),
            default=None,
            help="input size (default: model's)",
        )
        parser.add_argument("--scale", type=int, default=2, help="enlarge each panel this many times")
        parser.add_argument("--seed", type=int, default=0, help="random init and mask seed")
        parser.add_argument(
            "--query", action="append", default=[], help="cls, ROW,COL (patch) or px:X,Y (pixel); repeatable"
        )
        parser.add_argument(
            "--block", type=int, default=-1, help="block index, negative from the end (default: last)"
        )
        parser.add_argument(
            "--mass", type=float, default=0.6, help="thresholded mask keeps this attention mass"
        )
    parser.add_argument("--out", default=f"{mode}.png", help="output PNG")
    return parser.parse_args(argv)
