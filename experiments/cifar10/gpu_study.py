"""The CIFAR-10 study at the length where masked image modeling has been seen to help, on one GPU in
at most 10 minutes: does BEiT pre-training beat training from scratch (seed Table 1), with 2,000 and
with all labels, and do blockwise masking and visual tokens beat random masking and pixel
regression (Table 4)? docs/RESULTS.md says why the CPU study cannot decide it.

    python experiments/cifar10/gpu_study.py [--out /tmp/beit_cifar_gpu] [--budget-s 600] [--docs DIR]
    python experiments/cifar10/gpu_study.py --tiny --out /tmp/tiny   # every stage on the CPU (CI)

One process runs every run in order through ``beit_ds.tasks`` (no launcher per run). Each run is a
folder with ``DONE.json`` once finished, so a stopped study continues where it stopped and a
stopped run resumes from its last checkpoint. Stages:
  decode     extract the archive once; class-balanced lists (make_lists.py --full): 2,000 labelled
             within the 45,000 train images, 5,000 held-out val, 10,000 test, all 50,000 unlabelled
  plan       FLOPs per image of every run (counted on the actual models), images, the data rate and
             minutes at 10 % / 25 % of the device's peak (plan.md)
  tokenizer  our dVAE on the 50,000 images (gpu_tokenizer.yaml)
  beit       pre-training, visual tokens + blockwise masking, 300 epochs (gpu_pretrain.yaml); per
             regime the lr of scratch and beit chosen on the held-out val (seed 0), then every seed
  pixels     pre-training by raw-pixel regression, fine-tuned at beit's lr, every regime and seed
  random     pre-training with random masking, the same
  table      results.md and study.json: test top-1 per arm, Welch's t-test per claim and regime,
             convergence, the budget; the convergence plots

The budget (``--budget-s``, from the process start): before the tokenizer, before each arm and
before the first fine-tuning the study predicts what is left from the rates it measured and cuts
arms (random masking first, then pixels) before it cuts epochs; what it cut is in the results. At
the deadline less a reserve, a running run saves a checkpoint and stops, and the tables are
written from what finished (also on SIGTERM).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch
from gpu_plan import UTILISATIONS, Budget, Flops, Work, count_flops, plan_lines, plan_work
from gpu_scale import (
    EXP,
    GPU,
    PRETRAIN_ARMS,
    ROOT,
    SWEPT,
    TINY,
    Epochs,
    Regime,
    Runs,
    Scale,
    compiles_blocks,
    data_overrides,
    list_size,
)
from gpu_table import write_gpu_results
from table import val_curve

from beit_ds import tasks
from beit_ds.config import DataConfig
from beit_ds.data import build_records
from beit_ds.data.archive import extracted_folder
from beit_ds.data.resident import cached_split
from beit_ds.data.skips import DataError
from beit_ds.engine.preemption import Preempted
from beit_ds.processes import process_age
from beit_ds.recipe import TrainingRecipe
from beit_ds.safe_write import write_text

sys.path.insert(0, str(ROOT / "bench"))
from device import detect  # noqa: E402  (bench/device.py: the one table of device peaks)

ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10_jpeg.tar.gz"
LISTS = ("unlabelled", "labelled", "full", "val", "test")


def decoded(listfile: Path, cache: Path) -> None:
    """The image list ``listfile`` decoded into ``data.on_device``'s cache (``cache``), as a run reads it."""
    data = DataConfig(source="filelist", path=str(listfile), cache_dir=str(cache), on_device=True)
    cached_split(build_records(data, "train"), data.on_device_size, data.max_image_pixels, cache)


class Stopped(Exception):
    """The study stops early: its deadline, or a SIGTERM."""


