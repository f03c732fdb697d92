"""Training BEiT v2's VQ-KD tokenizer (Peng et al. 2022, §2.1): the task of ``kind: vqkd``.

Each micro-batch: the frozen teacher's patch features of the raw view (``tasks/teacher.py``, under
no_grad, in ``teacher.dtype``), then the tokenizer's cosine reconstruction loss + commitment term;
the quantizer's EMA update happens inside that forward, all-reduced over ranks. Codebook health —
codes used this epoch, perplexity and codes used of each update, dead codes — is logged with the
loss; at the end of every epoch one line gives the epoch's usage, and the count restarts (unilm's
"Unused code in codebook" line). The EMA codebook, its counts and the initialised flag are buffers
of the model, so every checkpoint holds them and a resume continues bit for bit.

The export is ``tokenizer.safetensors`` (``tokenizer.name=vqkd tokenizer.path=…`` in a BEiT v2
pre-training recipe) plus ``report.json`` (codebook usage and perplexity of the recipe's data), its
recipe and its manifest (kind ``vqkd``); ``load_export`` of it gives the frozen tokenizer.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch
from torch import nn

from beit_ds.artifacts import TOKENIZER_WEIGHTS, ExportDir
from beit_ds.config import ConfigError, MaskingConfig
from beit_ds.config_io import build_dataclass
from beit_ds.data import build_pretrain_loader
from beit_ds.data.collate import MIMBatch
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.consolidate import checkpoint_task
from beit_ds.engine.job import loader_place
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, Loader, TrainEngine
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.engine.task import StepOutput, Task
from beit_ds.logger import get_logger
from beit_ds.recipe import VQKDRecipe
from beit_ds.tasks.exported import export_tokenizer, no_ema
from beit_ds.tasks.registry import register
from beit_ds.tasks.teacher import Teacher, check_teacher, load_teacher
from beit_ds.tokenizers.quantizer import NormEMAQuantizer, usage
from beit_ds.tokenizers.vqkd import VQKD, VQKDOutput, load_vqkd, save_vqkd


def check_recipe(r: VQKDRecipe) -> int:
    """The tokenizer is a VQ-KD whose patch size divides its view; returns the code grid side."""
    if r.tokenizer.name != "vqkd":
        raise ConfigError(f"tokenizer.name={r.tokenizer.name!r}: a recipe of kind vqkd trains tokenizer.name='vqkd'")
    return r.tokenizer.vqkd.grid(r.tokenizer.image_size)


def teacher_dtype(name: str, run: torch.dtype) -> torch.dtype:
    """``teacher.dtype`` as a torch dtype (``"auto"``: the run's)."""
    return run if name == "auto" else cast(torch.dtype, getattr(torch, name))


@torch.no_grad()
def codebook_report(model: VQKD, loader: Loader, batches: int = 8) -> dict[str, float]:
    """Codes used and perplexity of the tokens of ``batches`` batches of fixed views (a far epoch of
    ``loader``), and the codebook's dead codes (its EMA counts)."""
    images = torch.cat([cast(MIMBatch, b).tokenizer_images for b, _ in zip(loader.at(10**6), range(batches))])
    tokens = model.encode(images)
    perplexity, used = usage(torch.bincount(tokens.flatten(), minlength=model.vocab_size))
    return {
        "codes_used": used.item(),
        "perplexity": perplexity.item(),
        "dead_codes": model.quantize.health()["dead_codes"].item(),
        "codebook_size": float(model.vocab_size),
        "images": float(images.shape[0]),
    }


@register
class VQKDTask(Task[VQKDRecipe]):
    """VQ-KD on the raw view against a frozen teacher; exported as ``tokenizer.safetensors`` + a report."""

    kind = "vqkd"
    recipe_type = VQKDRecipe

    def __init__(self, recipe: VQKDRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.teacher: Teacher | None = None
        self.quantizer: NormEMAQuantizer | None = None
        self.dtype = torch.float32
        self.steps_per_epoch = 0

    def check(self) -> None:
        """The recipe, then the teacher: it loads, sees the code grid and has the decoder's width."""
        r = self.recipe
        grid = check_recipe(r)
        self.teacher = load_teacher(r.teacher)
        check_teacher(self.teacher, r.tokenizer.image_size, grid, r.tokenizer.vqkd.decoder_out_dim)

    def check_saved(self) -> None:
        """The recipe only: exporting or evaluating a checkpoint needs no teacher."""
        check_recipe(self.recipe)

    def build_model(self) -> nn.Module:
        return VQKD(self.recipe.tokenizer.vqkd, self.recipe.tokenizer.image_size)

    def build_loader(self) -> Loader:
        """The pre-training loader supplies the raw view; its masks are not used here."""
        r = self.recipe
        grid = (r.tokenizer.vqkd.grid(r.tokenizer.image_size),) * 2
        no_masks = MaskingConfig(num_masking_patches=1, min_block_patches=1)
        return build_pretrain_loader(r.data, no_masks, grid, loader_place(r, self.place))

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        assert self.teacher is not None, "check() loads the teacher before the job starts"
        self.teacher.to(engine.device, teacher_dtype(self.recipe.teacher.dtype, dtype))
        self.dtype, self.steps_per_epoch = dtype, plan.steps_per_epoch
        self.quantizer = cast(VQKD, engine.module).quantize  # what build_model() builds

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        assert self.teacher is not None
        images = cast(MIMBatch, batch).tokenizer_images.to(model.device)  # what build_loader() yields
        target = self.teacher(images)
        out = cast(VQKDOutput, model(images.to(self.dtype), target))  # the VQ-KD's output
        return StepOutput(out.loss, out.metrics())

    def after_optimizer_step(self, engine: TrainEngine, step: int) -> None:
        """At the last step of an epoch: one line of codebook usage, then a new count."""
        if self.quantizer is None or (step + 1) % self.steps_per_epoch:
            return
        health = {k: v.item() for k, v in self.quantizer.health().items()}
        k = self.quantizer.num_codes
        used = round(health["epoch_codes_used"] * k)
        get_logger().info("vqkd epoch %d: %d of %d codes used (%.1f %%), %d dead", (step + 1) // self.steps_per_epoch - 1,
                          used, k, 100.0 * used / k, round(health["dead_codes"]))
        self.quantizer.reset_usage()

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        """``tokenizer.safetensors`` and, when the recipe's data is readable here, ``report.json``;
        then ``recipe.json`` and ``export.json``."""
        task, model = checkpoint_vqkd(saved)
        return export_tokenizer(saved, out_dir, task.recipe.data, lambda path: save_vqkd(model, path),
                                lambda: codebook_report(model, task.build_loader()))

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> nn.Module:
        """The frozen VQ-KD of ``tokenizer.safetensors`` for the recipe's view size."""
        no_ema(export, cls.kind, ema)
        recipe = build_dataclass(VQKDRecipe, export.read_recipe())
        try:
            return load_vqkd(export.path / TOKENIZER_WEIGHTS, recipe.tokenizer.image_size)
        except (OSError, ValueError) as err:
            raise ConfigError(str(err)) from None

    @classmethod
    def evaluate_checkpoint(cls, saved: SavedCheckpoint) -> dict[str, float]:
        """Codebook usage and perplexity of the checkpoint's tokens on its recipe's data."""
        task, model = checkpoint_vqkd(saved)
        return codebook_report(model, task.build_loader())


def checkpoint_vqkd(saved: SavedCheckpoint) -> tuple[VQKDTask, VQKD]:
    """The task of the VQ-KD checkpoint ``saved`` (its teacher not loaded: exporting needs none) and
    its tokenizer with the consolidated weights and codebook, in eval mode."""
    task, model = checkpoint_task(VQKDTask, saved)
    return task, cast(VQKD, model)  # what VQKDTask.build_model() builds
