"""The CIFAR-10 study of docs/RESULTS.md: do the seed's claims hold at CPU scale, beyond seed noise?

    python experiments/cifar10/study.py [--out /tmp/beit_cifar] [--seeds 0 1 2] [--tiny] [stage ...]

Stages (default: all, in order; each run is skipped once done, so a killed study continues where it
stopped and a killed run resumes from its last checkpoint). The running launcher ends with the
study: SIGTERM to the study is passed on (the launcher saves and stops), and a study killed
outright takes its launcher down with it (Linux's parent-death signal):
  lists     class-balanced, disjoint labelled / held-out val / test file lists (make_lists.py)
  tokenizer our dVAE on the 50k train images, labels unused (tokenizer.yaml)
  pretrain  BEiT MIM, labels unused (pretrain.yaml), five arms: ``long`` (blockwise masking, visual
            tokens, masked positions only, 2S steps) and at S steps ``short`` (the same), ``random``
            (random masking), ``pixels`` (raw-pixel regression, seed Table 4) and ``all`` (loss on
            every position)
  sweep     fine-tuning lr for ``scratch`` and ``long``, chosen on the held-out val split (seed 0)
  finetune  every arm and ``scratch`` (random weights) x every seed at the chosen lr; val top-1
            after every epoch (the convergence plot), test top-1 at the end
  probe     linear probe of every block of ``long`` and of random weights (seed 0, val); then the
            best val block and the last block over every seed, evaluated on test
  table     results.md (a table per claim, mean ± std, Welch's t-test) and the PNG plots

``--tiny``: the same stages on a few images and steps with a 2-block model (the CI test).
Its pre-training is far too short to decide the seed's claim (docs/RESULTS.md); ``gpu_study.py``
runs the study that can, on one GPU in ≤ 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from beit_ds.processes import exit_on_sigterm, run_child

ROOT = Path(__file__).resolve().parents[2]
EXP = Path(__file__).resolve().parent
ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10_jpeg.tar.gz"
STAGES = ("lists", "tokenizer", "pretrain", "sweep", "finetune", "probe", "table")
# Table 4's arms: overrides of pretrain.yaml, and whether the arm trains for the long budget
PRETRAIN_ARMS: dict[str, tuple[list[str], bool]] = {
    "long": ([], True),
    "short": ([], False),
    "random": (["masking.strategy=random"], False),
    "pixels": (["mim.target=pixels", "mim.pixel_target=raw", "tokenizer.path="], False),
    "all": (["mim.predict_all=true"], False),
}
FINETUNE_ARMS = ("scratch", *PRETRAIN_ARMS)


@dataclass(frozen=True)
class Scale:
    """The study's budget: image counts (per class), steps and epochs, and the lr grid."""

    labelled: int
    val: int
    test: int
    tokenizer_steps: int
    short_steps: int
    finetune_epochs: int
    probe_epochs: int
    lrs: tuple[float, ...]
    batch: int
    model: tuple[str, ...] = ()  # overrides of every BEiT stage's model (the tiny CI model)
    extra: dict[str, tuple[str, ...]] = field(default_factory=dict)  # per config file


FULL = Scale(labelled=200, val=100, test=1000, tokenizer_steps=500, short_steps=195, finetune_epochs=8,
             probe_epochs=5, lrs=(1e-3, 3e-3), batch=64)
TINY = Scale(labelled=3, val=2, test=2, tokenizer_steps=4, short_steps=2, finetune_epochs=2, probe_epochs=1,
             lrs=(1e-3, 3e-3), batch=8, model=("model.embed_dim=32", "model.depth=2", "model.num_heads=2"),
             extra={"tokenizer.yaml": ("tokenizer.dvae.hidden_dim=16", "tokenizer.dvae.codebook_dim=16",
                                       "tokenizer.dvae.temperature_steps=4", "tokenizer.dvae.prior_warmup_steps=1",
                                       "schedule.micro_batch_size=8"),
                    "pretrain.yaml": ("schedule.micro_batch_size=8",)})


