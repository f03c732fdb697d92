"""The recipe roots (seed §5, App. G; house style rule 3): ``TrainingRecipe`` holds the sections
every training has (``config/train.py``), each task's root adds its own (``config/``).

A recipe is a YAML file whose top-level keys are ``kind`` and these sections; ``kind`` names its
root (``KINDS``: pretrain, dino, finetune, linear_probe, segmentation, tokenizer, vqkd) and so its task;
``config_io.load_recipe`` builds it and applies ``section.key=value`` overrides. A recipe that
states no kind gets one derived once, from the root a launcher expects and the sections it has
(``derive_kind``), and the resolved ``recipe.yaml`` records it. Derived values (scaled lr, steps per epoch) are computed by the engine, never stored.
Values that are one fact stated in two sections are derived, not cross-checked: ``derived()``
of a root names them (``data.transform.input_size`` is ``model.img_size``, the tokenizer view
is the tokenizer's input, ``mim.vocab_size`` the tokenizer's vocabulary); ``load_recipe`` fills
each one the recipe leaves out and refuses one it states differently. Torch-free.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from beit_ds.assets import resolve
from beit_ds.config import (
    AugmentConfig,
    ConfigError,
    DataConfig,
    FinetuneConfig,
    LoaderConfig,
    MaskingConfig,
    MIMConfig,
    ModelConfig,
    ProbeConfig,
    TokenizerConfig,
    TransformConfig,
    TuneConfig,
)
from beit_ds.config.dino import DinoConfig
from beit_ds.config.seg_data import SegDataConfig
from beit_ds.config.segmentation import DecoderConfig, InferenceConfig
from beit_ds.config.tokenizer import TOKENIZERS
from beit_ds.config.train import CheckpointConfig, LogConfig, OptimConfig, ScheduleConfig
from beit_ds.config.vqkd import TeacherConfig
from beit_ds.masking import masking_target

__all__ = [
    "CheckpointConfig", "ClassificationRecipe", "DinoPretrainRecipe", "FinetuneRecipe", "LinearProbeRecipe", "LogConfig", "OptimConfig",
    "KINDS", "PretrainRecipe", "ScheduleConfig", "SegmentationRecipe", "TokenizerRecipe", "TrainingRecipe", "VQKDRecipe", "derive_kind",
    "recipe_root",
]


@dataclass
class TrainingRecipe:
    """The sections every training recipe has: data, optimizer, schedule, checkpoints, logging.
    Each root below adds the sections of its task, names its ``kind`` and gives ``data`` its own
    type (``DataConfig`` or ``SegDataConfig``); the runtime reads only the ``LoaderConfig`` keys.
    ``retired``: keys the root no longer has that recipes stored in older checkpoints may hold
    (``config_io.stored_recipe`` drops them; a recipe or override that states one is an error)."""

    kind: ClassVar[str] = ""
    retired: ClassVar[tuple[str, ...]] = ()

    data: LoaderConfig
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)


@dataclass
class PretrainRecipe(TrainingRecipe):
    """Root of a pre-training recipe: the model, its MIM head, masking and the visual tokenizer."""

    kind: ClassVar[str] = "pretrain"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    mim: MIMConfig = field(default_factory=MIMConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)

    def derived(self) -> dict[str, tuple[Any, str]]:
        """``{key: (value, the key or fact it is)}``: the patch view is the model's input, the
        second view the tokenizer's (the model's, raw, for pixel targets; the model's own view for a
        tokenizer whose ``TokenizerSpec.model_view`` says so), the MIM vocabulary the tokenizer's."""
        out: dict[str, tuple[Any, str]] = {"data.transform.input_size": (self.model.img_size, "model.img_size")}
        if not self.mim.predict_all:
            most = masking_target(self.masking, self.model.grid_size)
            out["mim.max_masked"] = (most, "the masking target (masking.num_masking_patches / mask_ratio)")
        if self.mim.target == "pixels":
            out["data.transform.second_input_size"] = (self.model.img_size, "model.img_size (mim.target='pixels')")
            out["data.transform.tokenizer_view"] = ("raw", "mim.target='pixels'")
            return out
        spec = TOKENIZERS[self.tokenizer.name]
        reads = f"what tokenizer.name={self.tokenizer.name!r} reads"
        if spec.model_view:  # BEiT v2: the tokenizer sees the model's own view
            out["tokenizer.image_size"] = (self.model.img_size, f"model.img_size ({reads})")
            out["data.transform.second_interpolation"] = (self.data.transform.interpolation, f"data.transform.interpolation ({reads})")
        size = self.model.img_size if spec.model_view else self.tokenizer.image_size
        out["data.transform.second_input_size"] = (size, "tokenizer.image_size")
        out["data.transform.tokenizer_view"] = (spec.view, reads)
        vocab = spec.vocab(str(resolve(self.tokenizer.path))) if self.tokenizer.path else None
        if vocab is not None:
            out["mim.vocab_size"] = (vocab, f"the vocabulary of tokenizer.path={self.tokenizer.path!r}")
        return out


