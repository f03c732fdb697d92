"""Fine-tuning sections: starting weights and loss, DeiT-style augmentation, linear probes (seed §3.1, App. D)."""

from __future__ import annotations

from dataclasses import dataclass

from beit_ds.config.validate import choice, expect, fraction, non_negative_int, number, positive_int

HEAD_POLICIES = ("auto", "reset", "keep")


@dataclass
class TuneConfig:
    """What every ``finetune`` section has (classification's ``FinetuneConfig`` and segmentation's):
    where the weights come from, the loss smoothing and the evaluation cadence (seed §3.1, §3.2).

    ``init``: the starting weights, one of: our export (``model.safetensors``), a DeepSpeed
    checkpoint of pre-training or fine-tuning (a ``step_*`` folder, its ``checkpoints/`` folder
    or the run folder: the newest complete one), timm / unilm weights (``.safetensors``,
    ``.pth``), Hugging Face BEiT weights (a file or a ``save_pretrained`` folder); ``""``: random
    initialisation (training from scratch). ``label_smoothing``: ε of the smoothed one-hot target.
    ``evaluate``: run the evaluation split after every checkpoint (off for ImageNet-22K, which
    has none).
    """

    init: str = ""
    label_smoothing: float = 0.1
    evaluate: bool = True

    def __post_init__(self) -> None:
        s = "finetune"
        expect(isinstance(self.init, str), s, "init", self.init, "a path string or ''")
        fraction(s, "label_smoothing", self.label_smoothing)


@dataclass
class FinetuneConfig(TuneConfig):
    """The classification ``finetune`` section (seed §3.1, App. H): ``TuneConfig`` and the
    classifier's keys.

    ``head``: ``"auto"`` re-initialises the classifier when the weights have none or another class
    count, ``"reset"`` always, ``"keep"`` never (a mismatch is an error). The new head is
    trunc-normal(0.02) × ``head_init_scale``. ``ema_decay``: keep an exponential moving average of
    the weights with this decay (0 disables); it is saved in checkpoints, evaluated next to the
    weights and exported as ``model_ema.safetensors``.
    """

    head: str = "auto"
    head_init_scale: float = 0.001
    ema_decay: float = 0.0

    def __post_init__(self) -> None:
        s = "finetune"
        super().__post_init__()
        choice(s, "head", self.head, HEAD_POLICIES)
        number(s, "head_init_scale", self.head_init_scale, 1e-12, 1e6, "a positive number")
        fraction(s, "ema_decay", self.ema_decay)


@dataclass
class AugmentConfig:
    """Fine-tuning augmentation beyond the crop and flip of ``data.transform`` (seed App. H, DeiT's).

    RandAugment: ``rand_augment_ops`` operations per image (0 disables) of magnitude
    ``rand_augment_magnitude``. ``rand_augment_impl: timm`` (default) is timm's
    ``rand-m{magnitude}-n{ops}-mstd{rand_augment_mstd}-inc1`` as DeiT and unilm use it (magnitude of
    10, jittered by a normal of std ``rand_augment_mstd``, each op applied with probability 0.5);
    ``torchvision`` is torchvision's ``RandAugment`` (magnitude of 30 bins, every op applied: at 9 a
    third of timm's strength). ``random_erasing``: probability of erasing one
    rectangle with per-pixel noise after normalisation. Mixup (``mixup`` = α of its Beta(α, α),
    0 disables) or CutMix (``cutmix`` = α) is applied to a batch with probability ``mix_prob``;
    with both enabled CutMix is chosen with probability ``switch_prob``.
    """

    rand_augment_ops: int = 2
    rand_augment_magnitude: int = 9
    rand_augment_mstd: float = 0.5
    rand_augment_impl: str = "timm"
    random_erasing: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    mix_prob: float = 1.0
    switch_prob: float = 0.5

    def __post_init__(self) -> None:
        s = "augment"
        non_negative_int(s, "rand_augment_ops", self.rand_augment_ops)
        choice(s, "rand_augment_impl", self.rand_augment_impl, ("timm", "torchvision"))
        top = 10 if self.rand_augment_impl == "timm" else 30
        ok = isinstance(self.rand_augment_magnitude, int) and 0 <= self.rand_augment_magnitude <= top
        expect(ok, s, "rand_augment_magnitude", self.rand_augment_magnitude, f"an integer in [0, {top}]")
        number(s, "rand_augment_mstd", self.rand_augment_mstd, 0, 100, "a number >= 0 (0: no jitter)")
        number(s, "random_erasing", self.random_erasing, 0, 1, "a probability in [0, 1]")
        for key in ("mixup", "cutmix"):
            number(s, key, getattr(self, key), 0, 1e3, "a number >= 0 (0 disables)")
        number(s, "mix_prob", self.mix_prob, 0, 1, "a probability in [0, 1]")
        number(s, "switch_prob", self.switch_prob, 0, 1, "a probability in [0, 1]")


@dataclass
class ProbeConfig:
    """Linear probe (seed App. D): features after block ``layer`` (1-based; ``None``: the middle
    block, ``(depth + 1) // 2``), pooled, one linear layer; the backbone is frozen. ``pool``:
    ``"mean"`` of the patch tokens (the seed's "average pooling", default) or ``"cls_mean"``, the
    [CLS] token concatenated with that mean (``2·D`` features: unilm's ``run_linear_eval.py``)."""

    layer: int | None = None
    pool: str = "mean"

    def __post_init__(self) -> None:
        if self.layer is not None:
            positive_int("probe", "layer", self.layer)
        choice("probe", "pool", self.pool, ("mean", "cls_mean"))
