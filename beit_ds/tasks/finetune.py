"""Image classification fine-tuning and linear probes (seed §3.1, App. D, F, H): the tasks of
``kind: finetune`` and ``kind: linear_probe``.

Fine-tuning trains a ``BeitForImageClassification`` started from ``finetune.init`` (any format
``tasks/weights.py`` reads; positions interpolated to ``model.img_size``; a shared relative bias
becomes per-layer tables) with layer-wise lr decay (``optim.layer_decay``), label smoothing,
Mixup / CutMix, RandAugment, random erasing and an optional EMA of the weights. A
``LinearProbeRecipe`` trains only a linear layer on a frozen backbone's block ``probe.layer``.
After every checkpoint the model (and its EMA) is evaluated on the evaluation split: top-1 / top-5
accuracy (%) and cross-entropy, written by the ``MetricWriter`` under ``val/`` (``val_ema/``).
``evaluate_recipe`` is the same evaluation without training (``launch/evaluate.py``).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import ClassVar, cast

import torch
import torch.nn.functional as F

from beit_ds.artifacts import EMA_WEIGHTS, WEIGHTS, ExportDir
from beit_ds.config import AugmentConfig, ConfigError
from beit_ds.config_io import build_dataclass, to_dict
from beit_ds.data import ImageLoader, build_finetune_loader
from beit_ds.data.collate import ClassBatch
from beit_ds.data.device_loader import check_on_device
from beit_ds.data.mixup import Mixup, mix_rng
from beit_ds.distributed import ProcessPlace, all_reduce_sum, place_from_env
from beit_ds.engine.consolidate import consolidated_state_dict
from beit_ds.engine.ema import WeightEMA
from beit_ds.engine.job import loader_place
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.runtime import init_distributed
from beit_ds.engine.saved import SavedCheckpoint, read_saved
from beit_ds.engine.task import StepOutput, Task
from beit_ds.engine.weights import checkpoint_dir
from beit_ds.logger import get_logger, init_logging
from beit_ds.metrics import MetricWriter
from beit_ds.models import BeitForImageClassification, ClassifierOutput, build_classifier
from beit_ds.recipe import KINDS, ClassificationRecipe, FinetuneRecipe, LinearProbeRecipe, TrainingRecipe
from beit_ds.safe_write import write_text
from beit_ds.tasks.formats import write_timm_and_hf
from beit_ds.tasks.registry import register, task_type
from beit_ds.tasks.weights import read_init_weights

CLASSIFIERS = ("finetune", "linear_probe")
NO_MIXING = AugmentConfig(rand_augment_ops=0, random_erasing=0.0, mixup=0.0, cutmix=0.0)


def probe_layer(recipe: ClassificationRecipe) -> int | None:
    """The tapped block of a linear probe (``probe.layer``, default the middle one), else None."""
    if not isinstance(recipe, LinearProbeRecipe):
        return None
    return recipe.probe.layer or (recipe.model.depth + 1) // 2


def probe_pool(recipe: ClassificationRecipe) -> str:
    """How a linear probe pools block ``probe.layer`` (``probe.pool``); ``"mean"`` otherwise."""
    return recipe.probe.pool if isinstance(recipe, LinearProbeRecipe) else "mean"


def check_recipe(r: ClassificationRecipe) -> None:
    """Model, data view and probe agree (one-line ``ConfigError``), before any process group."""
    m = r.model
    if m.num_classes < 1:
        raise ConfigError(f"model.num_classes={m.num_classes}: expected the number of classes (>= 1)")
    if m.global_pool not in ("avg", "token"):
        raise ConfigError(
            f"model.global_pool={m.global_pool!r}: expected 'avg' (mean of patch tokens) or 'token'"
        )
    layer = probe_layer(r)
    if layer is not None and layer > m.depth:
        raise ConfigError(f"probe.layer={layer}: expected a block in [1, model.depth={m.depth}]")
    check_on_device(r.data, r.augment if isinstance(r, FinetuneRecipe) else None)


def build_finetune_model(r: ClassificationRecipe, head: str | None = None) -> BeitForImageClassification:
    """The classifier (or probe) of ``r`` with ``finetune.init`` loaded (``head`` overrides its policy)."""
    model = build_classifier(r.model, r.finetune.head_init_scale, probe_layer(r), probe_pool(r))
    log = get_logger()
    if not r.finetune.init:
        log.info("%s: random initialisation (finetune.init is empty)", r.kind)
        return model
    sd, source = read_init_weights(r.finetune.init)
    try:
        fresh = model.load_backbone(sd, head or r.finetune.head, source=f"finetune.init={r.finetune.init!r}")
    except ValueError as err:
        raise ConfigError(str(err)) from None
    log.info("loaded %s; newly initialised: %s", source, ", ".join(fresh) or "nothing")
    return model


def cls_forward(model: TrainEngine, batch: ClassBatch, mix: Mixup, seed: int, dtype: torch.dtype) -> StepOutput:
    """One micro-batch: Mixup / CutMix with smoothed targets, soft-target cross-entropy, accuracy."""
    rng = mix_rng(seed, batch.indices)  # before the move: the loaders' indices are on the host (no sync)
    batch = batch.to(model.device)
    images, targets = mix(batch.images, batch.labels, rng)
    out = cast(ClassifierOutput, model(images.to(dtype), targets))  # the classifier's output
    accuracy = (out.logits.argmax(-1) == batch.labels).float().mean()
    return StepOutput(out.loss, {"accuracy": accuracy.detach()})


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: Iterable[ClassBatch], dtype: torch.dtype) -> dict[str, float]:
    """Top-1 / top-5 accuracy (%) and mean cross-entropy over ``loader``, summed over ranks."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 hits, top-5 hits, images
    for batch in loader:
        batch = batch.to(device, dtype)
        logits = model(batch.images).float()
        top = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        hits = top == batch.labels.unsqueeze(1)
        sums += torch.stack(
            [
                F.cross_entropy(logits, batch.labels, reduction="sum").double(),
                hits[:, 0].sum().double(),
                hits.any(-1).sum().double(),
                torch.tensor(float(len(batch)), dtype=torch.float64, device=device),
            ]
        )
    model.train(was_training)
    loss, top1, top5, n = all_reduce_sum(sums).tolist()
    n = max(n, 1.0)
    return {"top1": 100.0 * top1 / n, "top5": 100.0 * top5 / n, "loss": loss / n, "images": n}


