"""Training our own visual tokenizer, the dVAE of seed App. C, as a ``run_job``.

The dVAE learns on the tokenizer view of the pre-training pipeline (same crops, flips and jitter,
``tokenizer_view: raw``), with the Gumbel temperature and KL weight as pure functions of the
optimizer step. The export is ``tokenizer.safetensors`` (``tokenizer.name=dvae tokenizer.path=…``
in a pre-training recipe) plus its reconstruction error against the mean image.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.config import ConfigError, MaskingConfig
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.export import consolidated_state_dict
from beit_ds.engine.job import JobParts, loader_place, run_job
from beit_ds.engine.state import TrainState
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import TokenizerRecipe


def check_recipe(r: TokenizerRecipe) -> None:
    t = r.data.transform
    if r.tokenizer.name != "dvae":
        raise ConfigError(f"tokenizer.name={r.tokenizer.name!r}: only our 'dvae' can be trained")
    if t.tokenizer_view != "raw" or t.second_input_size != r.tokenizer.image_size:
        raise ConfigError(
            f"data.transform: expected tokenizer_view='raw' and second_input_size={r.tokenizer.image_size}"
            " (tokenizer.image_size) to train the dVAE"
        )


def dvae_step(engine: Any, batch: Any, recipe: TokenizerRecipe, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """One micro-batch of dVAE training at the step's temperature and KL weight."""
    from beit_ds.tokenizers import dvae_schedule

    images = batch.tokenizer_images.to(engine.device, dtype)
    out = engine(images, **dvae_schedule(engine.global_steps, recipe.tokenizer.dvae))
    engine.backward(out.loss)
    engine.step()
    return out.metrics()


@torch.no_grad()
def reconstruction_report(model: Any, loader: Any, batches: int = 8) -> dict[str, float]:
    """Hard-token reconstruction MSE vs the mean-image MSE, and code usage, on ``batches`` batches."""
    from beit_ds.tokenizers import code_usage

    images = torch.cat([b.tokenizer_images for b, _ in zip(loader.at(10**6), range(batches))])
    tokens = model.encode(images)
    recon = model.decode(tokens)
    perplexity, usage = code_usage(tokens, model.vocab_size)
    mean_image = images.mean(0, keepdim=True).expand_as(images)
    return {"recon_mse": F.mse_loss(recon, images).item(), "mean_image_mse": F.mse_loss(mean_image, images).item(),
            "perplexity": perplexity.item(), "codes_used": usage.item(), "images": int(images.shape[0])}


def reconstruction_samples(loader: Callable[[], Any], count: int = 8) -> Callable[[nn.Module, MetricWriter, int], None]:
    """Logs ``count`` fixed tokenizer views beside their hard-token reconstructions to TensorBoard
    (``tokenizer/reconstructions``, ``[count, 3, H, 2W]``) at each checkpoint; ``loader()`` gives
    the job's loader once it is built."""
    fixed: list[torch.Tensor] = []

    @torch.no_grad()
    def log(model: nn.Module, writer: MetricWriter, step: int) -> None:
        if not fixed:
            fixed.append(next(iter(loader().at(10**6))).tokenizer_images[:count])
        weight = next(model.parameters())
        images = fixed[0].to(weight.device, weight.dtype)
        training = model.training
        with torch.random.fork_rng(devices=[]):  # leave the training RNG stream untouched
            recon = model.eval().decode(model.encode(images))
        model.train(training)
        writer.images(step, "tokenizer/reconstructions", torch.cat([images, recon], dim=3).float().clamp(0, 1))

    return log


def train_tokenizer(recipe: TokenizerRecipe, ds_path: str | Path, resume: str = "auto", overwrite: bool = False) -> TrainState:
    """Train (or resume) the dVAE; the export holds ``tokenizer.safetensors`` and ``report.json``."""
    from beit_ds.data import build_pretrain_loader
    from beit_ds.tokenizers import DiscreteVAE, save_dvae

    check_recipe(recipe)
    size = recipe.tokenizer.image_size
    grid = (size // recipe.tokenizer.dvae.downsample,) * 2
    # The pre-training loader supplies the tokenizer view; its masks are not used here.
    no_masks = MaskingConfig(num_masking_patches=1, min_block_patches=1)
    loaders: list[Any] = []

    def build_loader(place: ProcessPlace) -> Any:
        loaders.append(build_pretrain_loader(recipe.data, no_masks, grid, loader_place(recipe, place)))
        return loaders[-1]

    def export(tag_dir: Path, out_dir: Path) -> list[Path]:
        model = DiscreteVAE(recipe.tokenizer.dvae, size)
        model.load_state_dict(consolidated_state_dict(tag_dir), strict=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        save_dvae(model.eval(), out_dir / "tokenizer.safetensors")
        report = reconstruction_report(model, loaders[0])
        (out_dir / "report.json").write_text(json.dumps(report, indent=1))
        return [out_dir / "tokenizer.safetensors", out_dir / "report.json"]

    parts = JobParts(
        "tokenizer",
        build_model=lambda: DiscreteVAE(recipe.tokenizer.dvae, size),
        build_loader=build_loader,
        make_step=lambda engine, dtype: lambda e, b: dvae_step(e, b, recipe, dtype),
        export=export,
        samples=reconstruction_samples(lambda: loaders[0]),
    )
    return run_job(recipe, ds_path, resume, parts, overwrite)
