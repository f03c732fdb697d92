"""Does a reference point's attention cover its object? (seed §3.4; measured as DINO does): the
Jaccard index between a patch's thresholded last-block attention (``keep_mass``) and the mask of
the labelled region it lies in, on a labelled segmentation set (CamVid's ``images/*.jpg`` +
``labels/*.png``, class ids per pixel, ``void`` ignored).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from beit_ds.models.beit import Beit
from beit_ds.visualize.attention import Query, attention_maps, jaccard, keep_mass


def label_pairs(split_dir: str | Path) -> list[tuple[Path, Path]]:
    """(image, label) files of a split folder holding ``images/`` and ``labels/`` (same stems)."""
    root = Path(split_dir)
    pairs = [(p, root / "labels" / f"{p.stem}.png") for p in sorted((root / "images").glob("*.jpg"))]
    return [(i, lab) for i, lab in pairs if lab.is_file()]


def patch_labels(label: Path, patch_grid: tuple[int, int], void: int) -> torch.Tensor:
    """The majority class of each patch ``[h, w]`` (``void`` where void wins)."""
    arr = np.asarray(Image.open(label))
    gh, gw = patch_grid
    ph, pw = arr.shape[0] // gh, arr.shape[1] // gw
    cells = arr[: gh * ph, : gw * pw].reshape(gh, ph, gw, pw).transpose(0, 2, 1, 3).reshape(gh, gw, -1)
    votes = np.stack([(cells == c).sum(-1) for c in range(void + 1)], -1)
    return torch.from_numpy(votes.argmax(-1))


def reference_patches(
    labels: torch.Tensor, void: int, min_share: float, max_share: float
) -> list[tuple[int, Query]]:
    """Per class covering ``min_share``..``max_share`` of the patches: (class, its middle patch in
    raster order), a deterministic reference point inside the region."""
    out = []
    for c in range(void):
        where = (labels == c).nonzero()
        if min_share <= len(where) / labels.numel() <= max_share:
            r, col = where[len(where) // 2].tolist()
            out.append((c, Query(r, col)))
    return out


@torch.no_grad()
def object_jaccards(
    model: Beit,
    images: torch.Tensor,
    labels: torch.Tensor,
    mass: float = 0.6,
    void: int = 11,
    shares: tuple[float, float] = (0.05, 0.5),
) -> list[float]:
    """Jaccard of ``keep_mass(head-mean attention, mass)`` of each reference patch vs its class
    mask, for normalised ``images [B, 3, H, W]`` and patch labels ``labels [B, h, w]``."""
    scores = []
    for image, lab in zip(images, labels):
        refs = reference_patches(lab, void, *shares)
        if not refs:
            continue
        maps = attention_maps(model, image[None], [q for _, q in refs])[0].mean(1)  # [Q, h, w]
        keep = keep_mass(maps, mass)
        scores += [jaccard(k, lab == c) for k, (c, _) in zip(keep, refs)]
    return scores
