"""Training our own visual tokenizer, the dVAE of seed App. C: the task of ``kind: tokenizer``.

The dVAE learns on the tokenizer view of the pre-training pipeline (same crops, flips and jitter,
``tokenizer_view: raw``), with the Gumbel temperature and KL weight as pure functions of the
optimizer step (``TrainState.step``, the loop's one clock). The export is ``tokenizer.safetensors`` (``tokenizer.name=dvae tokenizer.path=…``
in a pre-training recipe) plus its reconstruction error against the mean image, its recipe and
its manifest; ``load_export`` of it gives the frozen dVAE.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from beit_ds.artifacts import TOKENIZER_WEIGHTS, ExportDir
from beit_ds.config import ConfigError, DVAEConfig, MaskingConfig
from beit_ds.config_io import build_dataclass
from beit_ds.data import ImageLoader, build_pretrain_loader
from beit_ds.data.collate import MIMBatch
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.consolidate import checkpoint_task
from beit_ds.engine.job import loader_place
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.engine.task import StepOutput, Task
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import TokenizerRecipe
from beit_ds.tasks.exported import export_tokenizer, load_tokenizer, no_ema
from beit_ds.tasks.registry import register
from beit_ds.tokenizers import DiscreteVAE, DVAEOutput, code_usage, dvae_schedule, save_dvae


def check_recipe(r: TokenizerRecipe) -> None:
    """Only our dVAE trains (its views are derived: ``TokenizerRecipe.derived``)."""
    if r.tokenizer.name != "dvae":
        raise ConfigError(f"tokenizer.name={r.tokenizer.name!r}: only our 'dvae' can be trained")


def dvae_forward(model: TrainEngine, batch: MIMBatch, step: int, cfg: DVAEConfig, dtype: torch.dtype) -> StepOutput:
    """One micro-batch of dVAE training at optimizer step ``step``'s temperature and KL weight."""
    images = batch.tokenizer_images.to(model.device, dtype)
    out = cast(DVAEOutput, model(images, **dvae_schedule(step, cfg)))  # the dVAE's output
    metrics = {k: v for k, v in out.metrics().items() if k != "loss"}
    return StepOutput(out.loss, metrics)


@torch.no_grad()
def reconstruction_report(model: DiscreteVAE, loader: ImageLoader, batches: int = 8) -> dict[str, float]:
    """Hard-token reconstruction MSE vs the mean-image MSE, and code usage, on ``batches`` batches."""
    images = torch.cat([b.tokenizer_images for b, _ in zip(loader.at(10**6), range(batches))])
    tokens = model.encode(images)
    recon = model.decode(tokens)
    perplexity, usage = code_usage(tokens, model.vocab_size)
    mean_image = images.mean(0, keepdim=True).expand_as(images)
    return {
        "recon_mse": F.mse_loss(recon, images).item(),
        "mean_image_mse": F.mse_loss(mean_image, images).item(),
        "perplexity": perplexity.item(),
        "codes_used": usage.item(),
        "images": int(images.shape[0]),
    }


@torch.no_grad()
def reconstruction_samples(model: nn.Module, images: torch.Tensor, writer: MetricWriter, step: int) -> None:
    """Logs fixed tokenizer views ``images`` beside their hard-token reconstructions to TensorBoard
    (``tokenizer/reconstructions``, ``[count, 3, H, 2W]``), without touching the training RNG."""
    weight = next(model.parameters())
    images = images.to(weight.device, weight.dtype)
    training = model.training
    with torch.random.fork_rng(devices=[]):  # leave the training RNG stream untouched
        recon = model.eval().decode(model.encode(images))  # type: ignore[operator]
    model.train(training)
    writer.images(step, "tokenizer/reconstructions", torch.cat([images, recon], dim=3).float().clamp(0, 1))


def _loader(recipe: TokenizerRecipe, place: ProcessPlace) -> ImageLoader:
    """The pre-training loader supplies the tokenizer view; its masks are not used here."""
    grid = (recipe.tokenizer.image_size // recipe.tokenizer.dvae.downsample,) * 2
    no_masks = MaskingConfig(num_masking_patches=1, min_block_patches=1)
    return build_pretrain_loader(recipe.data, no_masks, grid, loader_place(recipe, place))


@register
class TokenizerTask(Task[TokenizerRecipe]):
    """Our dVAE trained on the tokenizer view; exported as ``tokenizer.safetensors`` + a report."""

    kind = "tokenizer"
    recipe_type = TokenizerRecipe
    has_samples = True
    SAMPLES = 8

    def __init__(self, recipe: TokenizerRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.loader: ImageLoader | None = None
        self.fixed: torch.Tensor | None = None
        self.dtype = torch.float32

    def check(self) -> None:
        check_recipe(self.recipe)

    def build_model(self) -> nn.Module:
        return DiscreteVAE(self.recipe.tokenizer.dvae, self.recipe.tokenizer.image_size)

    def build_loader(self) -> ImageLoader:
        self.loader = _loader(self.recipe, self.place)
        return self.loader

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        self.dtype = dtype

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        mim = cast(MIMBatch, batch)  # what build_loader()'s loader yields
        return dvae_forward(model, mim, step, self.recipe.tokenizer.dvae, self.dtype)

    def samples(self, model: nn.Module, writer: MetricWriter, step: int) -> None:
        if self.fixed is None:
            assert self.loader is not None, "build_loader() runs before the first checkpoint"
            self.fixed = next(iter(self.loader.at(10**6))).tokenizer_images[: self.SAMPLES]
        reconstruction_samples(model, self.fixed, writer, step)

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        """``tokenizer.safetensors`` and, when the recipe's data is readable here, ``report.json``;
        then ``recipe.json`` and ``export.json``."""
        task, dvae = checkpoint_dvae(saved)
        return export_tokenizer(saved, out_dir, task.recipe.data, lambda path: save_dvae(dvae, path),
                                lambda: reconstruction_report(dvae, task.build_loader()))

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> nn.Module:
        """The dVAE of ``tokenizer.safetensors`` (frozen, ``load_dvae``) for the recipe's view size."""
        no_ema(export, cls.kind, ema)
        recipe = build_dataclass(TokenizerRecipe, export.read_recipe())
        return load_tokenizer(export.path / TOKENIZER_WEIGHTS, recipe.tokenizer.image_size)

    @classmethod
    def evaluate_checkpoint(cls, saved: SavedCheckpoint) -> dict[str, float]:
        """Hard-token reconstruction MSE vs the mean image, and code usage, of the checkpoint."""
        task, dvae = checkpoint_dvae(saved)
        return {k: float(v) for k, v in reconstruction_report(dvae, task.build_loader()).items()}


def checkpoint_dvae(saved: SavedCheckpoint) -> tuple[TokenizerTask, DiscreteVAE]:
    """The task of the tokenizer checkpoint ``saved`` and its dVAE with the consolidated weights, in
    eval mode."""
    task, model = checkpoint_task(TokenizerTask, saved)
    return task, cast(DiscreteVAE, model)  # what TokenizerTask.build_model() builds
