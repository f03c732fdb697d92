"""The GPU study's plan and budget (``gpu_study.py``).

``count_flops`` counts FLOPs per image of every kind of run on the actual models, with
``torch.utils.flop_counter`` (as ``bench/gpu_pretrain.py``: matmuls, convolutions, attention; a
multiply-add is 2 FLOPs) through the training code's own micro-batch functions (``mim_forward``,
``cls_forward``, ``dvae_forward``) on synthetic batches, forward + backward, the frozen tokenizer
counted apart. ``plan_work`` turns the recipes into one ``Work`` per run (images trained and
evaluated, FLOPs); ``plan_lines`` is the printed and documented table: FLOPs per image, images,
the data rate the device needs and the predicted minutes at 10 % and 25 % of its dense peak.

``Budget`` measures the study's elapsed time and predicts a run from the measured seconds per
image of finished runs of its kind, else from the FLOP rate of finished transformer runs plus a
start-up allowance, else from a conservative utilisation of the peak. ``cuts`` drops whole arms
(``CUT_ORDER``: random masking first, then pixels) until the rest fits; ``epoch_factor`` is what
is left when even the main arm does not fit (epochs are cut last).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from gpu_scale import CUT_ORDER, FINETUNE_ARMS, PRETRAIN_ARMS, SWEPT, Regime, Runs
from torch.utils.flop_counter import FlopCounterMode

from beit_ds.data.collate import ClassBatch, MIMBatch
from beit_ds.data.mixup import Mixup
from beit_ds.masking import build_mask_generator, mask_rng
from beit_ds.models import build_classifier, build_mim_model
from beit_ds.recipe import TrainingRecipe
from beit_ds.tasks.finetune import cls_forward
from beit_ds.tasks.pretrain import mim_forward
from beit_ds.tasks.tokenizer import dvae_forward
from beit_ds.tokenizers import DiscreteVAE

BATCH = 4  # images per counted micro-batch (FLOPs per image do not depend on it)
UTILISATIONS = (0.10, 0.25)  # the plan's columns; the first is the budget's assumption before any measurement


class Plain:
    """The part of the DeepSpeed engine the micro-batch functions use (``device``, calling), over a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.module, self.device = module, torch.device("cpu")

    def __call__(self, *args: object, **kwargs: object) -> object:
        return self.module(*args, **kwargs)


def _count(fn: Callable[[], object]) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def _mim_batch(recipe: TrainingRecipe, view: int) -> MIMBatch:
    g = torch.Generator().manual_seed(0)
    masker = build_mask_generator(recipe.masking, recipe.model.grid_size)
    size = recipe.model.img_size
    return MIMBatch(images=torch.randn(BATCH, 3, size, size, generator=g),
                    tokenizer_images=torch.rand(BATCH, 3, view, view, generator=g),
                    bool_masked_pos=torch.stack([torch.from_numpy(masker(mask_rng(0, 0, i))) for i in range(BATCH)]),
                    indices=torch.arange(BATCH))


def pretrain_flops(recipe: TrainingRecipe, tokenizer: TrainingRecipe) -> tuple[float, float]:
    """(MIM model forward + backward, frozen tokenizer forward) FLOPs per image of ``recipe``."""
    model = build_mim_model(recipe.model.replace(compile=False), recipe.mim)  # counted eager: the same FLOPs
    dvae = DiscreteVAE(tokenizer.tokenizer.dvae, tokenizer.tokenizer.image_size).eval()
    frozen = dvae if recipe.mim.target == "tokens" else None
    batch = _mim_batch(recipe, recipe.data.transform.second_input_size)
    tok = _count(lambda: dvae.encode(batch.tokenizer_images)) if frozen is not None else 0.0
    total = _count(lambda: mim_forward(Plain(model), batch, frozen, torch.float32).loss.backward())
    return (total - tok) / BATCH, tok / BATCH


def finetune_flops(recipe: TrainingRecipe) -> tuple[float, float]:
    """(training forward + backward, evaluation forward) FLOPs per image of the classifier."""
    model = build_classifier(recipe.model.replace(compile=False), recipe.finetune.head_init_scale)
    size = recipe.model.img_size
    batch = ClassBatch(torch.randn(BATCH, 3, size, size), torch.arange(BATCH) % recipe.model.num_classes,
                       torch.arange(BATCH))
    mix = Mixup(recipe.augment, recipe.model.num_classes, recipe.finetune.label_smoothing)
    train = _count(lambda: cls_forward(Plain(model), batch, mix, 0, torch.float32).loss.backward())
    with torch.no_grad():
        evaluation = _count(lambda: model(batch.images))
    return train / BATCH, evaluation / BATCH


