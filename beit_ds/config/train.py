"""The sections every training recipe has: AdamW, the schedule, checkpoints and logging (seed §5)."""

from __future__ import annotations

from dataclasses import dataclass

from beit_ds.config.validate import choice, expect, positive_int


@dataclass
class OptimConfig:
    """AdamW (seed §5): ``lr = base_lr · global_batch / base_batch`` unless ``lr`` is set."""

    base_lr: float = 1.5e-3
    base_batch: int = 2048
    lr: float | None = None
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    weight_decay_end: float | None = None
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    clip_grad: float = 3.0
    layer_decay: float = 1.0

    def __post_init__(self) -> None:
        s = "optim"
        for key in ("base_lr", "min_lr", "eps"):
            value = getattr(self, key)
            expect(isinstance(value, (int, float)) and value >= 0, s, key, value, "a number >= 0")
        expect(self.base_lr > 0, s, "base_lr", self.base_lr, "a positive number")
        positive_int(s, "base_batch", self.base_batch)
        if self.lr is not None:
            expect(self.lr > 0, s, "lr", self.lr, "a positive number or null")
        expect(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, ">= 0")
        if self.weight_decay_end is not None:
            expect(self.weight_decay_end >= 0, s, "weight_decay_end", self.weight_decay_end, ">= 0 or null")
        ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        expect(ok, s, "betas", self.betas, "two numbers in [0, 1)")
        expect(self.clip_grad >= 0, s, "clip_grad", self.clip_grad, ">= 0 (0 disables clipping)")
        expect(0 < self.layer_decay <= 1, s, "layer_decay", self.layer_decay, "a number in (0, 1]")


@dataclass
class ScheduleConfig:
    """Length and shape of training: warm-up then cosine decay, in epochs (or ``max_steps``).

    Iteration-based recipes (segmentation: 160k steps, warm-up 1500) set ``steps`` (the schedule's
    length in optimizer steps, instead of ``epochs``) and ``warmup_steps`` (instead of
    ``warmup_epochs``). ``decay``: ``"cosine"`` (seed §5) or ``"linear"`` (mmseg's ``poly``
    policy with power 1 and its linear warm-up from 1e-6 × the scheduled rate: unilm's
    segmentation ``lr_config``).

    ``micro_batch_size`` is per rank; ``grad_accum`` micro-batches make one optimizer step; the
    global batch is ``micro_batch_size · grad_accum · world_size``.
    """

    epochs: int = 800
    warmup_epochs: float = 10.0
    micro_batch_size: int = 128
    grad_accum: int = 1
    max_steps: int | None = None
    steps: int | None = None
    warmup_steps: int | None = None
    decay: str = "cosine"
    seed: int = 0

    def __post_init__(self) -> None:
        s = "schedule"
        positive_int(s, "epochs", self.epochs)
        ok = 0 <= self.warmup_epochs <= self.epochs
        expect(ok, s, "warmup_epochs", self.warmup_epochs, f"a number in [0, schedule.epochs={self.epochs}]")
        positive_int(s, "micro_batch_size", self.micro_batch_size)
        positive_int(s, "grad_accum", self.grad_accum)
        if self.max_steps is not None:
            positive_int(s, "max_steps", self.max_steps)
        if self.steps is not None:
            positive_int(s, "steps", self.steps)
        if self.warmup_steps is not None:
            ok = isinstance(self.warmup_steps, int) and 0 <= self.warmup_steps <= (self.steps or self.warmup_steps)
            expect(ok, s, "warmup_steps", self.warmup_steps, "an integer in [0, schedule.steps]")
        choice(s, "decay", self.decay, ("cosine", "linear"))


@dataclass
class CheckpointConfig:
    """Where and how often DeepSpeed checkpoints are written; the last ``keep_last`` are kept.
    ``verify``: what a resume checks before loading, ``"checksum"`` (size and SHA-256 of every
    file: a few seconds for BEiT-L) or ``"size"`` (sizes only, for very slow file systems)."""

    output_dir: str = "runs/beit"
    save_every_steps: int = 1000
    save_every_epochs: int = 1
    keep_last: int = 3
    export_at_end: bool = True
    verify: str = "checksum"

    def __post_init__(self) -> None:
        s = "checkpoint"
        expect(bool(self.output_dir), s, "output_dir", self.output_dir, "a directory path")
        for key in ("save_every_steps", "save_every_epochs", "keep_last"):
            positive_int(s, key, getattr(self, key))
        choice(s, "verify", self.verify, ("checksum", "size"))


@dataclass
class LogConfig:
    """Rank-0 logging: every ``every_steps`` steps to TensorBoard and ``metrics.jsonl``."""

    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    max_nonfinite_steps: int = 20

    def __post_init__(self) -> None:
        positive_int("log", "every_steps", self.every_steps)
        positive_int("log", "max_nonfinite_steps", self.max_nonfinite_steps)
