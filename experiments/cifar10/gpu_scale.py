"""The GPU study's scale and runs (``gpu_study.py``): image counts, regimes, arms, and the recipe
overrides of every run, for one H100 (``GPU``) and for the CPU test (``TINY``).

Arms (seed Table 1 and Table 4): ``scratch`` (no pre-training), ``beit`` (visual tokens of the
study's dVAE, blockwise masking), ``pixels`` (raw-pixel regression) and ``random`` (random
masking). Regimes: fine-tuning on ``2k`` labels (200 per class, ``labelled.txt``) and on ``all``
45,000 (``full.txt``: every train image outside the 5,000 held-out val images). Recipes:
``gpu_tokenizer.yaml``, ``gpu_pretrain.yaml``, ``gpu_finetune.yaml`` (GPU values); this module
adds paths, arm, lr, seed, the regime's length and the budget's epoch cuts.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from beit_ds.config import DataConfig, ModelConfig
from beit_ds.config_io import load_recipe
from beit_ds.recipe import TrainingRecipe

EXP = Path(__file__).resolve().parent
ROOT = EXP.parents[1]
# pre-training arms in the order they run; the budget cuts from the end (random masking first)
PRETRAIN_ARMS: dict[str, tuple[str, ...]] = {
    "beit": (),
    "pixels": ("mim.target=pixels", "mim.pixel_target=raw", "tokenizer.path="),
    "random": ("masking.strategy=random",),
}
CUT_ORDER = ("random", "pixels")
FINETUNE_ARMS = ("scratch", *PRETRAIN_ARMS)
SWEPT = ("scratch", "beit")  # the lr is chosen for these; pixels and random take beit's (one recipe, Table 4)


@dataclass(frozen=True)
class Regime:
    """Fine-tuning on ``listfile``: ``epochs`` of batch ``batch`` (``warmup`` epochs), validated
    ``evals`` times (every ``epochs // evals`` epochs: the convergence curve's points)."""

    name: str
    listfile: str
    label: str
    epochs: int
    batch: int
    warmup: float
    evals: int = 10

    def every(self, epochs: int) -> int:
        return max(1, epochs // self.evals)


@dataclass(frozen=True)
class Scale:
    """Images per class in each list, the regimes, the lr grid, the DeepSpeed JSON, and (``TINY``)
    the overrides that shrink every run."""

    labelled: int
    val: int
    full: int
    test: int
    regimes: tuple[Regime, ...]
    lrs: tuple[float, ...]
    ds_config: str
    model: tuple[str, ...] = ()
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per recipe file
    reserve_s: float = 30.0  # kept for the table and a stopped run's checkpoint


GPU = Scale(labelled=200, val=500, full=-1, test=1000,
            regimes=(Regime("2k", "labelled.txt", "2,000 labels", 100, 256, 5),
                     Regime("all", "full.txt", "all 45,000 labels", 30, 512, 2)),
            lrs=(1e-3, 3e-3), ds_config="ds_configs/zero0_bf16.json")
TINY = Scale(labelled=3, val=2, full=6, test=2,
             regimes=(Regime("2k", "labelled.txt", "3 labels per class", 2, 8, 0, 2),
                      Regime("all", "full.txt", "6 labels per class", 2, 16, 0, 2)),
             lrs=(1e-3, 3e-3), ds_config="ds_configs/zero0_fp32_cpu.json",
             model=("model.embed_dim=32", "model.depth=2", "model.num_heads=2"),
             extra={"gpu_tokenizer.yaml": ("schedule.max_steps=2", "schedule.micro_batch_size=16",
                                           "tokenizer.dvae.hidden_dim=16", "tokenizer.dvae.codebook_dim=16",
                                           "tokenizer.dvae.temperature_steps=4", "tokenizer.dvae.prior_warmup_steps=1"),
                    "gpu_pretrain.yaml": ("schedule.max_steps=2", "schedule.micro_batch_size=16")},
             reserve_s=10.0)


def has_key(section: type, key: str) -> bool:
    """Whether the config dataclass ``section`` has ``key`` (a key another change may add later)."""
    return key in {f.name for f in dataclasses.fields(section)}


def compiles_blocks() -> bool:
    """Whether ``model.compile`` takes ``"blocks"`` (regional compilation of whole blocks)."""
    try:
        ModelConfig(compile="blocks")
    except Exception:  # noqa: BLE001 - the config's one-line error for a value it does not know
        return False
    return True


def data_overrides(on_device: bool, cuda: bool) -> list[str]:
    """Decoded images kept on the device (``data.on_device``) when this tree has it, else loader
    workers on a GPU box (every core but the training process's) and none on the CPU."""
    if on_device and has_key(DataConfig, "on_device"):
        return ["data.on_device=true", "data.num_workers=0"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return [f"data.num_workers={min(8, max(1, cores - 2)) if cuda else 0}"]


@dataclass
class Epochs:
    """The budget's decisions on length: pre-training and fine-tuning epochs as fractions of the
    recipes' (1.0: uncut), frozen once a run of that kind has started."""

    pretrain: float = 1.0
    finetune: float = 1.0


class Runs:
    """Names and recipes of every run of the study in ``out``."""

    def __init__(self, out: Path, scale: Scale, common: list[str], epochs: Epochs, model: list[str]) -> None:
        """``common``: overrides of every run; ``model``: of every run with a BEiT (not the tokenizer)."""
        self.out, self.scale, self.common, self.epochs, self.model = out, scale, common, epochs, model

    def load(self, config: str, overrides: list[str], name: str) -> TrainingRecipe:
        model = self.model if config != "gpu_tokenizer.yaml" else []
        args = [*self.common, *model, *self.scale.extra.get(config, ()), *overrides,
                f"checkpoint.output_dir={self.out / name}"]
        return load_recipe(None, EXP / config, args)

    def tokenizer(self) -> TrainingRecipe:
        return self.load("gpu_tokenizer.yaml", [f"data.path={self.out / 'unlabelled.txt'}"], "tokenizer")

    def pretrain(self, arm: str, vocab: int | None = None) -> TrainingRecipe:
        """``vocab``: state the vocabulary (the plan counts FLOPs before the tokenizer exists)."""
        base = load_recipe(None, EXP / "gpu_pretrain.yaml")
        epochs = max(1, round(base.schedule.epochs * self.epochs.pretrain))
        warmup = base.schedule.warmup_epochs * epochs / base.schedule.epochs
        tok = self.out / "tokenizer" / "export" / "tokenizer.safetensors"
        args = [f"data.path={self.out / 'unlabelled.txt'}", f"tokenizer.path={tok}", f"schedule.epochs={epochs}",
                f"schedule.warmup_epochs={warmup:g}", *PRETRAIN_ARMS[arm]]
        if vocab is not None and arm != "pixels":
            args += ["tokenizer.path=package:demo_dvae.safetensors", f"mim.vocab_size={vocab}"]
        return self.load("gpu_pretrain.yaml", args, f"pretrain_{arm}")

    @staticmethod
    def ft_name(regime: Regime, arm: str, lr: float, seed: int) -> str:
        return f"ft_{regime.name}_{arm}_lr{lr:g}_s{seed}"

    def finetune(self, regime: Regime, arm: str, lr: float, seed: int, test: bool = False) -> TrainingRecipe:
        """Run ``ft_<regime>_<arm>_lr<lr>_s<seed>``; ``test``: its evaluation on the test images."""
        name = self.ft_name(regime, arm, lr, seed)
        epochs = max(1, round(regime.epochs * self.epochs.finetune))
        init = "" if arm == "scratch" else str(self.out / f"pretrain_{arm}" / "checkpoints")
        if test:
            init = str(self.out / name / "checkpoints")
        args = [f"data.path={self.out / regime.listfile}", f"data.eval_path={self.out / ('test.txt' if test else 'val.txt')}",
                f"finetune.init={init}", f"optim.lr={lr}", f"schedule.seed={seed}", f"schedule.epochs={epochs}",
                f"schedule.warmup_epochs={min(regime.warmup, epochs / 2):g}",
                f"schedule.micro_batch_size={regime.batch}", f"checkpoint.save_every_epochs={regime.every(epochs)}",
                *(["optim.layer_decay=1.0"] if arm == "scratch" else [])]
        return self.load("gpu_finetune.yaml", args, name)


def list_size(path: Path) -> int:
    """Images in a ``path,class`` list."""
    return sum(1 for line in path.read_text().splitlines() if line.strip())