def tokenizer_flops(recipe: TrainingRecipe) -> float:
    """dVAE training forward + backward FLOPs per image."""
    cfg = recipe.tokenizer
    dvae = DiscreteVAE(cfg.dvae, cfg.image_size)
    batch = _mim_batch_views(cfg.image_size)
    return _count(lambda: dvae_forward(Plain(dvae), batch, 0, cfg.dvae, torch.float32).loss.backward()) / BATCH


def _mim_batch_views(size: int) -> MIMBatch:
    views = torch.rand(BATCH, 3, size, size)
    return MIMBatch(views, views, torch.zeros(BATCH, 1, 1, dtype=torch.bool), torch.arange(BATCH))


@dataclass
class Flops:
    """FLOPs per image: ``pretrain[arm]`` (model, tokenizer), ``finetune`` (train, eval), ``tokenizer`` (train)."""

    pretrain: dict[str, tuple[float, float]]
    finetune: tuple[float, float]
    tokenizer: float


def count_flops(runs: Runs, vocab: int) -> Flops:
    tok = runs.tokenizer()
    pre = {arm: pretrain_flops(runs.pretrain(arm, vocab), tok) for arm in PRETRAIN_ARMS}
    regime = runs.scale.regimes[0]
    return Flops(pre, finetune_flops(runs.finetune(regime, "scratch", runs.scale.lrs[0], 0)), tokenizer_flops(tok))


@dataclass
class Work:
    """One run as the budget sees it: ``kind`` (tokenizer / pretrain / finetune_<regime>), the
    ``unit`` a cut removes with it (``beit`` is never cut), images trained and read, FLOPs."""

    name: str
    kind: str
    unit: str
    images: int
    data_images: int
    flop: float


