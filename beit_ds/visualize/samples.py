"""Pictures of a pre-training run at each checkpoint (TensorBoard): the attention of [CLS] and of
the centre patch in the last block (seed §3.4) and the MIM reconstructions (§2.3) of a few fixed
images, drawn under ``torch.random.fork_rng`` so the training RNG stream is unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from beit_ds.metrics import MetricWriter
from beit_ds.models.mim import BeitForMaskedImageModeling
from beit_ds.visualize.attention import Query, attention_figure, attention_maps
from beit_ds.visualize.canvas import as_tensor
from beit_ds.visualize.mim import mim_figure, predict_tokens


def fixed_batch(loader: Any, count: int) -> Any:
    """The first ``count`` samples of ``loader`` at a far epoch (``loader.at(10**6)``, the same
    images at every checkpoint), fetched under ``fork_rng``: starting its workers draws no number
    from the training stream."""
    from beit_ds.data.collate import MIMBatch

    with torch.random.fork_rng(devices=[]):
        b = next(iter(loader.at(10**6)))
    return MIMBatch(
        b.images[:count], b.tokenizer_images[:count], b.bool_masked_pos[:count], b.indices[:count]
    )


def unnormalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """The patch view ``[B, 3, H, W]`` back in [0, 1] pixels (fp32, CPU)."""
    m = torch.tensor(mean).view(1, 3, 1, 1)
    s = torch.tensor(std).view(1, 3, 1, 1)
    return (images.float().cpu() * s + m).clamp(0, 1)


@torch.no_grad()
def pretrain_samples(
    model: nn.Module,
    tokenizer: Any,
    batch: Any,
    writer: MetricWriter,
    step: int,
    norm: tuple[tuple[float, ...], ...],
) -> None:
    """Log ``pretrain/attention`` and (with a tokenizer that decodes to pixels) ``pretrain/mim`` images ``[1, 3, H, W]``
    for the fixed ``batch`` (a ``MIMBatch``); ``norm = (mean, std)`` of its patch view."""
    if not isinstance(model, BeitForMaskedImageModeling):
        return  # not a BEiT MIM model: nothing of ours to draw
    training = model.training
    with torch.random.fork_rng(devices=[]):  # leave the training RNG stream untouched
        model.eval()
        try:
            pixels = unnormalize(batch.images, *norm)
            gh, gw = model.patch_embed.dynamic_grid(*batch.images.shape[-2:])
            queries = [Query(), Query(gh // 2, gw // 2)]
            maps = attention_maps(model, batch.images, queries)
            patch = batch.images.shape[-1] // gw
            writer.images(
                step,
                "pretrain/attention",
                as_tensor(attention_figure(pixels, maps, queries, patch, scale=2))[None],
            )
            if tokenizer is not None:
                mask = batch.bool_masked_pos.reshape(-1, gh, gw).bool()
                pred = predict_tokens(model, tokenizer, batch.images, batch.tokenizer_images, mask)
                try:
                    figure = mim_figure(pixels, pred, tokenizer, scale=2)
                except NotImplementedError:  # no pixel decoder (VQ-KD; DALL-E without decoder_path)
                    return
                writer.images(step, "pretrain/mim", as_tensor(figure)[None])
        finally:
            model.train(training)