@dataclass
class DinoPretrainRecipe(PretrainRecipe):
    """Root of a multi-task pre-training recipe (seed App. E): MIM + DINO self-distillation
    (``dino``); the two global crops are the MIM views of ``data.transform``."""

    kind: ClassVar[str] = "dino"
    dino: DinoConfig = field(default_factory=DinoConfig)


@dataclass
class TokenizerRecipe(TrainingRecipe):
    """Root of a tokenizer-training recipe (seed App. C): our dVAE (``tokenizer.dvae``) trained on
    the tokenizer view (``data.transform.second_input_size``, ``tokenizer_view: raw``)."""

    kind: ClassVar[str] = "tokenizer"
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(name="dvae"))

    def derived(self) -> dict[str, tuple[Any, str]]:
        """The dVAE learns on the raw second view at its own input size."""
        return {"data.transform.second_input_size": (self.tokenizer.image_size, "tokenizer.image_size"),
                "data.transform.tokenizer_view": ("raw", "what the dVAE reads")}


@dataclass
class VQKDRecipe(TrainingRecipe):
    """Root of a VQ-KD tokenizer recipe (BEiT v2 §2.1): the tokenizer (``tokenizer.vqkd``, at
    ``tokenizer.image_size``) learns to reconstruct the patch features of ``teacher`` on one raw
    [0, 1] view of each crop (both views of the loader are that size; unilm's VQ-KD data: a
    random-resized crop and a flip, no colour jitter)."""

    kind: ClassVar[str] = "vqkd"
    data: DataConfig = field(default_factory=lambda: DataConfig(transform=TransformConfig(
        input_size=224, second_input_size=224, second_interpolation="bicubic", tokenizer_view="raw", color_jitter=0.0)))
    tokenizer: TokenizerConfig = field(default_factory=lambda: TokenizerConfig(name="vqkd", image_size=224))
    teacher: TeacherConfig = field(default_factory=TeacherConfig)

    def derived(self) -> dict[str, tuple[Any, str]]:
        """Both views are the tokenizer's input, raw."""
        size = (self.tokenizer.image_size, "tokenizer.image_size")
        return {"data.transform.input_size": size, "data.transform.second_input_size": size,
                "data.transform.tokenizer_view": ("raw", "what VQ-KD reads")}


