"""Multi-task pre-training, MIM + DINO self-distillation (seed App. E, Table 10), as a ``Task``.

The student (``BeitDinoStudent``: the MIM model + DINO's head) is the one model DeepSpeed trains;
the EMA teacher is a full copy kept by the task — not optimised, not handed to DeepSpeed (so ZeRO
never partitions it), in fp32 (run under autocast in a bf16 / fp16 run, as DINO's AMP does) and
updated after each optimizer step from the student's fp32 master weights with a momentum that
follows a cosine 0.996 → 1 (a pure function of the step). The teacher's weights and the loss's
centre travel in every checkpoint's client state (``extra_state``), so a resumed run continues
bit for bit. The loss is MIM (both masked global views) + ``dino.loss_weight`` · DINO; the step
logs both, the MIM accuracy, the teacher's momentum, temperature and entropy and the centre's
norm (collapse monitors), all as device tensors (no host synchronisation).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import cast

import torch
from torch import nn

from beit_ds.artifacts import WEIGHTS, ExportDir
from beit_ds.config import ConfigError
from beit_ds.config_io import build_dataclass
from beit_ds.data import ResumableLoader
from beit_ds.data.multicrop import DinoBatch, MultiCrop, build_dino_loader
from beit_ds.distributed import ProcessPlace, all_reduce_sum
from beit_ds.engine.checkpoint import CheckpointError, verify
from beit_ds.engine.consolidate import consolidated_state_dict
from beit_ds.engine.ema import fp32_master
from beit_ds.engine.job import loader_place
from beit_ds.engine.plan import LoopPlan
from beit_ds.engine.protocols import Batch, TrainEngine
from beit_ds.engine.saved import SavedCheckpoint
from beit_ds.engine.task import StepOutput, Task
from beit_ds.models import build_mim_model, build_model
from beit_ds.models.convert import backbone_state_dict
from beit_ds.models.dino import LAST_LAYER, BeitDinoStudent, DinoLoss, DinoStudentOutput, teacher_temperature
from beit_ds.optim import restart_groups
from beit_ds.recipe import DinoPretrainRecipe
from beit_ds.schedules import cosine
from beit_ds.tasks.formats import write_timm_and_hf
from beit_ds.tasks.pretrain import check_views, frozen_tokenizer
from beit_ds.tasks.registry import register
from beit_ds.tokenizers import VisualTokenizer

HEAD_WEIGHTS = "dino_head.safetensors"
TEACHER = "teacher"  # the EMA teacher's export, inside the student's


def build_student(recipe: DinoPretrainRecipe) -> BeitDinoStudent:
    """The MIM model of ``recipe`` with DINO's head on its [CLS] token."""
    mim = build_mim_model(recipe.model, recipe.mim)
    mim.set_grad_checkpointing(recipe.model.grad_checkpointing)
    return BeitDinoStudent(mim, recipe.dino.head)


