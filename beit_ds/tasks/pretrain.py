"""Masked-image-modeling pre-training (seed §2.3-2.5, §5): the task of ``kind: pretrain``.

``check_views`` ties the model, the two data views and the tokenizer together before any
process group starts; ``mim_forward`` is one micro-batch (tokenize under no_grad → MIM loss);
``export_mim`` writes the MIM model and its backbone in our, timm's and Hugging Face's layouts,
which ``PretrainTask.load_exported`` reads back.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

import torch

from beit_ds.artifacts import WEIGHTS, ExportDir
from beit_ds.assets import resolve
from beit_ds.config import ConfigError
from beit_ds.config.seg_data import IMAGENET_MEAN, IMAGENET_STD
from beit_ds.config_io import build_dataclass
from beit_ds.data import ImageLoader, build_pretrain_loader
from beit_ds.data.collate import MIMBatch
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.checkpoint import verify
from beit_ds.engine.consolidate import checkpoint_task, consolidated_state_dict
from beit_ds.engine.job import Preflight, loader_place
from beit_ds.engine.job import preflight as job_preflight
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.runtime import warn_if_oversubscribed
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.engine.task import StepOutput, Task
from beit_ds.masking import MaskingError, build_mask_generator
from beit_ds.metrics import MetricWriter
from beit_ds.models import MIMOutput, build_mim_model, build_model
from beit_ds.models.convert import backbone_state_dict
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.exported import no_ema
from beit_ds.tasks.formats import write_timm_and_hf
from beit_ds.tasks.registry import register
from beit_ds.tokenizers import VisualTokenizer, build_tokenizer


def check_views(r: PretrainRecipe) -> None:
    """The tokenizer file exists and the masking fits the patch grid. The views' sizes, the
    tokenizer view and the vocabulary are derived from the model and the tokenizer
    (``PretrainRecipe.derived``; checked in ``job.preflight``)."""
    check_masking(r)
    agg = r.mim.aggregation
    if agg.enabled and agg.early_layer > r.model.depth:
        raise ConfigError(f"mim.aggregation.early_layer={agg.early_layer}: expected at most model.depth={r.model.depth}")
    if r.mim.target == "pixels":
        return
    if not r.tokenizer.path or not resolve(r.tokenizer.path).is_file():
        raise ConfigError(
            f"tokenizer.path={r.tokenizer.path!r}: no such file (expected {r.tokenizer.name} weights)"
        )


def check_masking(r: PretrainRecipe) -> None:
    """The masking section fits the model's patch grid (it needs nothing else)."""
    try:
        build_mask_generator(r.masking, r.model.grid_size)
    except MaskingError as err:
        grid = "" if err.names_grid else f" (model patch grid {r.model.grid_size})"
        raise ConfigError(f"masking.{err}{grid}") from None


def preflight(recipe: PretrainRecipe, ds_path: str | Path, world_size: int) -> Preflight:
    """Every pre-training check that needs no process group (one-line ``ConfigError``)."""
    check_views(recipe)
    return job_preflight(recipe, ds_path, world_size)


def mim_forward(
    model: TrainEngine, batch: MIMBatch, tokenizer: VisualTokenizer | None, dtype: torch.dtype
) -> StepOutput:
    """One micro-batch: visual tokens (or pixels) as targets, the MIM loss and masked-token accuracy
    (with patch aggregation, the summed loss and its parts: ``MIMOutput.parts``).

    Only the patch view is cast to the run's ``dtype``: the tokenizer view reaches the tokenizer
    (which casts to its own ``tokenizer.dtype``) or the pixel loss in the loader's fp32, since a
    bf16-rounded view alone changes 1.3 % of DALL-E's tokens."""
    batch = batch.to(model.device)
    if tokenizer is None:
        target = batch.tokenizer_images
    else:
        with torch.no_grad():
            target = tokenizer.encode(batch.tokenizer_images)
    out = cast(MIMOutput, model(batch.images.to(dtype), batch.bool_masked_pos, target))  # the MIM model's output
    return StepOutput(out.loss, {"mim_accuracy": out.accuracy, **out.parts})


def frozen_tokenizer(recipe: PretrainRecipe, device: torch.device, dtype: torch.dtype) -> VisualTokenizer | None:
    """The frozen tokenizer on the engine's device, in ``tokenizer.dtype`` (default float32);
    ``auto`` runs it in the run's precision (bf16 / fp16 / fp32)."""
    if recipe.mim.target != "tokens":
        return None
    try:
        tokenizer = build_tokenizer(recipe.tokenizer).to(device)
    except ConfigError:
        raise  # already one line naming its key (an empty tokenizer.path)
    except (ValueError, OSError) as err:  # a file that exists but holds no tokenizer of that kind
        raise ConfigError(f"tokenizer.path={recipe.tokenizer.path!r}: {err}".splitlines()[0]) from None
    if recipe.tokenizer.dtype == "auto":
        tokenizer.to(dtype)
    return tokenizer