def trained_images(recipe: TrainingRecipe, size: int) -> int:
    """Images one run trains on: whole batches per epoch (the loader drops the last), capped by max_steps."""
    s = recipe.schedule
    steps = s.epochs * (size // s.micro_batch_size)
    return min(steps, s.max_steps or steps) * s.micro_batch_size


def plan_work(runs: Runs, sizes: dict[str, int], seeds: list[int], flops: Flops,
              chosen: dict[str, dict[str, float]]) -> list[Work]:
    """Every run of the study in the order it runs; ``chosen``: the lr picked per regime and swept
    arm so far (``sweep.json``; the grid's first until then)."""
    tok = runs.tokenizer()
    n = trained_images(tok, sizes["unlabelled"])
    work = [Work("tokenizer", "tokenizer", "beit", n, n, n * flops.tokenizer)]
    for arm in PRETRAIN_ARMS:
        n = trained_images(runs.pretrain(arm), sizes["unlabelled"])
        work.append(Work(f"pretrain_{arm}", "pretrain", arm, n, n, n * sum(flops.pretrain[arm])))
        for regime in runs.scale.regimes:
            for a in (SWEPT if arm == "beit" else (arm,)):
                pick = chosen.get(regime.name, {}).get(a if a in SWEPT else "beit", runs.scale.lrs[0])
                pairs = [(lr, seeds[0]) for lr in (runs.scale.lrs if a in SWEPT else (pick,))]
                work += _finetune_work(runs, regime, a, arm, pairs + [(pick, s) for s in seeds[1:]], pick, sizes, flops)
    return work


def _finetune_work(runs: Runs, regime: Regime, arm: str, unit: str, pairs: list[tuple[float, int]], pick: float,
                   sizes: dict[str, int], flops: Flops) -> list[Work]:
    """The fine-tuning runs (lr, seed) of ``arm`` in ``regime``; those at ``pick`` with their test evaluation."""
    work = []
    for lr, seed in pairs:
        name = runs.ft_name(regime, arm, lr, seed)
        n = trained_images(runs.finetune(regime, arm, lr, seed), sizes[regime.listfile.removesuffix(".txt")])
        seen = n + regime.evals * sizes["val"]
        work.append(Work(name, f"finetune_{regime.name}", unit, n, seen, n * flops.finetune[0] + (seen - n) * flops.finetune[1]))
        if lr == pick:
            work.append(Work(f"test_{name}", "test", unit, 0, sizes["test"], sizes["test"] * flops.finetune[1]))
    return work


def plan_lines(work: list[Work], flops: Flops, peak: float | None) -> list[str]:
    """The plan table: per stage, runs, GFLOP per image, images, PFLOP, data rate and minutes at
    ``UTILISATIONS`` of ``peak`` FLOP/s (None: no peak known, no rates)."""
    util = " | ".join(f"img/s at {100 * u:.0f} %" for u in UTILISATIONS[:1])
    mins = " | ".join(f"min at {100 * u:.0f} %" for u in UTILISATIONS)
    lines = [f"| stage | runs | GFLOP / image | images (M) | PFLOP | {util} | {mins} |",
             "|:--|--:|--:|--:|--:|" + "--:|" * (1 + len(UTILISATIONS))]
    total = 0.0
    for key, label, per_image in _stages(flops):
        rows = [w for w in work if key(w)]
        if not rows:
            continue
        images, flop = sum(w.images for w in rows), sum(w.flop for w in rows)
        total += flop
        seen = sum(w.data_images for w in rows)  # what the data path delivers: training and evaluation images
        rate = f"{UTILISATIONS[0] * peak * seen / flop:,.0f}" if peak else "—"
        times = " | ".join(f"{flop / (u * peak) / 60:.2f}" if peak else "—" for u in UTILISATIONS)
        lines.append(f"| {label} | {len(rows)} | {per_image} | {images / 1e6:.2f} | {flop / 1e15:.2f} | {rate} | {times} |")
    times = " | ".join(f"{total / (u * peak) / 60:.2f}" if peak else "—" for u in UTILISATIONS)
    lines.append(f"| total | {len(work)} | | | {total / 1e15:.2f} | | {times} |")
    return lines


def _stages(flops: Flops) -> list[tuple[Callable[[Work], bool], str, str]]:
    f = flops
    out = [(lambda w: w.kind == "tokenizer", "tokenizer (dVAE training)", f"{f.tokenizer / 1e9:.3f}")]
    for arm, (model, tok) in f.pretrain.items():
        per = f"{model / 1e9:.3f}" + (f" + {tok / 1e9:.3f}" if tok else "")
        out.append((lambda w, a=arm: w.name == f"pretrain_{a}", f"pre-training `{arm}`", per))
    for arm in FINETUNE_ARMS:
        out.append((lambda w, a=arm: w.kind.startswith(("finetune", "test")) and f"_{a}_" in w.name,
                    f"fine-tuning `{arm}` (+ val, test)", f"{f.finetune[0] / 1e9:.3f} (eval {f.finetune[1] / 1e9:.3f})"))
    return out


@dataclass
class Budget:
    """The study's clock: ``seconds`` from ``start`` (``time.monotonic``), ``reserve`` kept for
    the tables; ``rate`` (FLOP/s) and ``startup`` (s per run) until runs are measured."""

    seconds: float
    reserve: float
    rate: float
    startup: float
    start: float = field(default_factory=time.monotonic)
    done: dict[str, list[tuple[float, int, float]]] = field(default_factory=dict)  # kind -> (wall, images, flop)

    def left(self) -> float:
        return self.start + self.seconds - self.reserve - time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def record(self, kind: str, wall: float, images: int, flop: float) -> None:
        self.done.setdefault(kind, []).append((wall, images, flop))

    def predict(self, w: Work) -> float:
        """Seconds ``w`` will take: its kind's measured seconds per image (per run for test
        evaluations), else the measured FLOP rate of transformer runs (pre-training, fine-tuning)
        + the start-up allowance, else the assumed rate + the allowance."""
        same = self.done.get(w.kind)
        if same:
            images, walls = sum(i for _, i, _ in same), sum(t for t, _, _ in same)
            return w.images * walls / images if images else walls / len(same)
        alike = [r for kind, rs in self.done.items() if kind != "tokenizer" for r in rs]
        rate = sum(f for _, _, f in alike) / sum(t for t, _, _ in alike) if alike and w.kind != "tokenizer" else self.rate
        return w.flop / rate + self.startup * (0.5 if w.kind == "test" else 1.0)  # a test builds no engine

    def total(self, work: list[Work]) -> float:
        return sum(self.predict(w) for w in work)

    def cuts(self, pending: list[Work]) -> list[str]:
        """The arms to cut (``CUT_ORDER``) so that ``pending`` fits in the time left."""
        cut: list[str] = []
        for arm in CUT_ORDER:
            if self.total([w for w in pending if w.unit not in cut]) <= self.left():
                break
            if any(w.unit == arm for w in pending):
                cut.append(arm)
        return cut

    def epoch_factor(self, scalable: list[Work], fixed: list[Work]) -> float:
        """The fraction of their epochs ``scalable`` runs can keep beside ``fixed`` ones (1: all)."""
        need = self.total(scalable) - self.startup * len(scalable)
        room = self.left() - self.total(fixed) - self.startup * len(scalable)
        return 1.0 if need <= room else max(0.01, 0.95 * room / need)
