"""The GPU suite: one prepared command for a GPU slot of about 15 minutes, start-up included.

    bash bench/gpu_suite.sh [--minutes 12] [--out runs/gpu_suite.json]   # on a GPU box
    bash bench/gpu_suite.sh --smoke [--out FILE]                          # on a CPU (CI): 2 minutes

1. the device: name, memory and dense bf16 peak (``bench/device.py``; a GPU not in its table gets
   no MFU);
2. the BEiT-B MIM step (``bench/gpu_pretrain.py``): bf16, the DALL-E-architecture encoder online
   (8192 codes, 112² views) under no_grad, the MIM step through the DeepSpeed engine. ZeRO-2 eager
   over a batch sweep (64, 128, 256; it stops at the first batch that runs out of memory), then
   ZeRO stage 0 eager and both stages with ``model.compile: blocks``, at the largest batch that
   fit. Per run: img/s, model MFU (the model's forward + backward FLOPs), pipeline MFU (+ the
   tokenizer's forward), peak memory, against the targets (``TARGETS``);
3. the right-sized CIFAR-10 study (``experiments/cifar10/gpu_study.py``) with the time left as
   its budget (its results.md, study.json and plots beside the suite's JSON, in ``gpu_study/``).

One JSON (``--out``) and one markdown table beside it (``.md``), rewritten after every run: a
stopped suite leaves what it measured. The deadline (``--minutes``) is checked between runs, is the
study's budget, and interrupts a measurement that runs past it (SIGALRM); SIGTERM stops the suite
the same way (the study is sent SIGTERM and writes its tables first). ``--smoke``: a tiny model and
tokenizer in fp32 on the CPU (bf16 is emulated on many CPUs), one step per run, batches 2 and 4,
no compiled runs, the study's ``--tiny`` with seeds 0 and 1.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from device import detect
from gpu_pretrain import (
    Run,
    Setting,
    count_flops,
    efficient_sdpa_with_bias,
    peak_flops,
    rates,
    run_one,
    setting,
    synthetic_batch,
)
from suite_report import markdown

from beit_ds.config import MIMConfig
from beit_ds.processes import die_with_parent, process_age

ROOT = Path(__file__).resolve().parents[1]
# pipeline MFU targets and their img/s on one H100 (989 TFLOP/s, ≈ 160 GFLOP per image)
TARGETS = {"solid first figure": (0.25, 1550.0), "world class": (0.40, 2470.0)}
PAPER_V100 = {"images_per_s_per_gpu": 148.0, "mfu": 0.19}


class Stop(Exception):
    """The suite's deadline (SIGALRM) or a SIGTERM."""


@dataclass(frozen=True)
class Plan:
    """What the suite runs: precision and batches of the MIM step, steps per run, the seconds the
    step benchmarks may take before the study, and the study's extra arguments."""

    smoke: bool
    precision: str
    batches: tuple[int, ...]
    steps: int
    warmup: int
    bench_s: float
    study_args: tuple[str, ...]
    study_min_s: float


GPU_PLAN = Plan(False, "bf16", (64, 128, 256), 10, 3, 180.0, (), 120.0)
SMOKE_PLAN = Plan(True, "fp32", (2, 4), 1, 1, 45.0, ("--tiny", "--seeds", "0", "1"), 20.0)


