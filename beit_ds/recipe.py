"""Training sections of a recipe and the recipe roots (seed §5, App. G; house style rule 3).

A recipe is a YAML file whose top-level keys are the sections below plus the model-side ones
from ``config.py``; ``config_io.load_recipe`` builds it and applies ``section.key=value``
overrides. Derived values (scaled lr, steps per epoch) are computed by the engine, never stored.
Torch-free, like ``config.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from beit_ds.config import (
    AugmentConfig,
    DataConfig,
    FinetuneConfig,
    MaskingConfig,
    MIMConfig,
    ModelConfig,
    ProbeConfig,
    TokenizerConfig,
    _choice,
    _expect,
    _positive_int,
)


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
            _expect(isinstance(value, (int, float)) and value >= 0, s, key, value, "a number >= 0")
        _expect(self.base_lr > 0, s, "base_lr", self.base_lr, "a positive number")
        _positive_int(s, "base_batch", self.base_batch)
        if self.lr is not None:
            _expect(self.lr > 0, s, "lr", self.lr, "a positive number or null")
        _expect(self.weight_decay >= 0, s, "weight_decay", self.weight_decay, ">= 0")
        if self.weight_decay_end is not None:
            _expect(self.weight_decay_end >= 0, s, "weight_decay_end", self.weight_decay_end, ">= 0 or null")
        ok = len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)
        _expect(ok, s, "betas", self.betas, "two numbers in [0, 1)")
        _expect(self.clip_grad >= 0, s, "clip_grad", self.clip_grad, ">= 0 (0 disables clipping)")
        _expect(0 < self.layer_decay <= 1, s, "layer_decay", self.layer_decay, "a number in (0, 1]")


@dataclass
class ScheduleConfig:
    """Length and shape of training: warm-up then cosine decay, in epochs (or ``max_steps``).

    ``micro_batch_size`` is per rank; ``grad_accum`` micro-batches make one optimizer step; the
    global batch is ``micro_batch_size · grad_accum · world_size``.
    """

    epochs: int = 800
    warmup_epochs: float = 10.0
    micro_batch_size: int = 128
    grad_accum: int = 1
    max_steps: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        s = "schedule"
        _positive_int(s, "epochs", self.epochs)
        ok = 0 <= self.warmup_epochs <= self.epochs
        _expect(ok, s, "warmup_epochs", self.warmup_epochs, f"a number in [0, schedule.epochs={self.epochs}]")
        _positive_int(s, "micro_batch_size", self.micro_batch_size)
        _positive_int(s, "grad_accum", self.grad_accum)
        if self.max_steps is not None:
            _positive_int(s, "max_steps", self.max_steps)


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
        _expect(bool(self.output_dir), s, "output_dir", self.output_dir, "a directory path")
        for key in ("save_every_steps", "save_every_epochs", "keep_last"):
            _positive_int(s, key, getattr(self, key))
        _choice(s, "verify", self.verify, ("checksum", "size"))


@dataclass
class LogConfig:
    """Rank-0 logging: every ``every_steps`` steps to TensorBoard and ``metrics.jsonl``."""

    every_steps: int = 10
    tensorboard: bool = True
    progress_bar: bool = True
    max_nonfinite_steps: int = 20

    def __post_init__(self) -> None:
        _positive_int("log", "every_steps", self.every_steps)
        _positive_int("log", "max_nonfinite_steps", self.max_nonfinite_steps)


@dataclass
class TrainingRecipe:
    """The sections every training recipe has: data, optimizer, schedule, checkpoints, logging.
    Each root below adds the sections of its task."""

    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class PretrainRecipe(TrainingRecipe):
    """Root of a pre-training recipe: the model, its MIM head, masking and the visual tokenizer."""

    model: ModelConfig = field(default_factory=ModelConfig)
    mim: MIMConfig = field(default_factory=MIMConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class TokenizerRecipe(TrainingRecipe):
    """Root of a tokenizer-training recipe (seed App. C): our dVAE (``tokenizer.dvae``) trained on
    the tokenizer view (``data.transform.second_input_size``, ``tokenizer_view: raw``)."""

    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(name="dvae"))


@dataclass
class ClassificationRecipe(TrainingRecipe):
    """The sections fine-tuning and linear probes share (seed §3.1, App. D)."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(global_pool="avg"))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)


@dataclass
class FinetuneRecipe(ClassificationRecipe):
    """Root of a classification fine-tuning recipe (seed §3.1, App. F/H): weights in ``finetune``,
    DeiT-style augmentation in ``augment``, layer-wise lr decay in ``optim.layer_decay``."""

    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LinearProbeRecipe(ClassificationRecipe):
    """Root of a linear-probe recipe (seed App. D): a frozen backbone, one linear layer on the mean
    patch token of block ``probe.layer``; crop and flip only (no ``augment`` section)."""

    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(head="reset", label_smoothing=0.0))
    probe: ProbeConfig = field(default_factory=ProbeConfig)
