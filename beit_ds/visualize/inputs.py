"""What the pictures are made of: the images to look at (the model to look inside is loaded by
whoever asks for a picture: ``tasks/weights.model_to_inspect``).

Images: ``demo`` (the bundled scikit-image photographs), a folder, a text file list, or one file,
resized to the size asked for and kept in [0, 1]; a file that is no image or has more pixels than
``data.max_image_pixels`` (a decompression bomb) is a one-line ``DataError``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from beit_ds.config import DataConfig
from beit_ds.data.decode import decode, open_image
from beit_ds.data.skips import DataError, SkipSample

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
MAX_IMAGE_PIXELS = DataConfig.max_image_pixels  # the default of data.max_image_pixels


def image_paths(source: str | Path) -> list[Path]:
    """The image files ``source`` names: ``demo``, a folder (sorted, recursive), a ``.txt`` file
    list (``image[,label]`` lines relative to the list's folder) or one image file."""
    if str(source) == "demo":
        from beit_ds.data.demo import DEMO_PHOTOS, demo_folder

        folder = demo_folder()
        return [folder / f for _, f in DEMO_PHOTOS if (folder / f).is_file()]
    path = Path(source)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    elif path.suffix == ".txt" and path.is_file():
        lines = [ln.split(",")[0].strip() for ln in path.read_text().splitlines() if ln.strip()]
        files = [path.parent / ln for ln in lines]
    else:
        files = [path]
    missing = [p for p in files if not p.is_file()]
    if not files or missing:
        raise FileNotFoundError(
            f"images {source}: {'no image files' if not files else f'no such file {missing[0]}'}"
        )
    return files


def read_image(path: Path, size: tuple[int, int], max_pixels: int = MAX_IMAGE_PIXELS) -> torch.Tensor:
    """The image at ``path`` as RGB ``[3, H, W]`` in [0, 1], resized (bicubic) to ``size = (H, W)``;
    decoded as training decodes (``data/decode.py``: EXIF rotation, alpha on white). A file that is
    no image, is broken or has more than ``max_pixels`` pixels is a one-line ``DataError``."""
    try:
        enc = open_image(path.read_bytes(), str(path), max_pixels)
        image, _ = decode(enc)
    except SkipSample as err:
        raise DataError(f"image {path}: {err}") from None
    except OSError as err:
        raise DataError(f"image {path}: unreadable ({err.strerror or err})") from None
    rgb = image.resize((size[1], size[0]), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).float() / 255.0


def read_images(
    source: str | Path, size: tuple[int, int], limit: int = 0, max_pixels: int = MAX_IMAGE_PIXELS
) -> tuple[list[str], torch.Tensor]:
    """(names, images ``[B, 3, H, W]`` in [0, 1]) of the first ``limit`` (0: all) of ``source``;
    images of more than ``max_pixels`` pixels (``data.max_image_pixels``) are refused."""
    paths = image_paths(source)[: limit or None]
    return [p.stem for p in paths], torch.stack([read_image(p, size, max_pixels) for p in paths])


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """[0, 1] images ``[B, 3, H, W]`` as the model's patch view: ``(x - mean) / std`` per channel."""
    m = torch.tensor(mean, dtype=images.dtype).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - m) / s