class Suite:
    """The suite's clock and its one record (``result``), written as JSON and markdown."""

    def __init__(self, out: Path, minutes: float, plan: Plan) -> None:
        self.out, self.plan, self.t0 = out, plan, time.monotonic() - process_age()  # from start-up
        self.deadline = self.t0 + 60 * minutes
        self.result: dict[str, object] = {
            "suite": {"status": "running", "minutes": minutes, "smoke": plan.smoke, "elapsed_s": 0.0,
                      "started": time.strftime("%Y-%m-%d %H:%M:%S")},
            "device": None, "mim": {"runs": {}, "skipped": {}}, "study": None}

    def left(self) -> float:
        return self.deadline - time.monotonic()

    @property
    def mim(self) -> dict:
        return self.result["mim"]  # type: ignore[return-value]

    def save(self, status: str | None = None) -> None:
        """Rewrite the JSON and the markdown (through a temporary file: a reader never sees half)."""
        suite = self.result["suite"]
        assert isinstance(suite, dict)
        suite["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        if status:
            suite["status"] = status
        self.out.parent.mkdir(parents=True, exist_ok=True)
        for path, text in ((self.out, json.dumps(self.result, indent=1, default=str)),
                           (self.out.with_suffix(".md"), markdown(self.result, TARGETS, PAPER_V100))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text + "\n")
            os.replace(tmp, path)


def measure(suite: Suite, s: Setting, mim: MIMConfig, run: Run, opts: argparse.Namespace) -> bool:
    """One MIM-step run at ``s.batch`` into the record; False when it ran out of device memory or
    failed (named under ``skipped``)."""
    name = f"{run.precision}_zero{run.stage}_{'compiled' if run.compiled else 'eager'}_b{s.batch}"
    t0 = time.monotonic()
    try:
        figures, why = run_one(s, mim, run, opts), ""
    except torch.cuda.OutOfMemoryError:
        figures, why = None, "out of device memory"
    except Stop:
        raise
    except Exception as err:  # noqa: BLE001 - a configuration that fails (a compiler error, ...) is named; the suite goes on
        figures, why = None, f"failed: {type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    if figures is None:  # outside the except block: its traceback no longer holds the engine
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        suite.mim["skipped"][name] = why
        print(f"{name}: {why}", flush=True)
        return False
    per_image = suite.mim["model_gflop_per_image"] * 1e9, suite.mim["tokenizer_gflop_per_image"] * 1e9
    step = float(figures["seconds_per_step"] or 0.0)
    peak = suite.mim["peak_tflops"] * 1e12 if suite.mim["peak_tflops"] else None
    row = {"zero": run.stage, "mode": "compiled" if run.compiled else "eager", "batch": s.batch,
           **rates(s.batch, step, (per_image[0] * s.batch, per_image[1] * s.batch), peak), **figures,
           "wall_s": round(time.monotonic() - t0, 1)}
    suite.mim["runs"][name] = row
    mfu = row["pipeline_mfu"]
    print(f"{name}: {row['images_per_s']:.1f} img/s, pipeline MFU {'—' if mfu is None else f'{100 * mfu:.1f} %'}"
          f" ({row['wall_s']} s with start-up)", flush=True)
    suite.save()
    return True


def mim_step(suite: Suite, args: argparse.Namespace) -> None:
    """The BEiT-B MIM step: FLOPs, the batch sweep, stage 0, compiled runs (within the bench's time)."""
    plan = suite.plan
    s = setting(argparse.Namespace(smoke=plan.smoke, model=args.model, batch=plan.batches[0]))
    mim = MIMConfig(vocab_size=512 if plan.smoke else 8192, max_masked=int(0.4 * s.model.num_patches))
    model, tok = count_flops(s, mim, synthetic_batch(s), "cuda" if torch.cuda.is_available() else "cpu")
    device = suite.result["device"]
    assert isinstance(device, dict)
    suite.mim.update(model="smoke" if plan.smoke else args.model, precision=plan.precision,
                     tokenizer="DALL-E encoder architecture (n_hid 16, 32², smoke)" if plan.smoke
                     else "DALL-E encoder architecture (n_hid 256, 8192 codes, 112²)",
                     model_gflop_per_image=model / s.batch / 1e9, tokenizer_gflop_per_image=tok / s.batch / 1e9,
                     peak_tflops=device["peak_tflops"], sdpa_efficient_with_bias=efficient_sdpa_with_bias(s))
    suite.save()
    opts = argparse.Namespace(ds_dir=str(ROOT / "ds_configs"), steps=plan.steps, warmup=plan.warmup, data="",
                              workers=0, data_repeats=1)
    best, why = None, "no batch fit in device memory"
    for batch in plan.batches:
        if not _bench_time(suite, f"{plan.precision}_zero2_eager_b{batch}"):
            why = "the step benchmarks' time was spent"
            break
        if not measure(suite, replace(s, batch=batch), mim, Run(plan.precision, 2), opts):
            break
        best = batch
    for stage, compiled in ((0, False), (2, True), (0, True)):
        name = f"{plan.precision}_zero{stage}_{'compiled' if compiled else 'eager'}_b{best or plan.batches[0]}"
        if best is None:
            suite.mim["skipped"][name] = why
        elif compiled and plan.smoke:
            suite.mim["skipped"][name] = "smoke on a CPU: compiling takes minutes"
        elif _bench_time(suite, name):
            measure(suite, replace(s, batch=best), mim, Run(plan.precision, stage, compiled), opts)
    suite.save()


def _bench_time(suite: Suite, name: str) -> bool:
    """Whether the step benchmarks still have time (their share, and the study's minimum left)."""
    spent = time.monotonic() - suite.t0
    if spent < suite.plan.bench_s and suite.left() > suite.plan.study_min_s:
        return True
    suite.mim["skipped"][name] = "the step benchmarks' time was spent"
    return False


def study(suite: Suite, args: argparse.Namespace) -> None:
    """``gpu_study.py`` with the time left (less a margin for the suite's own files) as its budget."""
    budget = suite.left() - (5.0 if suite.plan.smoke else 15.0)
    docs = suite.out.parent / "gpu_study"
    record: dict[str, object] = {"budget_s": round(budget, 1), "results": str(docs / "results.md")}
    suite.result["study"] = record
    if budget < suite.plan.study_min_s:
        record["status"] = f"skipped: {max(0.0, budget):.0f} s left, the study needs at least {suite.plan.study_min_s:.0f}"
        return
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()  # the step benchmarks' cached blocks go back to the device for the study
    cmd = [sys.executable, str(ROOT / "experiments" / "cifar10" / "gpu_study.py"), "--budget-s", f"{budget:.0f}",
           "--out", str(args.study_out), "--docs", str(docs), "--cache", str(args.cache), *suite.plan.study_args]
    record["command"] = " ".join(cmd[1:])
    suite.save()
    # a process group of its own: not the variables (and port) the step benchmarks' group set here
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    parent = os.getpid()  # the study ends with the suite, however the suite ends (parent-death signal)
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, preexec_fn=lambda: die_with_parent(parent, signal.SIGTERM))
    try:
        record["rc"] = proc.wait()
    finally:
        if proc.poll() is None:  # stopped while the study runs: it saves, writes its tables and ends
            proc.send_signal(signal.SIGTERM)
            try:
                record["rc"] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                record["rc"] = proc.wait()
        summary = docs / "study.json"
        if summary.exists():
            found = json.loads(summary.read_text())
            record.update({k: found.get(k) for k in ("status", "elapsed_s", "cut", "epochs", "claims", "device")})