class GpuStudy:
    """The runs of one study folder ``out``, in order, within ``budget``; ``record`` is study.json."""

    def __init__(self, args: argparse.Namespace, scale: Scale, peak: float | None) -> None:
        self.out, self.seeds, self.scale, self.peak = args.out, args.seeds, scale, peak
        saved = self.out / "epochs.json"
        self.epochs = Epochs(**json.loads(saved.read_text())) if saved.exists() else Epochs()
        compile_ = ["model.compile=blocks"] if args.compile and compiles_blocks() else []
        common = ["log.progress_bar=false", "log.tensorboard=false", f"data.cache_dir={args.cache.resolve()}",
                  *data_overrides(args.on_device, torch.cuda.is_available())]
        self.on_device = "data.on_device=true" in common
        self.runs = Runs(self.out, scale, common, self.epochs, [*scale.model, *compile_])
        rate = UTILISATIONS[0] * peak if peak else 1e10
        self.budget = Budget(args.budget_s, scale.reserve_s, rate, 5.0 if peak else 2.0,
                             start=time.monotonic() - process_age())
        self.cut: list[str] = []
        self.flops: Flops | None = None
        self.sizes: dict[str, int] = {}
        self._work: tuple[str, list[Work]] = ("", [])
        self.signals: StopSignals | None = None  # once installed: no run starts after a stop request
        self.decisions: list[dict[str, object]] = []
        self.record: dict[str, object] = {"status": "running", "budget_s": args.budget_s, "decisions": self.decisions,
                                          "data": common, "compile": compile_, "seeds": self.seeds}

    # --- bookkeeping ------------------------------------------------------------------------
    def done(self, name: str) -> dict | None:
        path = self.out / name / "DONE.json"
        return json.loads(path.read_text()) if path.exists() else None

    def finished(self, w: Work) -> bool:
        if w.kind == "test":
            return (self.out / w.name.removeprefix("test_") / "test.json").exists()
        return (self.out / w.name / "DONE.json").exists()

    def chosen(self) -> dict[str, dict[str, float]]:
        path = self.out / "sweep.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def work(self) -> list[Work]:
        """Every run as planned now (again when the epochs or the chosen lrs change)."""
        assert self.flops is not None, "plan() runs first"
        key = json.dumps([vars(self.epochs), self.chosen()], sort_keys=True)
        if key != self._work[0]:
            self._work = (key, plan_work(self.runs, self.sizes, self.seeds, self.flops, self.chosen()))
        return self._work[1]

    def pending(self) -> list[Work]:
        """The runs still to do (cut arms left out)."""
        return [w for w in self.work() if not self.finished(w) and w.unit not in self.cut]

    def check_time(self) -> None:
        """``Stopped`` once the deadline passed or a SIGTERM arrived: no run starts after either."""
        signals = self.signals
        if signals is not None and self.budget.left() <= 0:
            signals.reason, signals.deadline = "deadline", True
        if signals is not None and signals.requested():
            raise Stopped(signals.reason)
        if self.budget.left() <= 0:
            raise Stopped("deadline")

    def eta(self) -> str:
        left = self.pending()
        return f"{len(left)} runs left, predicted {self.budget.total(left) / 60:.1f} of {self.budget.left() / 60:.1f} min"

    # --- stages -----------------------------------------------------------------------------
    def decode(self, archive: Path, cache: Path) -> None:
        """The archive extracted once (links, devices and escaping members refused) and the lists."""
        if all((self.out / f"{name}.txt").exists() for name in LISTS):
            print("[decode] done, skipped", flush=True)
            return
        t0 = time.monotonic()
        try:
            root = extracted_folder(archive, cache)
        except DataError as err:
            raise SystemExit(f"--archive {archive}: {err}") from None
        s = self.scale
        subprocess.check_call([sys.executable, str(EXP / "make_lists.py"), str(root), str(self.out), "--labelled",
                               str(s.labelled), "--val", str(s.val), "--test", str(s.test), "--full", str(s.full)])
        if self.on_device:  # each list decoded once into the runs' cache, the lists side by side
            with ThreadPoolExecutor(len(LISTS)) as pool:
                list(pool.map(lambda name: decoded(self.out / f"{name}.txt", cache), LISTS))
        (self.out / "decode").mkdir(exist_ok=True)
        write_text(self.out / "decode" / "DONE.json", json.dumps({"stage": "decode", "wall_s": time.monotonic() - t0}))

    def plan(self) -> None:
        """FLOPs per image on the actual models and the plan table (plan.md, printed)."""
        self.sizes = {name: list_size(self.out / f"{name}.txt") for name in LISTS}
        self.flops = count_flops(self.runs, self.runs.tokenizer().tokenizer.dvae.codebook_size)
        work = self.work()
        peak = f"{self.peak / 1e12:.0f} TFLOP/s" if self.peak else "unknown (no rates)"
        lines = [f"Plan: {len(work)} runs; images {self.sizes}; device peak {peak}.", "", *plan_lines(work, self.flops, self.peak)]
        (self.out / "plan.md").write_text("\n".join(lines) + "\n")
        self.record["plan"] = lines
        print("\n".join(lines), flush=True)

    def decide(self, point: str) -> None:
        """Cut arms (random masking, then pixels), then epochs not yet started, until the rest fits."""
        frozen_pre = any((self.out / f"pretrain_{arm}").exists() for arm in PRETRAIN_ARMS)
        frozen_ft = any(self.out.glob("ft_*"))
        self.epochs.pretrain = self.epochs.pretrain if frozen_pre else 1.0
        self.epochs.finetune = self.epochs.finetune if frozen_ft else 1.0
        self.cut = []
        self.cut = self.budget.cuts(self.pending())
        kept = self.pending()
        scalable = [w for w in kept if (w.kind == "pretrain" and not frozen_pre)
                    or (w.kind.startswith("finetune") and not frozen_ft)]
        factor = self.budget.epoch_factor(scalable, [w for w in kept if w not in scalable]) if scalable else 1.0
        if factor < 1:
            self.epochs.pretrain = self.epochs.pretrain if frozen_pre else factor
            self.epochs.finetune = self.epochs.finetune if frozen_ft else factor
        write_text(self.out / "epochs.json", json.dumps(vars(self.epochs)))
        decision = {"at": point, "elapsed_s": round(self.budget.elapsed(), 1), "left_s": round(self.budget.left(), 1),
                    "predicted_s": round(self.budget.total(self.pending()), 1), "cut": list(self.cut),
                    "epochs": dict(vars(self.epochs))}
        self.decisions.append(decision)
        print(f"[budget] {point}: {decision}", flush=True)

    def train(self, stage: str, name: str, recipe: TrainingRecipe) -> None:
        """``tasks.train`` into ``out/<name>`` unless done; DONE.json and the measured rate after it."""
        done = self.done(name)
        work = next((w for w in self.work() if w.name == name), None)
        kind = work.kind if work else stage
        if done is not None:
            print(f"[{stage}] {name}: done, skipped", flush=True)
            self.budget.record(done["kind"], done["wall_s"], done["images"], done["flop"])
            return
        self.check_time()
        predicted = f"predicted {self.budget.predict(work):.0f} s, " if work else ""
        print(f"[{stage}] {name}: starting ({self.budget.elapsed() / 60:.1f} min in; {predicted}{self.eta()})", flush=True)
        t0 = time.monotonic()
        tasks.train(recipe, ROOT / self.scale.ds_config, resume="auto")
        wall = time.monotonic() - t0
        images, flop = (work.images, work.flop) if work else (0, 0.0)
        record = {"stage": stage, "kind": kind, "wall_s": wall, "images": images, "flop": flop}
        write_text(self.out / name / "DONE.json", json.dumps(record, indent=1))
        self.budget.record(kind, wall, images, flop)
        print(f"[{stage}] {name}: finished in {wall:.1f} s ({images / wall:,.0f} img/s)", flush=True)

    def test(self, regime: Regime, arm: str, lr: float, seed: int) -> None:
        """Top-1 of a fine-tuned run on the 10,000 test images, into its ``test.json``."""
        name = self.runs.ft_name(regime, arm, lr, seed)
        path = self.out / name / "test.json"
        if path.exists():
            self.budget.record("test", json.loads(path.read_text())["wall_s"], 0, 0.0)
            return
        self.check_time()
        t0 = time.monotonic()
        metrics = tasks.evaluate(self.runs.finetune(regime, arm, lr, seed, test=True))
        wall = time.monotonic() - t0
        write_text(path, json.dumps({**metrics, "wall_s": wall}, indent=1))
        self.budget.record("test", wall, 0, 0.0)
        print(f"[test] {name}: top-1 {metrics['top1']:.2f} % ({wall:.1f} s)", flush=True)

    def sweep(self, regime: Regime) -> dict[str, float]:
        """The lr of scratch and beit with the best final held-out val top-1 (seed 0)."""
        picks = {}
        for arm in SWEPT:
            vals = {}
            for lr in self.scale.lrs:
                name = self.runs.ft_name(regime, arm, lr, self.seeds[0])
                self.train(f"sweep {regime.name}", name, self.runs.finetune(regime, arm, lr, self.seeds[0]))
                vals[lr] = val_curve(self.out / name)[-1]
            picks[arm] = max(vals, key=lambda lr: vals[lr])
            print(f"[sweep {regime.name}] {arm}: val top-1 " + ", ".join(f"lr {k:g}: {v:.2f}" for k, v in vals.items())
                  + f" -> lr {picks[arm]:g}", flush=True)
        write_text(self.out / "sweep.json", json.dumps({**self.chosen(), regime.name: picks}, indent=1))
        return picks

    def arm(self, arm: str) -> None:
        """Pre-training of ``arm`` and its fine-tuning runs (beit: with scratch and the lr sweep)."""
        if arm in self.cut:
            print(f"[{arm}] cut by the budget", flush=True)
            return
        self.train("pretrain", f"pretrain_{arm}", self.runs.pretrain(arm))
        if arm == "beit":
            self.decide("before the first fine-tuning")
        for regime in self.scale.regimes:
            picks = self.sweep(regime) if arm == "beit" else {arm: self.chosen()[regime.name]["beit"]}
            for a, lr in picks.items():
                for seed in self.seeds:
                    if seed != self.seeds[0] or a not in SWEPT:
                        self.train(f"finetune {regime.name}", self.runs.ft_name(regime, a, lr, seed),
                                   self.runs.finetune(regime, a, lr, seed))
                    self.test(regime, a, lr, seed)

    def run(self, archive: Path, cache: Path) -> None:
        print(f"== decode {time.strftime('%H:%M:%S')}", flush=True)
        self.decode(archive, cache)
        self.plan()
        self.decide("start")
        self.train("tokenizer", "tokenizer", self.runs.tokenizer())
        self.decide("after the tokenizer")
        for arm in PRETRAIN_ARMS:
            if arm != "beit":
                self.decide(f"before {arm}")
            print(f"== {arm} {time.strftime('%H:%M:%S')}", flush=True)
            self.arm(arm)

    def finish(self, status: str, docs: Path | None) -> None:
        """results.md, the plots and study.json, from whatever finished."""
        self.record.update(status=status, elapsed_s=round(self.budget.elapsed(), 1), cut=list(self.cut),
                           epochs=vars(self.epochs))
        write_gpu_results(self.out, self.seeds, self.scale.regimes, self.record, docs)
        print(f"== {status} after {self.budget.elapsed() / 60:.1f} min: {self.out / 'results.md'}", flush=True)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=Path(os.environ.get("BEIT_CIFAR_GPU_OUT", "/tmp/beit_cifar_gpu")))
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budget-s", type=float, default=600.0, help="seconds from start-up to the written tables")
    p.add_argument("--tiny", action="store_true", help="every stage on a few images on the CPU (the CI test)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BEIT_DS_CACHE", "/tmp/beit_ds_cache")))
    p.add_argument("--archive", type=Path, default=ARCHIVE, help="CIFAR-10 as JPEG (.tar.gz)")
    p.add_argument("--docs", type=Path, default=None, help="also write results.md, study.json and the plots here")
    p.add_argument("--peak-tflops", type=float, default=None, help="the device's dense bf16 peak (default: looked up)")
    p.add_argument("--compile", action="store_true", help="model.compile=blocks (regional compilation, amortised)")
    p.add_argument("--plan-only", action="store_true", help="lists, the plan and the budget's first decision; no run")
    p.add_argument("--no-on-device", dest="on_device", action="store_false",
                   help="read JPEGs in loader workers even where data.on_device exists")
    return p.parse_args()


