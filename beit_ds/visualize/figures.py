"""The pictures ``launch/visualize.py`` writes: from a recipe (the architecture, the patch view's
normalisation, the masking, the tokenizer), weights and images to one PNG each.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from beit_ds.config import ConfigError, MIMConfig, ModelConfig
from beit_ds.config_io import recipe_parser
from beit_ds.models.beit import Beit
from beit_ds.models.mim import BeitForMaskedImageModeling
from beit_ds.recipe import PretrainRecipe
from beit_ds.visualize.attention import Query, attention_figure, attention_maps, parse_query
from beit_ds.visualize.canvas import save_png
from beit_ds.visualize.inputs import normalize, read_images

MODES = ("attention", "mim", "curves")
# The most patches per image: one block's attention maps are (1 + N)² per head and image, computed
# one image at a time; 64x64 patches (1024² at patch 16, 256² at patch 4) is 64 MiB per head.
MAX_PATCHES = 4096
MAX_SCALE = 8


@dataclass
class Look:
    """What to look at: ``weights`` ("" = random init, seeded by ``seed``), the ``images`` source
    (first ``limit``; 0 = all) at ``size = (H, W)`` (None: the model's), where the PNG goes and
    how much each panel is enlarged. ``load(weights, model, mim)`` builds the model (the caller's:
    the pictures know no weight formats)."""

    load: Callable[[str, ModelConfig, MIMConfig | None], Beit]
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
    model = look.load(look.weights, recipe.model, recipe.mim if mim else None)
    size = look.size or (model.cfg.img_size, model.cfg.img_size)
    check_size(size, model.patch_embed.patch_size)
    _, pixels = read_images(look.images, size, look.limit, recipe.data.max_image_pixels)
    t = recipe.data.transform
    return model, pixels, normalize(pixels, t.mean, t.std)


def check_size(size: tuple[int, int], patch: int) -> None:
    """One-line ``ConfigError`` unless ``size = (H, W)`` is whole patches, at most ``MAX_PATCHES``."""
    h, w = size
    if h % patch or w % patch:
        raise ConfigError(f"--size {h} {w}: expected sides that are multiples of model.patch_size={patch}")
    if (h // patch) * (w // patch) > MAX_PATCHES:
        n = (h // patch) * (w // patch)
        raise ConfigError(
            f"--size {h} {w}: {n} patches per image; expected at most {MAX_PATCHES} (patch {patch})"
        )


def _queries(texts: Sequence[str], patch: int, patch_grid: tuple[int, int]) -> list[Query]:
    """``--query`` strings as queries inside ``patch_grid``; a bad one is a one-line ``ConfigError``."""
    queries = []
    for text in texts:
        try:
            query = parse_query(text, patch)
            query.token(patch_grid)
        except ValueError as err:
            raise ConfigError(f"--query {text!r}: {err}") from None
        queries.append(query)
    return queries


def attention_png(
    recipe: PretrainRecipe, look: Look, queries: Sequence[str], block: int = -1, mass: float = 0.6
) -> Path:
    """Per-head and head-mean attention of ``queries`` (``attention.parse_query`` strings) in
    ``block`` over each image, with the top-``mass`` masks, as one PNG."""
    model, pixels, images = _inputs(recipe, look, mim=False)
    patch = model.patch_embed.patch_size
    depth = len(model.blocks)
    if not -depth <= block < depth:
        raise ConfigError(f"--block {block}: expected a block index in [-{depth}, {depth})")
    parsed = _queries(queries, patch, model.patch_embed.dynamic_grid(*images.shape[-2:]))
    maps = torch.cat(
        [attention_maps(model, image[None], parsed, block) for image in images]
    )  # bounded memory
    return save_png(attention_figure(pixels, maps, parsed, patch, mass, look.scale), look.out)


def mim_png(recipe: PretrainRecipe, look: Look, mask_seed: int = 0) -> tuple[Path, list[float]]:
    """Image, blockwise mask, reconstruction of the true and of the predicted tokens, as one PNG;
    returns it with each image's masked-token accuracy."""
    from beit_ds.data.transforms import TOKENIZER_VIEWS
    from beit_ds.tokenizers import build_tokenizer
    from beit_ds.visualize.mim import blockwise_masks, mim_figure, predict_tokens

    model, pixels, images = _inputs(recipe, look, mim=True)
    tokenizer = build_tokenizer(recipe.tokenizer)
    side = recipe.tokenizer.image_size
    view = torch.nn.functional.interpolate(
        pixels, size=(side, side), mode="bicubic", align_corners=False
    ).clamp(0, 1)
    view = TOKENIZER_VIEWS[tokenizer.preprocess](view)
    grid = model.patch_embed.dynamic_grid(*images.shape[-2:])
    if grid != tuple(tokenizer.grid_size):
        h, w = images.shape[-2:]
        raise ConfigError(
            f"--size {h} {w}: patch grid {grid} != the tokenizer's token grid {tuple(tokenizer.grid_size)};"
            " expected the size whose patch grid is the tokenizer's (the model's img_size)"
        )
    masks = blockwise_masks(recipe.masking, grid, len(images), mask_seed)
    if not isinstance(model, BeitForMaskedImageModeling):
        raise ConfigError(f"--weights {look.weights!r}: no MIM head (lm_head) to predict tokens with")
    pred = predict_tokens(model, tokenizer, images, view, masks)
    return save_png(mim_figure(pixels, pred, tokenizer, look.scale), look.out), pred.accuracy.tolist()


def parse(mode: str, argv: list[str]) -> argparse.Namespace:
    """The options of ``beit-ds visualize MODE`` (with the recipe options of ``config_io.recipe_parser``)."""
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
            help=f"input size (default: model's); at most {MAX_PATCHES} patches, e.g. 1024 1024 at patch 16",
        )
        parser.add_argument("--scale", type=int, default=2, help=f"enlarge each panel 1 to {MAX_SCALE} times")
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
    args = parser.parse_args(argv)
    if mode != "curves":
        check_options(args)
    return args


def check_options(args: argparse.Namespace) -> None:
    """One-line ``ConfigError`` for option values that are wrong for any model."""
    if args.size is not None and min(args.size) <= 0:
        raise ConfigError(f"--size {args.size[0]} {args.size[1]}: expected two positive integers")
    if args.limit < 0:
        raise ConfigError(f"--limit {args.limit}: expected an integer >= 0 (0 = all)")
    if not 1 <= args.scale <= MAX_SCALE:
        raise ConfigError(f"--scale {args.scale}: expected an integer in [1, {MAX_SCALE}]")
    if not (math.isfinite(args.mass) and 0 < args.mass <= 1):
        raise ConfigError(f"--mass {args.mass}: expected a fraction in (0, 1] of the attention")
