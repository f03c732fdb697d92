"""The ``dino`` section: multi-task pre-training, MIM + DINO self-distillation (seed App. E, Table 10).

Values default to DINO's paper and released code (Caron et al. 2021, facebookresearch/dino
``main_dino.py``); where BEiT+DINO differs or is unknown it is said in ``docs/FIDELITY.md``.
Torch-free, like every module of ``beit_ds.config``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from beit_ds.config.validate import expect, fraction, non_negative_int, number, pair, positive_int

MAX_LOSS_WEIGHT = 1e3  # bounds that keep the step finite; far beyond any useful value
MAX_EPOCHS = 1e5


@dataclass
class DinoHeadConfig:
    """The projection head on the [CLS] token (DINO's ``DINOHead``): ``num_layers`` linear layers
    (hidden ``hidden_dim``, GELU) to a ``bottleneck_dim`` vector, L2-normalised, then a
    weight-normalised linear layer to ``out_dim`` prototypes; ``norm_last_layer`` fixes the norm of
    each of its rows to 1 (DINO's ``weight_g`` frozen at 1). Shapes of weights: a resume must keep them."""

    out_dim: int = 65536
    hidden_dim: int = 2048
    bottleneck_dim: int = 256
    num_layers: int = 3
    norm_last_layer: bool = True

    def __post_init__(self) -> None:
        s = "dino.head"
        positive_int(s, "out_dim", self.out_dim)
        positive_int(s, "hidden_dim", self.hidden_dim)
        positive_int(s, "bottleneck_dim", self.bottleneck_dim)
        positive_int(s, "num_layers", self.num_layers)
        expect(isinstance(self.norm_last_layer, bool), s, "norm_last_layer", self.norm_last_layer, "true or false")


@dataclass
class DinoConfig:
    """Self-distillation beside MIM: loss = MIM loss + ``loss_weight`` · DINO loss.

    Multi-crop: the two global crops are the MIM views (``data.transform``, its ``scale``), plus
    ``local_crops`` crops of ``local_crop_size``² covering a fraction in ``local_scale`` of the image.
    Student temperature ``student_temp``; the teacher's rises linearly from ``warmup_teacher_temp``
    to ``teacher_temp`` over ``warmup_teacher_temp_epochs`` epochs (per step), then stays. The
    centre of the teacher's outputs moves with ``center_momentum``. The EMA teacher's momentum
    follows a cosine from ``teacher_momentum`` to 1 over the run. The last layer of the student's head
    gets no gradient, update or weight decay for ``freeze_last_layer_epochs`` epochs, and its AdamW
    state starts afresh when it unfreezes (DINO's ``p.grad = None``). ``export_teacher``: also export the
    teacher's backbone (``export/teacher/``). Every number is finite: ``loss_weight`` at most 1000,
    the two epoch counts at most 100 000.
    """

    head: DinoHeadConfig = dataclasses.field(default_factory=DinoHeadConfig)
    loss_weight: float = 1.0
    local_crops: int = 8
    local_crop_size: int = 96
    local_scale: tuple[float, float] = (0.05, 0.4)
    student_temp: float = 0.1
    teacher_temp: float = 0.07
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_epochs: float = 30
    center_momentum: float = 0.9
    teacher_momentum: float = 0.996
    freeze_last_layer_epochs: float = 1
    export_teacher: bool = False

    def __post_init__(self) -> None:
        s = "dino"
        expect(isinstance(self.head, DinoHeadConfig), s, "head", self.head, "a mapping")
        number(s, "loss_weight", self.loss_weight, 0.0, MAX_LOSS_WEIGHT, f"a number in [0, {MAX_LOSS_WEIGHT:g}]")
        non_negative_int(s, "local_crops", self.local_crops)
        positive_int(s, "local_crop_size", self.local_crop_size)
        lo, hi = pair(s, "local_scale", self.local_scale)
        expect(0 < lo <= hi <= 1, s, "local_scale", self.local_scale, "two numbers 0 < lo <= hi <= 1")
        for key in ("student_temp", "teacher_temp", "warmup_teacher_temp"):
            number(s, key, getattr(self, key), 1e-6, 100.0, "a temperature > 0")
        for key in ("warmup_teacher_temp_epochs", "freeze_last_layer_epochs"):
            number(s, key, getattr(self, key), 0.0, MAX_EPOCHS, f"epochs in [0, {MAX_EPOCHS:g}]")
        fraction(s, "center_momentum", self.center_momentum)
        number(s, "teacher_momentum", self.teacher_momentum, 0.0, 1.0, "a momentum in [0, 1]")
        expect(isinstance(self.export_teacher, bool), s, "export_teacher", self.export_teacher, "true or false")