@register
class PretrainTask(Task[PretrainRecipe]):
    """Masked image modeling: the MIM model, the two-view loader with masks, the frozen tokenizer."""

    kind = "pretrain"
    recipe_type = PretrainRecipe
    has_samples = True  # attention maps + MIM reconstructions at each checkpoint
    SAMPLES = 4

    def __init__(self, recipe: PretrainRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.tokenizer: VisualTokenizer | None = None
        self.dtype = torch.float32
        self.loader: ImageLoader | None = None
        self.fixed: MIMBatch | None = None

    def check(self) -> None:
        check_views(self.recipe)

    def build_model(self) -> torch.nn.Module:
        model = build_mim_model(self.recipe.model, self.recipe.mim)
        model.set_grad_checkpointing(self.recipe.model.grad_checkpointing)
        return model

    def build_loader(self) -> ImageLoader:
        r = self.recipe
        self.loader = build_pretrain_loader(r.data, r.masking, r.model.grid_size, loader_place(r, self.place))
        warn_if_oversubscribed(0 if r.data.on_device else r.data.num_workers)
        return self.loader

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        self.tokenizer, self.dtype = frozen_tokenizer(self.recipe, engine.device, dtype), dtype

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        return mim_forward(model, cast(MIMBatch, batch), self.tokenizer, self.dtype)  # what build_loader() yields

    def samples(self, model: torch.nn.Module, writer: MetricWriter, step: int) -> None:
        """TensorBoard ``pretrain/attention`` and ``pretrain/mim`` of fixed images (RNG untouched)."""
        from beit_ds.visualize.samples import fixed_batch, pretrain_samples

        if self.fixed is None:
            self.fixed = fixed_batch(self.loader, self.SAMPLES)
        t = self.recipe.data.transform
        pretrain_samples(model, self.tokenizer, self.fixed, writer, step, (t.mean, t.std))

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        return export_mim(saved, out_dir)

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> torch.nn.Module:
        """The ``BeitForMaskedImageModeling`` of ``model.safetensors``."""
        no_ema(export, cls.kind, ema)
        recipe = build_dataclass(PretrainRecipe, export.read_recipe())
        model = build_mim_model(recipe.model, recipe.mim)
        model.load_state_dict(export.read_weights(WEIGHTS), strict=True)
        return model.eval()

    @classmethod
    @torch.no_grad()
    def evaluate_checkpoint(cls, saved: SavedCheckpoint, batches: int = 8) -> dict[str, float]:
        """MIM loss and masked-token accuracy of the checkpoint on ``batches`` batches of its data
        (with patch aggregation also ``agg_loss`` and ``agg_accuracy``, the aggregation head's)."""
        task, model = checkpoint_task(cls, saved)
        tokenizer = frozen_tokenizer(task.recipe, torch.device("cpu"), torch.float32)
        totals: dict[str, float] = {}
        n = 0
        for batch, _ in zip(task.build_loader().at(0), range(batches)):
            batch = batch.to(torch.device("cpu"))  # data.on_device builds it on the training device
            target = batch.tokenizer_images if tokenizer is None else tokenizer.encode(batch.tokenizer_images)
            out = model(batch.images, batch.bool_masked_pos, target)
            values = {"mim_loss": out.loss, "mim_accuracy": out.accuracy, **out.parts}
            for key, value in values.items():
                totals[key] = totals.get(key, 0.0) + float(value) * len(batch.images)
            n += len(batch.images)
        return {**{k: v / max(n, 1) for k, v in totals.items()}, "images": float(n)}


def export_mim(saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
    """``model.safetensors`` (the MIM model, our = unilm layout) + ``recipe.json``, and the backbone
    in ``timm/`` and ``hf/``, from the pre-training checkpoint ``saved``; then ``export.json``."""
    verify(saved.tag_dir, checksums=False)
    recipe = build_dataclass(PretrainRecipe, saved.recipe)
    model = build_mim_model(recipe.model, recipe.mim)
    model.load_state_dict(consolidated_state_dict(saved.tag_dir), strict=True)
    export = ExportDir(out_dir).create()
    ours = export.write_weights(WEIGHTS, model.state_dict(), source=str(saved.tag_dir))
    backbone = build_model(recipe.model)  # without the MIM-only keys: mask token, LM head, aggregation head
    backbone.load_state_dict(backbone_state_dict(model.state_dict()), strict=True)
    t = recipe.data.transform
    v2 = (tuple(t.mean), tuple(t.std)) == (IMAGENET_MEAN, IMAGENET_STD)  # timm's beitv2_* configs normalise so
    paths = [ours, *write_timm_and_hf(backbone, export, v2)]
    export.finish(saved.kind, saved.recipe, source=str(saved.tag_dir))
    return paths