class StopSignals:
    """How the study stops: SIGTERM raises ``Stopped`` between runs (inside a run the loop's own
    handler saves a checkpoint and raises ``Preempted``); the deadline's SIGALRM sends this process
    SIGTERM. Every signal is also noted through ``signal.set_wakeup_fd``, so a SIGTERM that a run's
    handler took just as the run ended still stops the study before its next run."""

    def __init__(self) -> None:
        self.reason, self.deadline = "SIGTERM", False
        self._read, write = os.pipe()
        for fd in (self._read, write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(write, warn_on_full_buffer=False)
        self._seen = b""
        signal.signal(signal.SIGTERM, self._term)
        signal.signal(signal.SIGALRM, self._alarm)

    def _term(self, signum: int, frame: object) -> None:
        raise Stopped(self.reason)

    def _alarm(self, signum: int, frame: object) -> None:
        self.reason, self.deadline = "deadline", True
        os.kill(os.getpid(), signal.SIGTERM)

    def requested(self) -> bool:
        """Whether the deadline passed or a SIGTERM arrived (whoever handled it)."""
        try:
            self._seen += os.read(self._read, 4096)
        except BlockingIOError:
            pass
        return self.deadline or bytes([signal.SIGTERM]) in self._seen


def main() -> None:
    args = parse_args()
    if not (args.tiny or args.plan_only) and not torch.cuda.is_available():
        raise SystemExit("gpu_study.py: no CUDA device (the study is sized for one GPU; --tiny runs it on the CPU)")
    if not args.archive.is_file():
        raise SystemExit(f"--archive {args.archive}: not a file (expected cifar10_jpeg.tar.gz)")
    if torch.cuda.is_available():
        torch.set_float32_matmul_precision("high")  # the fp32 tokenizer on tensor cores (TF32)
        torch.backends.cudnn.benchmark = True  # the dVAE's convolutions: one shape per run
    args.out = args.out.resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    device = detect(args.peak_tflops)
    study = GpuStudy(args, TINY if args.tiny else GPU, device.peak_tflops * 1e12 if device.peak_tflops else None)
    study.record["device"] = device.as_dict()
    if args.plan_only:
        study.decode(args.archive.resolve(), args.cache.resolve())
        study.plan()
        study.decide("start")
        return
    why = study.signals = StopSignals()
    status = "failed"  # unless the runs end or stop cleanly
    try:
        signal.setitimer(signal.ITIMER_REAL, max(0.01, study.budget.left()))  # inside: a budget already spent lands here
        study.run(args.archive.resolve(), args.cache.resolve())
        status = "done"
    except (Stopped, Preempted) as err:
        status = f"stopped ({why.reason}): {str(err).splitlines()[0]}"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the tables take seconds: let them be written
        study.finish(status, args.docs)
    if status.startswith("stopped (SIGTERM)"):
        raise SystemExit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