@dataclass
class ClassificationRecipe(TrainingRecipe):
    """The sections fine-tuning and linear probes share (seed §3.1, App. D)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(global_pool="avg"))
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def derived(self) -> dict[str, tuple[Any, str]]:
        """The classifier's input is the model's resolution (positions are resized from the weights)."""
        return {"data.transform.input_size": (self.model.img_size, "model.img_size")}


@dataclass
class FinetuneRecipe(ClassificationRecipe):
    """Root of a classification fine-tuning recipe (seed §3.1, App. F/H): weights in ``finetune``,
    DeiT-style augmentation in ``augment``, layer-wise lr decay in ``optim.layer_decay``."""

    kind: ClassVar[str] = "finetune"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass
class LinearProbeRecipe(ClassificationRecipe):
    """Root of a linear-probe recipe (seed App. D): a frozen backbone, one linear layer on the mean
    patch token of block ``probe.layer``; crop and flip only (no ``augment`` section)."""

    kind: ClassVar[str] = "linear_probe"
    finetune: FinetuneConfig = field(default_factory=lambda: FinetuneConfig(head="reset", label_smoothing=0.0))
    probe: ProbeConfig = field(default_factory=ProbeConfig)


@dataclass
class SegmentationRecipe(TrainingRecipe):
    """Root of a semantic-segmentation recipe (seed §3.2, App. A, B, I): the backbone (``model``,
    ``model.img_size`` = the training crop), its task layer (``decode``), labelled images with
    joint transforms (``data``: ``SegDataConfig``), the starting weights, loss smoothing and
    evaluation cadence (``finetune``: ``TuneConfig``, without classification's head and EMA keys)
    and how validation images are predicted (``inference``)."""

    kind: ClassVar[str] = "segmentation"
    retired: ClassVar[tuple[str, ...]] = ("finetune.head", "finetune.head_init_scale", "finetune.ema_decay")
    data: SegDataConfig = field(default_factory=SegDataConfig)
    model: ModelConfig = field(default_factory=lambda: ModelConfig(img_size=512))
    decode: DecoderConfig = field(default_factory=DecoderConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    finetune: TuneConfig = field(default_factory=lambda: TuneConfig(label_smoothing=0.0))

    def derived(self) -> dict[str, tuple[Any, str]]:
        """The training crop is the model's resolution (positions and bias tables are resized to it)."""
        return {"data.transform.crop_size": (self.model.img_size, "model.img_size")}


KINDS: dict[str, type[TrainingRecipe]] = {
    cls.kind: cls
    for cls in (PretrainRecipe, DinoPretrainRecipe, FinetuneRecipe, LinearProbeRecipe, SegmentationRecipe, TokenizerRecipe,
                VQKDRecipe)
}
# a recipe without ``kind`` for a launcher that expects a root: the sections that pick a sub-kind
_SECTION_KINDS = {"pretrain": ("dino", "dino"), "finetune": ("probe", "linear_probe")}


def derive_kind(expected: type[TrainingRecipe] | None, data: dict[str, Any], where: str) -> str:
    """The kind of a recipe mapping: its ``kind`` key, else (once, for recipes written before
    kinds) the kind of the root a launcher ``expected``, made ``dino`` by a ``dino`` section and
    ``linear_probe`` by a ``probe`` section. Neither is a one-line ``ConfigError``."""
    kind = data.get("kind")
    if kind is None and expected is not None and expected.kind:
        kind = expected.kind
        section, sub = _SECTION_KINDS.get(kind, ("", ""))
        kind = sub if section and section in data else kind
    if kind is None:
        raise ConfigError(f"recipe {where}: no kind: expected a top-level 'kind:' ({', '.join(KINDS)})")
    if kind not in KINDS:
        raise ConfigError(f"recipe {where}: kind={kind!r}: expected one of {', '.join(KINDS)}")
    return str(kind)


def recipe_root(kind: str, expected: type[TrainingRecipe] | None, where: str) -> type[TrainingRecipe]:
    """The root of ``kind``; one line when a launcher ``expected`` another root (e.g. a fine-tuning
    recipe given to the pre-training launcher)."""
    root = KINDS[kind]
    if expected is not None and expected.kind and not issubclass(root, expected):
        raise ConfigError(f"recipe {where}: kind={kind!r}, this command trains {expected.kind!r}: use"
                          f" launch/train.py (or beit-ds train), which takes every kind")
    return root