def found_device(given_tflops: float | None) -> dict[str, object]:
    """``bench/device.py``'s record, and where its peak comes from; on a CPU the peak is its fp32
    matmul rate measured now (so the smoke run computes MFUs)."""
    device = detect(given_tflops).as_dict()
    device["peak_source"] = "given" if given_tflops else "datasheet" if device["peak_tflops"] else None
    if device["kind"] == "cpu" and not given_tflops:
        rate, _ = peak_flops()
        device.update(peak_tflops=rate / 1e12 if rate else None, peak_source="measured fp32 matmul (CPU)")
    return device


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "gpu_suite.json")
    p.add_argument("--minutes", type=float, default=None, help="the deadline (default 12; --smoke: 2)")
    p.add_argument("--smoke", action="store_true", help="CPU: tiny model and tokenizer, fp32, the study's --tiny")
    p.add_argument("--model", default="beit_base_patch16_224")
    p.add_argument("--peak-tflops", type=float, default=None, help="dense peak of the device (default: bench/device.py)")
    p.add_argument("--study-out", type=Path, default=None,
                   help="the study's run folders (default /tmp/beit_cifar_gpu, --smoke: /tmp/beit_cifar_gpu_smoke)")
    p.add_argument("--cache", type=Path, default=Path(os.environ.get("BEIT_DS_CACHE", "/tmp/beit_ds_cache")))
    p.add_argument("--no-study", action="store_true", help="the step benchmarks only")
    args = p.parse_args()
    if args.minutes is None:
        args.minutes = 2.0 if args.smoke else 12.0
    if args.minutes <= 0:
        p.error(f"--minutes {args.minutes}: expected a positive number")
    if args.study_out is None:
        args.study_out = Path("/tmp/beit_cifar_gpu_smoke" if args.smoke else "/tmp/beit_cifar_gpu")
    return args


def main() -> None:
    args = parse_args()
    suite = Suite(args.out.resolve(), args.minutes, SMOKE_PLAN if args.smoke else GPU_PLAN)

    def stop(signum: int, frame: object) -> None:
        raise Stop("deadline" if signum == signal.SIGALRM else "SIGTERM")

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGALRM, stop)
    status = "failed"
    try:
        signal.setitimer(signal.ITIMER_REAL, max(0.01, suite.left()))  # inside: a deadline already past lands here
        suite.result["device"] = found_device(args.peak_tflops)
        suite.save()
        mim_step(suite, args)
        if not args.no_study:
            study(suite, args)
        status = "done"
    except Stop as why:
        status = f"stopped ({why})"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # the files take milliseconds: let them be written
        suite.save(status)
        print(f"gpu_suite: {status}; wrote {suite.out} and {suite.out.with_suffix('.md')}", file=sys.stderr)
    if status == "stopped (SIGTERM)":
        raise SystemExit(128 + signal.SIGTERM)


if __name__ == "__main__":
    main()