@torch.no_grad()
def update_teacher(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``θ_t ← m · θ_t + (1 - m) · θ_s`` per parameter, ``θ_s`` the fp32 master where there is one."""
    source = dict(student.named_parameters())
    for name, param in teacher.named_parameters():
        s = source[name]
        high = fp32_master(s)
        value = high.view(s.shape) if high is not None else s.detach()
        param.mul_(momentum).add_(value.float(), alpha=1.0 - momentum)


def check_dino(r: DinoPretrainRecipe) -> None:
    """The MIM views (``check_views``) and local crops that fit the patch size; no BEiT v2 patch
    aggregation (the student's MIM pass has no aggregation branch)."""
    if r.mim.aggregation.enabled:
        raise ConfigError("mim.aggregation.enabled=true: not with kind 'dino' (expected false)")
    check_views(r)
    if r.data.on_device:
        raise ConfigError("data.on_device=true: the DINO multi-crop views have no on-device version (expected false)")
    p = r.model.patch_size
    if r.dino.local_crops and r.dino.local_crop_size % p:
        raise ConfigError(f"dino.local_crop_size={r.dino.local_crop_size}: expected a multiple of model.patch_size={p}")


@register
class DinoPretrainTask(Task[DinoPretrainRecipe]):
    """MIM + DINO: the student, the multi-crop loader with per-view masks, the tokenizer, the EMA teacher."""

    kind = "dino"
    recipe_type = DinoPretrainRecipe
    backbone_prefix = "mim."  # BeitDinoStudent: the MIM model + dino_head

    def __init__(self, recipe: DinoPretrainRecipe, place: ProcessPlace) -> None:
        super().__init__(recipe, place)
        self.tokenizer: VisualTokenizer | None = None
        self.dtype = torch.float32
        self.teacher: BeitDinoStudent | None = None
        self.loss = DinoLoss(recipe.dino.head.out_dim, recipe.dino.student_temp, recipe.dino.center_momentum)
        self.plan: LoopPlan | None = None  # the run's clock, handed over by attach()

    def check(self) -> None:
        check_dino(self.recipe)

    def build_model(self) -> nn.Module:
        student = build_student(self.recipe)
        self.teacher = copy.deepcopy(student).requires_grad_(False).eval()  # teacher = student at step 0 (DINO)
        return student

    def build_loader(self) -> ResumableLoader:
        r, d = self.recipe, self.recipe.dino
        crops = MultiCrop(d.local_crops, d.local_crop_size, (float(d.local_scale[0]), float(d.local_scale[1])))
        return build_dino_loader(r.data, r.masking, r.model.grid_size, crops, loader_place(r, self.place))

    def attach(self, engine: TrainEngine, dtype: torch.dtype, plan: LoopPlan) -> None:
        self.plan = plan
        self.tokenizer, self.dtype = frozen_tokenizer(self.recipe, engine.device, dtype), dtype
        assert self.teacher is not None, "build_model() runs before attach()"
        self.teacher.to(engine.device)
        self.loss.to(engine.device)

    # --- schedules: pure functions of the step and the run's plan --------------------------
    def _clock(self) -> LoopPlan:
        assert self.plan is not None, "attach() hands the task its plan before any step"
        return self.plan

    def momentum_at(self, step: int) -> float:
        """Teacher momentum after optimizer step ``step`` (0-based): cosine ``teacher_momentum`` → 1
        over the steps every schedule of the run spans (``schedule.steps``, or epochs x steps per epoch)."""
        return cosine(step, self._clock().schedule_steps, self.recipe.dino.teacher_momentum, 1.0)

    def temperature_at(self, step: int) -> float:
        d = self.recipe.dino
        warmup = int(round(d.warmup_teacher_temp_epochs * self._clock().steps_per_epoch))
        return teacher_temperature(step, warmup, d.warmup_teacher_temp, d.teacher_temp)

    def last_layer_frozen(self, step: int) -> bool:
        return step < self.recipe.dino.freeze_last_layer_epochs * self._clock().steps_per_epoch

    def schedule_optimizer(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """DINO's last-layer freezing as its ``p.grad = None`` does it: while frozen the layer's
        groups get lr 0 (no update, no weight decay; its gradient is zero, ``DinoHead`` detaches
        the weight), and at the first free step its AdamW state restarts (moments and step count
        0), so the first update is a fresh AdamW's, not one bias-corrected for the frozen steps."""
        if self.last_layer_frozen(step):
            for group in optimizer.param_groups:
                if str(group.get("group_name", "")).startswith(LAST_LAYER + "."):
                    group["lr"] = 0.0
        elif step > 0 and self.last_layer_frozen(step - 1):  # every micro-batch of that step: same state
            restart_groups(optimizer, LAST_LAYER)

    # --- one micro-batch ---------------------------------------------------------------------
    def _teacher_logits(self, images: torch.Tensor) -> torch.Tensor:
        assert self.teacher is not None
        mixed = self.dtype != torch.float32
        with torch.no_grad(), torch.autocast(images.device.type, self.dtype, enabled=mixed):
            return self.teacher.teacher_logits(images)

    def forward(self, model: TrainEngine, batch: Batch, step: int) -> StepOutput:
        views = cast(DinoBatch, batch).to(model.device)  # what build_loader() yields
        if self.tokenizer is None:
            target = views.tokenizer_images
        else:
            with torch.no_grad():
                target = self.tokenizer.encode(views.tokenizer_images)
        local = views.local_images.to(self.dtype) if views.local_images.shape[0] else None
        images, frozen = views.global_images.to(self.dtype), self.last_layer_frozen(step)
        out = cast(DinoStudentOutput, model(images, views.bool_masked_pos, target, local, frozen))  # the student's
        temp = self.temperature_at(step)
        center_norm = self.loss.center.norm()
        dino = self.loss(out.logits, self._teacher_logits(views.global_images), temp)
        self.loss.update_center(all_reduce_sum(dino.batch_center) / self.place.world_size)
        loss = out.mim.loss + self.recipe.dino.loss_weight * dino.loss
        device = dino.loss.device
        metrics = {
            "mim_loss": out.mim.loss.detach(), "dino_loss": dino.loss.detach(), "mim_accuracy": out.mim.accuracy,
            "teacher_momentum": torch.full((), self.momentum_at(step), device=device),
            "teacher_temp": torch.full((), temp, device=device),
            "teacher_entropy": dino.teacher_entropy, "center_norm": center_norm,
        }
        return StepOutput(loss, metrics)

    def after_optimizer_step(self, engine: TrainEngine, step: int) -> None:
        assert self.teacher is not None
        update_teacher(self.teacher, engine.module, self.momentum_at(step))

    # --- checkpoint state ------------------------------------------------------------------
    def extra_state(self) -> dict[str, object]:
        assert self.teacher is not None
        return {"dino_teacher": self.teacher.state_dict(), "dino_center": self.loss.center}

    def restore(self, client: Mapping[str, object], tag_dir: Path) -> None:
        teacher, center = client.get("dino_teacher"), client.get("dino_center")
        if not isinstance(teacher, dict) or not isinstance(center, torch.Tensor):
            raise CheckpointError(f"checkpoint {tag_dir}: no DINO teacher / centre in its client state")
        assert self.teacher is not None
        self.teacher.load_state_dict(teacher, strict=True)
        self.loss.center.copy_(center)

    @classmethod
    def export(cls, saved: SavedCheckpoint, out_dir: Path) -> list[Path]:
        """The student as pre-training exports it (``model.safetensors`` = the MIM model, ``timm/``,
        ``hf/``) + ``dino_head.safetensors``; with ``dino.export_teacher`` the same under ``teacher/``."""
        verify(saved.tag_dir, checksums=False)
        recipe = build_dataclass(DinoPretrainRecipe, saved.recipe)
        source = str(saved.tag_dir)
        export = ExportDir(out_dir).create()
        paths = export_student(recipe, consolidated_state_dict(saved.tag_dir), export, source)
        if recipe.dino.export_teacher:
            teacher = saved.client.get("dino_teacher")
            if not isinstance(teacher, dict):
                raise CheckpointError(f"checkpoint {saved.tag_dir}: no DINO teacher in its client state")
            paths += export_student(recipe, teacher, export.sub(TEACHER), source)
        export.finish(saved.kind, saved.recipe, source=source)
        return paths

    @classmethod
    def load_exported(cls, export: ExportDir, ema: bool = False) -> nn.Module:
        """The student (``BeitDinoStudent``: ``model.safetensors`` + ``dino_head.safetensors``);
        ``ema``: the EMA teacher of ``teacher/`` (exported with ``dino.export_teacher``)."""
        recipe = build_dataclass(DinoPretrainRecipe, export.read_recipe())
        if ema and not (export.path / TEACHER / WEIGHTS).is_file():
            raise ConfigError(f"{export.path}: no {TEACHER}/ (the teacher is exported with dino.export_teacher=true)")
        prefix = f"{TEACHER}/" if ema else ""
        student = build_student(recipe)
        student.mim.load_state_dict(export.read_weights(prefix + WEIGHTS), strict=True)
        student.dino_head.load_state_dict(export.read_weights(prefix + HEAD_WEIGHTS), strict=True)
        return student.eval()


def export_student(recipe: DinoPretrainRecipe, sd: dict[str, torch.Tensor], export: ExportDir, source: str) -> list[Path]:
    """``sd`` (a ``BeitDinoStudent``'s) as ``model.safetensors`` (the MIM model: pre-training's
    layout, so ``finetune.init`` reads it), ``dino_head.safetensors``, ``timm/`` and ``hf/`` in
    ``export`` (the recipe is the export's, written once at its top)."""
    student = build_student(recipe)
    student.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    ours = export.write_weights(WEIGHTS, student.mim.state_dict(), source=source)
    head = export.write_weights(HEAD_WEIGHTS, student.dino_head.state_dict(), source=source)
    backbone = build_model(recipe.model)
    backbone.load_state_dict(backbone_state_dict(student.mim.state_dict()), strict=True)
    return [ours, head, *write_timm_and_hf(backbone, export)]