def _log_eval(metrics: dict[str, float], what: str) -> None:
    get_logger().info(
        "%s: top-1 %.2f %%, top-5 %.2f %%, loss %.4f (%d images)",
        what,
        metrics["top1"],
        metrics["top5"],
        metrics["loss"],
        metrics["images"],
    )


def export_classifier(saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
    """``model.safetensors`` (+ ``model_ema.safetensors``, ``recipe.json``) and, for fine-tuning,
    ``timm/`` and ``hf/`` exports of the classifier in ``saved``; then ``export.json``."""
    tag_dir, client = saved.tag_dir, saved.client
    recipe = cast(ClassificationRecipe, build_dataclass(KINDS[saved.kind], saved.recipe))
    model = build_classifier(
        recipe.model, recipe.finetune.head_init_scale, probe_layer(recipe), probe_pool(recipe)
    )
    model.load_state_dict(consolidated_state_dict(tag_dir), strict=True)
    export = ExportDir(out_dir).create()
    paths = [export.write_weights(WEIGHTS, model.state_dict())]
    ema = client.get("ema")
    if isinstance(ema, dict):
        paths.append(export.write_weights(EMA_WEIGHTS, ema))
    if probe_layer(recipe) is None:
        paths += write_timm_and_hf(model, export)
    export.finish(saved.kind, saved.recipe, source=str(tag_dir))
    return paths


def load_classifier(export: ExportDir, kind: str, ema: bool) -> BeitForImageClassification:
    """The classifier or probe of a ``kind`` export (``ema``: ``model_ema.safetensors``), built
    from its recipe as ``export_classifier`` built it."""
    recipe = cast(ClassificationRecipe, build_dataclass(KINDS[kind], export.read_recipe()))
    if ema and not (export.path / EMA_WEIGHTS).is_file():
        raise ConfigError(f"{export.path}: no {EMA_WEIGHTS} (the run kept no EMA: finetune.ema_decay=0)")
    model = build_classifier(recipe.model, recipe.finetune.head_init_scale, probe_layer(recipe), probe_pool(recipe))
    model.load_state_dict(export.read_weights(EMA_WEIGHTS if ema else WEIGHTS), strict=True)
    return model.eval()


@register
class FinetuneTask(Task[ClassificationRecipe]):
    """Fine-tuning: the classifier started from ``finetune.init``, the labelled loaders, Mixup /
    CutMix, the optional EMA (in the client state), validation after every checkpoint (every rank)."""

    kind = "finetune"
    recipe_type: ClassVar[type[TrainingRecipe]] = FinetuneRecipe

    def __init__(self, recipe: ClassificationRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.augment = recipe.augment if isinstance(recipe, FinetuneRecipe) else NO_MIXING
        self.has_evaluate = recipe.finetune.evaluate
        self.classes: tuple[str, ...] = ()
        self.eval_loader: ImageLoader | None = None
        self.ema: WeightEMA | None = None
        self.mix = Mixup(self.augment, recipe.model.num_classes, recipe.finetune.label_smoothing)
        self.dtype = torch.float32

    def check(self) -> None:
        check_recipe(self.recipe)

    def build_model(self) -> torch.nn.Module:
        return build_finetune_model(self.recipe)

    def build_loader(self) -> ImageLoader:
        r = self.recipe
        augment = self.augment if isinstance(r, FinetuneRecipe) else None
        loader = build_finetune_loader(r.data, "train", loader_place(r, self.place), augment=augment)
        classes = loader.classes or ()  # labelled: build_finetune_loader requires it
        if len(classes) != r.model.num_classes:
            more = ", …" if len(classes) > 4 else ""
            raise ConfigError(
                f"model.num_classes={r.model.num_classes}: the training set has {len(classes)}"
                f" classes ({', '.join(classes[:4])}{more})"
            )
        self.classes = tuple(classes)
        return loader

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        self.dtype = dtype
        if self.recipe.finetune.ema_decay > 0:
            self.ema = WeightEMA(engine.module, self.recipe.finetune.ema_decay)

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        labelled = cast(ClassBatch, batch)  # what build_loader() yields
        return cls_forward(model, labelled, self.mix, self.recipe.schedule.seed, self.dtype)

    def after_optimizer_step(self, engine: TrainEngine, step: int) -> None:
        if self.ema is not None:
            self.ema.update(engine.module)

    def evaluate(self, model: torch.nn.Module, writer: MetricWriter, step: int) -> None:
        """Validation of the weights (``val/``) and of their EMA (``val_ema/``)."""
        if self.eval_loader is None:
            where = loader_place(self.recipe, self.place)
            self.eval_loader = build_finetune_loader(self.recipe.data, "eval", where, classes=self.classes)
        metrics = evaluate(model, self.eval_loader, self.dtype)
        writer.write(step, metrics, prefix="val")
        _log_eval(metrics, f"val at step {step}")
        if self.ema is not None:
            with self.ema.applied_to(model):
                metrics = evaluate(model, self.eval_loader, self.dtype)
            writer.write(step, metrics, prefix="val_ema")
            _log_eval(metrics, f"val_ema at step {step}")

    def extra_state(self) -> dict[str, object]:
        return {"ema": self.ema.state_dict()} if self.ema is not None else {}

    def restore(self, client: Mapping[str, object], tag_dir: Path) -> None:
        if self.ema is None:
            return
        ema = client.get("ema")
        if not isinstance(ema, dict):
            decay = self.recipe.finetune.ema_decay
            raise ConfigError(f"finetune.ema_decay={decay}: checkpoint {tag_dir} has no EMA to resume")
        self.ema.load_state_dict(ema)

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        return export_classifier(saved, out_dir)

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> torch.nn.Module:
        return load_classifier(export, cls.kind, ema)

    @classmethod
    def evaluate_recipe(cls, recipe: ClassificationRecipe, out_json: Path | None) -> dict[str, float]:
        return evaluate_recipe(recipe, out_json)


@register
class LinearProbeTask(FinetuneTask):
    """A linear probe: the same job on a frozen backbone's block ``probe.layer``, no mixing."""

    kind = "linear_probe"
    recipe_type = LinearProbeRecipe


def evaluate_recipe(recipe: ClassificationRecipe, out_json: Path | None = None) -> dict[str, float]:
    """Evaluate ``finetune.init``. A checkpoint is evaluated as its stored ``kind`` says: a
    fine-tuning / probe checkpoint with its own architecture on this recipe's evaluation split
    (every rank of a ``deepspeed`` launch takes a share; class numbers follow the evaluation set's
    class names), a pre-training checkpoint by MIM loss / masked-token accuracy and a tokenizer by
    reconstruction error, each on its own recipe's data. Other weights use this recipe's architecture."""
    if not recipe.finetune.init:
        raise ConfigError("finetune.init='': expected the weights to evaluate")
    init = recipe.finetune.init
    tag_dir = checkpoint_dir(Path(init).expanduser()) if Path(init).expanduser().is_dir() else None
    if tag_dir is not None:
        saved = read_saved(tag_dir)
        if saved.kind in CLASSIFIERS:
            stored = cast(ClassificationRecipe, build_dataclass(KINDS[saved.kind], saved.recipe))
            recipe = replace(stored, data=recipe.data, finetune=replace(stored.finetune, init=init))
        else:
            init_logging(0)
            metrics = task_type(saved.kind, f"finetune.init={init!r}").evaluate_checkpoint(saved)
            get_logger().info("evaluation of %s checkpoint %s: %s", saved.kind, tag_dir, metrics)
            _write_json(out_json, {"init": init, "kind": saved.kind, **metrics})
            return metrics
    return _evaluate_classifier(recipe, out_json)


def _write_json(path: Path | None, data: Mapping[str, object]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text(path, json.dumps(data, indent=1))


def _evaluate_classifier(recipe: ClassificationRecipe, out_json: Path | None) -> dict[str, float]:
    check_recipe(recipe)
    init_distributed()
    place = place_from_env()
    init_logging(place.rank)
    model = build_finetune_model(recipe, head="keep")
    device = torch.device("cuda", place.local_rank) if torch.cuda.is_available() else torch.device("cpu")
    loader = build_finetune_loader(recipe.data, "eval", loader_place(recipe, place))
    metrics = evaluate(model.to(device), loader, torch.float32)
    _log_eval(metrics, f"evaluation of {recipe.finetune.init}")
    if place.is_main:
        _write_json(out_json, {"init": recipe.finetune.init, "kind": recipe.kind, **metrics,
                               "recipe": to_dict(recipe)})
    return metrics
