"""The on-device data path against the worker path: loader img/s for the CIFAR-10 study's recipes.

Two recipes, as the study runs them: pre-training (``experiments/cifar10/pretrain.yaml``: one crop
→ 32² patch view + 32² tokenizer view, flip, colour jitter 0.4, blockwise masks, batch 128) and
fine-tuning (``experiments/cifar10/finetune.yaml``: crop + flip, batch 64; fed the archive's 50,000
labelled train images instead of the study's 2,000-image list, which only ``study.py`` writes).
Candidates, each pulling ``--batches`` batches per call from an iterator that lives across calls
(a new epoch starts when one ends, as in training):

* ``workersN``: the existing loader with ``data.num_workers=N`` (each worker reads, decodes and
  transforms one JPEG at a time);
* ``device``: ``data.on_device: true`` on the training device — this CPU, or the GPU where there
  is one (the split decoded once into one uint8 tensor — not timed, reported as ``decode_s`` —
  then whole batches cut by tensor ops).

Calls are timed in interleaved rounds (``harness.time_interleaved``, wall clock); img/s = images
per call / median seconds per call. Workers keep prefetching (``data.prefetch_factor`` batches
each) while another candidate runs, which favours the worker path a little: the ratios are
conservative. The last line printed is one JSON object.

    python bench/device_data.py [--data archive|demo] [--rounds 5] [--batches 20] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from harness import emit, median, time_interleaved

from beit_ds.config_io import load_recipe
from beit_ds.data import LoaderPlace, build_finetune_loader, build_pretrain_loader
from beit_ds.data.device_loader import training_device
from beit_ds.recipe import FinetuneRecipe, PretrainRecipe

ROOT = Path(__file__).resolve().parents[1]
ARCHIVE = ROOT.parent / "shared/datasets/cifar10/cifar10_jpeg.tar.gz"
RECIPES: dict[str, tuple[type, str]] = {
    "pretrain": (PretrainRecipe, "experiments/cifar10/pretrain.yaml"),
    "finetune": (FinetuneRecipe, "experiments/cifar10/finetune.yaml"),
}


def cpu_name() -> str:
    """``model name`` of ``/proc/cpuinfo`` (what ``grep -m1 'model name' /proc/cpuinfo`` shows)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return "unknown"
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "unknown")


def data_overrides(data: str, cache: str) -> list[str]:
    """The recipes' data section pointed at the CIFAR-10 archive's train split, or at the demo
    photographs (decoded to 32² for the device path, repeated to fill batches)."""
    if data == "archive":
        return ["data.source=archive", f"data.path={ARCHIVE}", "data.subdir=train", f"data.cache_dir={cache}",
                "data.repeats=1"]
    return ["data.source=demo", "data.path=", "data.subdir=", "data.on_device_size=32", f"data.cache_dir={cache}",
            "data.repeats=1024"]


def build(kind: str, sets: list[str]) -> Any:
    """The train loader of ``kind``'s recipe with ``sets`` applied (worker or device path)."""
    cls, path = RECIPES[kind]
    recipe: Any = load_recipe(cls, ROOT / path, sets)
    place = LoaderPlace(recipe.schedule.micro_batch_size, seed=recipe.schedule.seed)
    if kind == "pretrain":
        return build_pretrain_loader(recipe.data, recipe.masking, recipe.model.grid_size, place)
    return build_finetune_loader(recipe.data, "train", place, augment=recipe.augment)


class Stream:
    """``batches`` batches per call from one long-lived iterator; the next epoch when one ends."""

    def __init__(self, loader: Any, batches: int) -> None:
        self.loader, self.batches, self.epoch = loader, batches, 0
        self.it: Iterator[Any] | None = None

    def __call__(self, _round: int) -> None:
        for _ in range(self.batches):
            while True:
                if self.it is None:
                    self.it = iter(self.loader.at(self.epoch))
                if next(self.it, None) is not None:
                    break
                self.it, self.epoch = None, self.epoch + 1
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # the device path's batches are computed, not just queued

    def close(self) -> None:
        close = getattr(self.it, "close", None)
        if close is not None:
            close()  # ends the epoch's worker processes
        self.it = None


def bench_recipe(kind: str, args: argparse.Namespace, base: list[str]) -> dict[str, object]:
    """img/s of every candidate for ``kind`` and the device path's ratios."""
    start = time.perf_counter()
    streams = {"device": Stream(build(kind, [*base, "data.on_device=true"]), args.batches)}
    decode_s = time.perf_counter() - start
    for n in args.workers:
        streams[f"workers{n}"] = Stream(build(kind, [*base, f"data.num_workers={n}"]), args.batches)
    batch = streams["device"].loader.place.batch_size
    try:
        times = time_interleaved(dict(streams.items()), args.warmup, args.rounds, "wall")
    finally:
        for stream in streams.values():
            stream.close()
    rates = {name: args.batches * batch / median(t) for name, t in times.items()}
    out: dict[str, object] = {f"{kind}_{name}_img_s": round(rate, 1) for name, rate in rates.items()}
    out[f"{kind}_batch"] = batch
    out[f"{kind}_decode_s"] = round(decode_s, 2)
    for n in args.workers:
        out[f"{kind}_ratio_vs_workers{n}"] = round(rates["device"] / rates[f"workers{n}"], 2)
    best = max((rates[f"workers{n}"] for n in args.workers), default=float("nan"))
    out[f"{kind}_ratio"] = round(rates["device"] / best, 2)
    shown = ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
    print(f"{kind} (batch {batch}): img/s {shown}; device ÷ best worker path {rates['device'] / best:.2f}x"
          f" (device build incl. decode or cache read {decode_s:.1f} s)", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", choices=("archive", "demo"), default="archive" if ARCHIVE.is_file() else "demo")
    p.add_argument("--rounds", type=int, default=5, help="timed calls per candidate")
    p.add_argument("--warmup", type=int, default=1, help="untimed calls per candidate (workers start)")
    p.add_argument("--batches", type=int, default=20, help="batches per call")
    p.add_argument("--workers", default="1,2", help="worker counts of the worker path, comma-separated")
    p.add_argument("--threads", type=int, default=0, help="torch threads of this process (0: torch's default)")
    p.add_argument("--cache", default="/tmp/beit_ds_cache", help="data.cache_dir (extraction and decode cache)")
    p.add_argument("--only", default="pretrain,finetune", help="recipes to run, comma-separated")
    args = p.parse_args()
    args.workers = [int(n) for n in args.workers.split(",") if n]
    if args.threads:
        torch.set_num_threads(args.threads)
    result: dict[str, object] = {"cpu": cpu_name(), "device": str(training_device()), "data": args.data,
                                 "threads": torch.get_num_threads(), "rounds": args.rounds, "batches_per_call": args.batches}
    print(f"CPU: {result['cpu']}; device path on {result['device']}; torch threads {result['threads']};"
          f" data {args.data}", flush=True)
    base = data_overrides(args.data, args.cache)
    for kind in args.only.split(","):
        result.update(bench_recipe(kind, args, base))
    emit(result)


if __name__ == "__main__":
    main()
