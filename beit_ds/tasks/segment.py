"""Semantic segmentation fine-tuning (seed §3.2, App. A, B, I): the task of ``kind: segmentation``.

``SegmentationTask`` (``kind: segmentation``) trains a ``BeitForSegmentation`` (UperNet or
SETR-PUP on the BEiT backbone) started from ``finetune.init`` on labelled crops, through the
shared job / loop / DeepSpeed path (checkpoints, exact and elastic resume, SLURM, layer-wise lr
decay from the backbone's metadata). BatchNorm is synchronised over ranks (``decode.norm``).
After each checkpoint every rank takes its share of the validation images, predicted as
``inference`` says (whole / sliding window, multi-scale + flip), and the dataset-level mIoU,
mAcc and aAcc (mmseg's definitions, summed over ranks) are logged under ``val/`` with a per-class
table; rank 0 writes prediction overlays of the first ``inference.overlays`` images as a PNG.
A validation pair that cannot be read is never scored nor replaced: it is counted (``val/skipped``,
in the log and the JSON) and more than ``data.max_skip_fraction`` of them stop with one line.
``evaluate_recipe`` is the same evaluation without training (``launch/evaluate.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, cast

import numpy as np
import numpy.typing as npt
import torch

from beit_ds.artifacts import WEIGHTS, ExportDir, RunDir
from beit_ds.config import ConfigError
from beit_ds.config_io import build_dataclass
from beit_ds.data import LoaderPlace, ResumableLoader
from beit_ds.data.segmentation import SegBatch, build_segmentation_loader
from beit_ds.distributed import ProcessPlace, place_from_env
from beit_ds.engine.consolidate import checkpoint_task
from beit_ds.engine.job import loader_place
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.runtime import init_distributed
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.engine.task import StepOutput, Task
from beit_ds.engine.weights import to_our_layout
from beit_ds.logger import get_logger, init_logging
from beit_ds.metrics import MetricWriter
from beit_ds.recipe import SegmentationRecipe, TrainingRecipe
from beit_ds.safe_write import write_text
from beit_ds.segmentation import IoUAccumulator, SegMetrics, predict
from beit_ds.segmentation.convert import to_hf_segmentation, to_mmseg_state_dict
from beit_ds.segmentation.layers import resize, sync_batchnorm
from beit_ds.segmentation.loading import is_segmentation_state_dict, load_segmentation_weights
from beit_ds.segmentation.model import BeitForSegmentation, SegOutput
from beit_ds.tasks.exported import no_ema
from beit_ds.tasks.registry import register
from beit_ds.tasks.weights import read_init_raw
from beit_ds.visualize.samples import unnormalize
from beit_ds.visualize.segmentation import overlay_figure, palette, save_overlays


def check_recipe(r: SegmentationRecipe) -> None:
    """Model, decoder and inference agree (one-line ``ConfigError``), before any process group."""
    d, m = r.decode, r.model
    if d.out_indices[-1] >= m.depth:
        raise ConfigError(f"decode.out_indices={list(d.out_indices)}: model.depth={m.depth} has blocks 0..{m.depth - 1}")
    if d.head == "upernet" and m.patch_size not in (8, 16):
        raise ConfigError(f"model.patch_size={m.patch_size}: the UperNet pyramid is defined for patch 16 or 8")
    crop = r.inference.crop or m.img_size
    if crop % m.patch_size:
        raise ConfigError(f"inference.crop={crop}: expected a multiple of model.patch_size={m.patch_size}")


def build_segmenter(r: SegmentationRecipe, init: bool = True) -> BeitForSegmentation:
    """The model of ``r`` with ``finetune.init`` loaded when ``init`` (random weights for ``''``)."""
    model = BeitForSegmentation(r.model, r.decode, r.finetune.label_smoothing)
    if not (init and r.finetune.init):
        get_logger().info("segmentation: random initialisation (finetune.init is empty)")
        return model
    sd, source = read_init_raw(r.finetune.init, whole="segmentation")
    if not is_segmentation_state_dict(sd):  # a backbone: timm / unilm / ours / HF into our layout
        sd = to_our_layout(sd, r.finetune.init)
    try:
        fresh = load_segmentation_weights(model, sd, f"finetune.init={r.finetune.init!r}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    heads = sum(k.startswith(("neck.", "decode_head.", "auxiliary_head.")) for k in fresh)
    get_logger().info("loaded %s; newly initialised: %d task-layer and %d backbone tensors", source, heads,
                      len(fresh) - heads)
    return model


def _image_uint8(
    image: torch.Tensor, size: tuple[int, int], mean: tuple[float, ...], std: tuple[float, ...]
) -> npt.NDArray[np.uint8]:
    """A normalised ``[3, h, w]`` image back to uint8 ``[H, W, 3]`` at the label's ``size``."""
    x = resize(unnormalize(image[None], mean, std), size)[0]
    return (x.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


@torch.no_grad()
def evaluate_segmentation(model: BeitForSegmentation, loader: Iterable[SegBatch], r: SegmentationRecipe,
                          dtype: torch.dtype, overlay_png: Path | None = None) -> SegMetrics:
    """Dataset-level metrics of ``model`` over ``loader`` (batches of one image, labels at their
    original size; an empty batch is a pair that could not be read: skipped and counted from the
    loader's ``report``), summed over ranks; overlays of the first images to ``overlay_png``."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    acc, inf = IoUAccumulator(model.num_classes, device=device), replace(r.inference, crop=r.inference.crop or r.model.img_size)
    panels: list[npt.NDArray[np.uint8]] = []
    colours = palette(model.num_classes)
    report = getattr(loader, "report", None)
    skipped_before = report.skipped_reads if report is not None else 0
    for batch in loader:
        if len(batch) == 0:
            continue
        batch = batch.to(device)
        size = (batch.labels.shape[-2], batch.labels.shape[-1])
        probs = predict(lambda x: model.logits(x.to(dtype)).float(), batch.images, size, inf, r.model.patch_size)
        pred = probs.argmax(1)
        acc.update(pred, batch.labels)
        if overlay_png is not None and len(panels) < inf.overlays:
            image = _image_uint8(batch.images[0], size, r.data.transform.mean, r.data.transform.std)
            panels.append(overlay_figure(image, batch.labels[0].cpu().numpy(), pred[0].cpu().numpy(), colours))
    model.train(was_training)
    if report is not None and report.skipped_reads > skipped_before:
        acc.skip(report.skipped_reads - skipped_before)
        get_logger().warning("evaluation: %d image/label pairs could not be read and are not scored; %s",
                             report.skipped_reads - skipped_before, report.summary())
    acc.all_reduce()
    if overlay_png is not None and panels:
        save_overlays(overlay_png, panels)
    return acc.compute()


def _log_eval(metrics: SegMetrics, what: str) -> None:
    get_logger().info("%s: mIoU %.2f %%, mAcc %.2f %%, aAcc %.2f %% (%d images, %d unreadable pairs skipped)", what,
                      metrics.miou, metrics.macc, metrics.aacc, metrics.images, metrics.skipped)


def _eval_place(r: SegmentationRecipe, place: ProcessPlace) -> LoaderPlace:
    where = loader_place(r, place)
    return LoaderPlace(batch_size=1, rank=where.rank, world_size=where.world_size, seed=where.seed)


@register
class SegmentationTask(Task[SegmentationRecipe]):
    """Segmentation fine-tuning: the model from ``finetune.init``, the labelled crop loader, the
    per-pixel loss (decode + auxiliary), validation after every checkpoint (every rank)."""

    kind = "segmentation"
    recipe_type: ClassVar[type[TrainingRecipe]] = SegmentationRecipe
    backbone_prefix = "backbone."

    def __init__(self, recipe: SegmentationRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.has_evaluate = recipe.finetune.evaluate
        self.eval_loader: ResumableLoader | None = None
        self.dtype = torch.float32

    def check(self) -> None:
        check_recipe(self.recipe)
        r = self.recipe
        per_norm = r.schedule.micro_batch_size * (self.place.world_size if r.decode.norm == "sync_bn" else 1)
        if r.decode.head == "upernet" and per_norm < 2:
            raise ConfigError(
                f"schedule.micro_batch_size={r.schedule.micro_batch_size}: UperNet's BatchNorm after the 1x1 pooling"
                f" sees {per_norm} value per channel on {self.place.world_size} process(es) with decode.norm="
                f"{r.decode.norm!r}; expected at least 2 images per (synchronised) batch"
            )

    def build_model(self) -> torch.nn.Module:
        model = build_segmenter(self.recipe)
        if self.recipe.decode.norm == "sync_bn" and self.place.world_size > 1:
            cuda = torch.cuda.is_available()
            device = torch.device("cuda", self.place.local_rank) if cuda else torch.device("cpu")
            model = sync_batchnorm(model, device)  # type: ignore[assignment]
        return model

    def build_loader(self) -> ResumableLoader:
        r = self.recipe
        return build_segmentation_loader(r.data, "train", loader_place(r, self.place), r.decode.num_classes)

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        self.dtype = dtype

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        pairs = cast(SegBatch, batch).to(model.device)  # what build_loader() yields
        out = cast(SegOutput, model(pairs.images.to(self.dtype), pairs.labels))  # the segmenter's output
        assert out.loss is not None, "given labels, the model computes its loss"
        return StepOutput(out.loss, out.metrics)

    def evaluate(self, model: torch.nn.Module, writer: MetricWriter, step: int) -> None:
        r = self.recipe
        if self.eval_loader is None:
            self.eval_loader = build_segmentation_loader(r.data, "eval", _eval_place(r, self.place), r.decode.num_classes)
        png = RunDir(r.checkpoint.output_dir).overlays / f"step_{step}.png" if self.place.is_main else None
        metrics = evaluate_segmentation(model, self.eval_loader, r, self.dtype, png)  # type: ignore[arg-type]
        writer.write(step, metrics.as_dict(), prefix="val")
        _log_eval(metrics, f"val at step {step}")
        get_logger().info("per-class IoU at step %d:\n%s", step, metrics.table(class_names(r)))

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        return export_segmenter(saved, out_dir)

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> torch.nn.Module:
        """The ``BeitForSegmentation`` of ``model.safetensors`` (``finetune.init`` is not read)."""
        no_ema(export, cls.kind, ema)
        model = build_segmenter(build_dataclass(SegmentationRecipe, export.read_recipe()), init=False)
        model.load_state_dict(export.read_weights(WEIGHTS), strict=True)
        return model.eval()

    @classmethod
    def evaluate_checkpoint(cls, saved: SavedCheckpoint) -> dict[str, float]:
        task, model = checkpoint_task(cls, saved)
        r: SegmentationRecipe = task.recipe
        loader = build_segmentation_loader(r.data, "eval", _eval_place(r, ProcessPlace()), r.decode.num_classes)
        return evaluate_segmentation(model, loader, r, torch.float32).as_dict()  # type: ignore[arg-type]

    @classmethod
    def evaluate_recipe(cls, recipe: SegmentationRecipe, out_json: Path | None) -> dict[str, float]:
        return evaluate_recipe(recipe, out_json)


def class_names(r: SegmentationRecipe) -> list[str]:
    """``decode.class_names`` when given, else ``class 0`` … (the table's first column)."""
    return list(r.decode.class_names) or [f"class {i}" for i in range(r.decode.num_classes)]


def export_segmenter(saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
    """``model.safetensors`` (ours), ``mmseg/model.safetensors`` (unilm's layout),
    ``hf/`` (``BeitForSemanticSegmentation``, UperNet with channels = the backbone width) and
    ``recipe.json`` of the segmentation checkpoint ``saved``; then ``export.json``."""
    _, model = checkpoint_task(SegmentationTask, saved)
    source = str(saved.tag_dir)
    export = ExportDir(out_dir).create()
    sd = model.state_dict()
    paths = [export.write_weights(WEIGHTS, sd, source=source),
             export.sub("mmseg").write_weights(WEIGHTS, to_mmseg_state_dict(sd), source=source)]
    try:
        config, hf_sd = to_hf_segmentation(model)  # type: ignore[arg-type]
    except ValueError as err:
        get_logger().info("no Hugging Face export: %s", err)
    else:
        hf = export.sub("hf")
        paths.append(hf.write_weights(WEIGHTS, hf_sd, format="pt"))
        hf.write_json("config.json", {"model_type": "beit", "architectures": ["BeitForSemanticSegmentation"], **config})
    export.finish(saved.kind, saved.recipe, source=source)
    return paths


def evaluate_recipe(recipe: SegmentationRecipe, out_json: Path | None = None) -> dict[str, float]:
    """mIoU / mAcc / aAcc of ``finetune.init`` on the recipe's validation split (every rank of a
    ``deepspeed`` launch takes a share), with overlays next to ``out_json``."""
    if not recipe.finetune.init:
        raise ConfigError("finetune.init='': expected the weights to evaluate")
    check_recipe(recipe)
    init_distributed()
    place = place_from_env()
    init_logging(place.rank)
    device = torch.device("cuda", place.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    model = build_segmenter(recipe).to(device)
    loader = build_segmentation_loader(recipe.data, "eval", _eval_place(recipe, place), recipe.decode.num_classes)
    png = out_json.with_suffix(".png") if out_json is not None and place.is_main else None
    metrics = evaluate_segmentation(model, loader, recipe, torch.float32, png)
    _log_eval(metrics, f"evaluation of {recipe.finetune.init}")
    get_logger().info("per-class IoU:\n%s", metrics.table(class_names(recipe)))
    result = {"init": recipe.finetune.init, **metrics.as_dict(), "images": float(metrics.images),
              "per_class_iou": metrics.per_class_iou}
    if out_json is not None and place.is_main:
        out_json.parent.mkdir(parents=True, exist_ok=True)
        write_text(out_json, json.dumps(result, indent=1))
    return metrics.as_dict()
