"""Self-attention maps of a reference point (seed §3.4, Fig. 2) and DINO-style attention masks.

For a query token — a patch picked by its grid position or a pixel, or [CLS] — the row of one
block's attention probabilities over the patches is a map on the patch grid: one per head and
their mean. ``Beit.attention_probs`` recomputes that block eagerly (softmax(q kᵀ/√d + relative
position bias)), so the fused SDPA path of training is untouched. ``keep_mass`` keeps the most
attended patches that together hold a fraction of the attention mass (DINO's thresholded maps).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from PIL import Image

from beit_ds.models.beit import Beit
from beit_ds.visualize.canvas import grid, mark, mask_overlay, overlay, upsample


@dataclass(frozen=True)
class Query:
    """A query token: [CLS] (``row = col = -1``) or the patch at grid ``(row, col)``."""

    row: int = -1
    col: int = -1

    @property
    def is_cls(self) -> bool:
        return self.row < 0

    def token(self, patch_grid: tuple[int, int]) -> int:
        """Index in the ``1 + N`` token sequence (0 = [CLS]); outside the grid: ``ValueError``."""
        if self.is_cls:
            return 0
        gh, gw = patch_grid
        if not (0 <= self.row < gh and 0 <= self.col < gw):
            raise ValueError(f"query patch ({self.row}, {self.col}): outside the {gh}x{gw} patch grid")
        return 1 + self.row * gw + self.col

    @property
    def label(self) -> str:
        return "cls" if self.is_cls else f"r{self.row}c{self.col}"

    def center(self, patch: int) -> tuple[float, float]:
        """The pixel ``(x, y)`` at the centre of this patch."""
        return ((self.col + 0.5) * patch, (self.row + 0.5) * patch)


def parse_query(text: str, patch: int) -> Query:
    """``"cls"``, ``"ROW,COL"`` (patch grid) or ``"px:X,Y"`` (pixel, mapped to its patch)."""
    if text.strip().lower() == "cls":
        return Query()
    pixel = text.startswith("px:")
    try:
        a, b = (int(float(v)) for v in text.removeprefix("px:").split(","))
    except ValueError:
        raise ValueError(f"query {text!r}: expected 'cls', 'ROW,COL' or 'px:X,Y'") from None
    if min(a, b) < 0:
        raise ValueError(f"query {text!r}: coordinates must be >= 0")
    return Query(b // patch, a // patch) if pixel else Query(a, b)


@torch.no_grad()
def attention_maps(
    model: Beit, images: torch.Tensor, queries: Sequence[Query], block: int = -1
) -> torch.Tensor:
    """Attention of each query over the patches: ``images [B, 3, H, W]`` -> ``[B, Q, heads, h, w]``
    (fp32; each query's row over all ``1 + N`` tokens sums to 1, so a map sums to 1 minus the
    [CLS] share). ``block``: negative from the end (default: the last block)."""
    patch_grid = model.patch_embed.dynamic_grid(*images.shape[-2:])
    tokens = [q.token(patch_grid) for q in queries]
    weight = next(model.parameters())
    probs = model.attention_probs(images.to(weight.device, weight.dtype), block)  # [B, heads, T, T]
    rows = probs[:, :, tokens, 1:].transpose(1, 2)  # [B, Q, heads, N]
    return rows.reshape(*rows.shape[:3], *patch_grid).float()


def keep_mass(maps: torch.Tensor, fraction: float) -> torch.Tensor:
    """Bool masks ``[..., h, w]``: the fewest most-attended patches of each map holding at least
    ``fraction`` of its mass (DINO's thresholded attention; ties broken by patch order)."""
    if not 0 < fraction <= 1:
        raise ValueError(f"mass fraction {fraction}: expected in (0, 1]")
    flat = maps.flatten(-2).float()
    total = flat.sum(-1, keepdim=True).clamp_min(1e-12)
    values, order = flat.sort(dim=-1, descending=True, stable=True)
    before = (values.cumsum(-1) - values) / total  # mass of the patches ranked above
    keep_sorted = before < fraction
    keep = torch.zeros_like(keep_sorted).scatter(-1, order, keep_sorted)
    return keep.reshape(maps.shape)


def jaccard(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Intersection over union of two bool masks of one shape (1.0 when both are empty)."""
    inter = (pred & target).sum().item()
    union = (pred | target).sum().item()
    return 1.0 if union == 0 else inter / union


def attention_rows(
    image: torch.Tensor, maps: torch.Tensor, queries: Sequence[Query], patch: int, fraction: float = 0.6
) -> list[list[tuple[str, torch.Tensor]]]:
    """Panels of one image ``[3, H, W]`` in [0, 1] and its ``maps [Q, heads, h, w]``: per query a
    row (reference point, head mean, top-``fraction`` mask of the mean, each head)."""
    size = (image.shape[1], image.shape[2])
    rows = []
    for q, per_head in zip(queries, maps):
        mean = per_head.mean(0)
        point = image if q.is_cls else mark(image, q.center(patch))
        row = [(q.label, point), ("mean", overlay(image, upsample(mean, size)))]
        row.append(
            (
                f"top{round(fraction * 100)}%",
                mask_overlay(image, upsample(keep_mass(mean, fraction).float(), size) > 0),
            )
        )
        row += [(f"h{i}", overlay(image, upsample(m, size))) for i, m in enumerate(per_head)]
        rows.append(row)
    return rows


def attention_figure(
    images: torch.Tensor,
    maps: torch.Tensor,
    queries: Sequence[Query],
    patch: int,
    fraction: float = 0.6,
    scale: int = 1,
) -> Image.Image:
    """One picture of ``images [B, 3, H, W]`` and their ``maps [B, Q, heads, h, w]``: a row per
    (image, query), panels enlarged ``scale`` times."""
    rows = [r for img, m in zip(images, maps) for r in attention_rows(img, m, queries, patch, fraction)]
    return grid(rows, scale=scale)