def fmt_lr(lr: float) -> str:
    return f"{lr:g}"


class Study:
    """Runs the stages into ``out``: one folder per run, ``DONE.json`` once it has finished."""

    def __init__(self, out: Path, seeds: list[int], scale: Scale, cache: Path, archive: Path,
                 ds_config: Path | None = None) -> None:
        self.out, self.seeds, self.scale, self.cache, self.archive = out, seeds, scale, cache, archive
        self.ds_config = ds_config  # --deepspeed_config of the pre-training runs (None: the launcher's default)
        self.depth = 2 if scale is TINY else 6
        self.started = time.time()
        self.done_now, self.calls, self.planned, self.run_s = 0, 0, 0, 0.0

    def plan(self, stages: list[str]) -> None:
        """How many runs ``stages`` go through (done or not): the denominator of the progress line."""
        sweep = 2 * len(self.scale.lrs)
        per_stage = {"tokenizer": 1, "pretrain": len(PRETRAIN_ARMS), "sweep": sweep,
                     "finetune": sweep + len(FINETUNE_ARMS) * len(self.seeds),
                     "probe": 2 * self.depth + 3 * len(self.seeds)}
        self.planned = sum(per_stage.get(s, 0) for s in stages)

    def eta(self) -> str:
        """Minutes left: the mean of this invocation's finished runs times the runs still to come."""
        if not self.done_now:
            return "ETA after the first run"
        left = max(0, self.planned - self.calls)
        return f"ETA {left * self.run_s / self.done_now / 60:.0f} min for at most {left} more runs"

    # --- running one launcher -------------------------------------------------------------
    def done(self, name: str) -> dict | None:
        path = self.out / name / "DONE.json"
        return json.loads(path.read_text()) if path.exists() else None

    def launch(self, stage: str, name: str, script: str, config: str, overrides: list[str]) -> None:
        """``python launch/<script> --config <config> ...`` into ``out/<name>`` unless already done."""
        self.calls += 1
        if self.done(name) is not None:
            print(f"[{stage}] {name}: done, skipped", flush=True)
            return
        cfg = EXP / config
        model = self.scale.model if config != "tokenizer.yaml" else ()
        args = [*model, *self.scale.extra.get(config, ()), *overrides,
                f"checkpoint.output_dir={self.out / name}"]
        ds = ["--deepspeed_config", str(self.ds_config)] if self.ds_config and script == "pretrain.py" else []
        cmd = [sys.executable, str(ROOT / "launch" / script), *ds, "--config", str(cfg), *args]
        elapsed = (time.time() - self.started) / 60
        print(f"[{stage}] {name}: starting run {self.calls}/{self.planned} ({elapsed:.1f} min into this "
              f"invocation, {self.done_now} runs finished, {self.eta()})", flush=True)
        t0 = time.time()
        log = self.out / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as f:
            rc = run_child(cmd, f, ROOT)
        if rc != 0:
            raise SystemExit(f"[{stage}] {name}: exit {rc}; see {log} (rerun the study to resume)")
        wall = time.time() - t0
        self.run_s += wall
        record = {"stage": stage, "wall_s": wall, "command": " ".join(cmd[1:])}
        (self.out / name / "DONE.json").write_text(json.dumps(record, indent=1))
        self.done_now += 1
        print(f"[{stage}] {name}: finished in {wall / 60:.1f} min", flush=True)

    def test_eval(self, stage: str, name: str, config: str) -> None:
        """Top-1 of run ``name``'s final weights on the test list, into ``out/<name>/test.json``."""
        path = self.out / name / "test.json"
        if path.exists():
            return
        cmd = [sys.executable, str(ROOT / "launch" / "evaluate.py"), "--config", str(EXP / config),
               f"finetune.init={self.out / name / 'checkpoints'}", f"data.eval_path={self.out / 'test.txt'}",
               "--out", str(path.with_suffix(".tmp"))]
        t0 = time.time()
        with open(self.out / f"{name}.log", "a") as f:
            rc = run_child(cmd, f, ROOT)
        if rc != 0:
            raise SystemExit(f"[{stage}] {name}: test evaluation exit {rc}; see {self.out / name}.log")
        result = json.loads(path.with_suffix(".tmp").read_text())
        result["wall_s"] = time.time() - t0
        result.pop("recipe", None)
        path.write_text(json.dumps(result, indent=1))
        path.with_suffix(".tmp").unlink()
        print(f"[{stage}] {name}: test top-1 {result['top1']:.2f} %", flush=True)

    def val_top1(self, name: str) -> float:
        """The last ``val/top1`` a run logged (after its final epoch)."""
        lines = (self.out / name / "metrics.jsonl").read_text().splitlines()
        vals = [r["val/top1"] for r in map(json.loads, lines) if "val/top1" in r]
        if not vals:
            raise SystemExit(f"{self.out / name}/metrics.jsonl: no val/top1 logged")
        return float(vals[-1])

    # --- the stages ------------------------------------------------------------------------
    def data_args(self) -> list[str]:
        return [f"data.path={self.archive}", f"data.cache_dir={self.cache}"]

    def lists(self) -> None:
        if (self.out / "test.txt").exists():
            print("[lists] done, skipped", flush=True)
            return
        sys.path.insert(0, str(ROOT))
        from beit_ds.data.archive import extracted_folder
        from beit_ds.data.skips import DataError

        if not self.archive.is_file():
            raise SystemExit(f"--archive {self.archive}: not a file (expected cifar10_jpeg.tar.gz)")
        try:  # the training runs' own extraction: links, devices and escaping members refused
            root = extracted_folder(self.archive, self.cache)
        except DataError as err:
            raise SystemExit(f"--archive {self.archive}: {err}") from None
        s = self.scale
        subprocess.check_call([sys.executable, str(EXP / "make_lists.py"), str(root), str(self.out),
                               "--labelled", str(s.labelled), "--val", str(s.val), "--test", str(s.test)])

    def tokenizer(self) -> None:
        steps = self.scale.tokenizer_steps
        self.launch("tokenizer", "tokenizer", "train_tokenizer.py", "tokenizer.yaml",
                    [*self.data_args(), f"schedule.max_steps={steps}"])

    def pretrain(self) -> None:
        tok = self.out / "tokenizer" / "export" / "tokenizer.safetensors"
        for arm, (overrides, long) in PRETRAIN_ARMS.items():
            steps = self.scale.short_steps * (2 if long else 1)
            args = [*self.data_args(), f"tokenizer.path={tok}", f"schedule.steps={steps}",
                    f"schedule.warmup_steps={max(1, steps // 20)}", f"checkpoint.save_every_steps={max(1, steps // 3)}",
                    *overrides]
            self.launch("pretrain", f"pretrain_{arm}", "pretrain.py", "pretrain.yaml", args)

    def finetune_args(self, arm: str, lr: float, seed: int) -> list[str]:
        init = "" if arm == "scratch" else str(self.out / f"pretrain_{arm}" / "checkpoints")
        return [f"data.path={self.out / 'labelled.txt'}", f"data.eval_path={self.out / 'val.txt'}",
                f"finetune.init={init}", f"optim.lr={lr}", f"schedule.seed={seed}",
                f"schedule.epochs={self.scale.finetune_epochs}", f"schedule.micro_batch_size={self.scale.batch}",
                *(["optim.layer_decay=1.0"] if arm == "scratch" else [])]

    def finetune_run(self, stage: str, arm: str, lr: float, seed: int, test: bool) -> str:
        name = f"ft_{arm}_lr{fmt_lr(lr)}_s{seed}"
        self.launch(stage, name, "finetune.py", "finetune.yaml", self.finetune_args(arm, lr, seed))
        if test:
            self.test_eval(stage, name, "finetune.yaml")
        return name

    def sweep(self) -> dict[str, float]:
        """The lr with the best final val top-1, for ``scratch`` and for the pre-trained arms (``long``)."""
        choice = {}
        for arm in ("scratch", "long"):
            vals = {lr: self.val_top1(self.finetune_run("sweep", arm, lr, self.seeds[0], False))
                    for lr in self.scale.lrs}
            choice[arm] = max(vals, key=lambda lr: vals[lr])
            print(f"[sweep] {arm}: val top-1 " + ", ".join(f"lr {fmt_lr(k)}: {v:.2f}" for k, v in vals.items())
                  + f" -> lr {fmt_lr(choice[arm])}", flush=True)
        (self.out / "sweep.json").write_text(json.dumps(choice, indent=1))
        return choice

    def finetune(self) -> None:
        choice = self.sweep()
        for seed in self.seeds:
            for arm in FINETUNE_ARMS:
                self.finetune_run("finetune", arm, choice["scratch" if arm == "scratch" else "long"], seed, True)

    def probe_run(self, init: str, block: int, seed: int, test: bool) -> str:
        name = f"probe_{init}_b{block}_s{seed}"
        weights = str(self.out / "pretrain_long" / "checkpoints") if init == "long" else ""
        args = [f"data.path={self.out / 'labelled.txt'}", f"data.eval_path={self.out / 'val.txt'}",
                f"finetune.init={weights}", f"probe.layer={block}", f"schedule.seed={seed}",
                f"schedule.epochs={self.scale.probe_epochs}", f"schedule.micro_batch_size={self.scale.batch}"]
        self.launch("probe", name, "linear_probe.py", "linprobe.yaml", args)
        if test:
            self.test_eval("probe", name, "linprobe.yaml")
        return name

    def probe(self) -> None:
        blocks = range(1, self.depth + 1)
        vals = {b: self.val_top1(self.probe_run("long", b, self.seeds[0], False)) for b in blocks}
        for b in blocks:
            self.probe_run("random", b, self.seeds[0], False)
        best = max(vals, key=lambda b: vals[b])
        (self.out / "probe.json").write_text(json.dumps({"best_block": best, "val_top1": vals}, indent=1))
        print(f"[probe] best val block of long: {best} of {self.depth}", flush=True)
        for seed in self.seeds:
            for init, block in (("long", best), ("long", self.depth), ("random", best)):
                self.probe_run(init, block, seed, True)

    def table(self, docs: Path | None) -> None:
        from table import write_results  # experiments/cifar10/table.py

        write_results(self.out, self.seeds, self.depth, docs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", default=list(STAGES), help=f"any of {', '.join(STAGES)}")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("BEIT_CIFAR_OUT", "/tmp/beit_cifar")))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--tiny", action="store_true", help="a few images and steps (the CI test)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("BEIT_DS_CACHE", "/tmp/beit_ds_cache")))
    parser.add_argument("--archive", type=Path, default=ARCHIVE, help="CIFAR-10 as JPEG (.tar.gz)")
    parser.add_argument("--docs", type=Path, default=None, help="also write the PNG plots here (docs/)")
    parser.add_argument("--pretrain-ds-config", type=Path, default=None,
                        help="DeepSpeed JSON of the pre-training runs (default: the launcher's, fp32 on CPU, as"
                             " docs/RESULTS.md ran; ds_configs/zero0_bf16.json: 1.4x faster on a CPU with AMX-BF16)")
    args = parser.parse_args()
    unknown = [s for s in args.stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}: expected any of {', '.join(STAGES)}")
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    exit_on_sigterm()  # a SIGTERM (scancel, kill) stops the running launcher, which saves, first
    study = Study(args.out.resolve(), args.seeds, TINY if args.tiny else FULL, args.cache.resolve(),
                  args.archive.resolve(), args.pretrain_ds_config.resolve() if args.pretrain_ds_config else None)
    study.plan(args.stages)
    for stage in STAGES:
        if stage in args.stages:
            print(f"== {stage} {time.strftime('%H:%M:%S')}", flush=True)
            study.table(args.docs) if stage == "table" else getattr(study, stage)()
    print(f"== done {time.strftime('%H:%M:%S')}", flush=True)


if __name__ == "__main__":
    main()
