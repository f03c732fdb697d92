"""BEiT v1 vs BEiT v2 pre-training on the CPU demo at the same budget (docs/RESULTS.md):

    python experiments/v2_demo/compare.py [--out /tmp/beit_v2_demo] [--seeds 0 1 2]
        [--pretrain-epochs 20] [stage ...]

Three arms on the photographs bundled with scikit-image, at the same budget (``--pretrain-epochs``
of 14 steps of 32; the recipes' own 20 by default), once per seed (``schedule.seed``: weights,
data order, crops, masks), so the spread includes pre-training noise:

  v1        ``pretrain_demo_cpu``: the demo dVAE's codes (512), no aggregation, mean = std = 0.5
  v2        ``pretrain_beitv2_demo_cpu``: the demo VQ-KD's codes (512), patch aggregation, the
            tokenizer on the model's own view, ImageNet mean / std
  v2dvae    v2 with v1's tokenizer (the demo dVAE): what patch aggregation (and the normalisation)
            does alone Stages (default: all; each run is skipped once done, a killed run resumes):

  pretrain  both arms x every seed
  mim       masked-token accuracy (and v2's aggregation-head accuracy) of each final checkpoint
            on 32 fixed batches of its own data (``PretrainTask.evaluate_checkpoint``)
  lists     CIFAR-10 (../shared/datasets, 32² photographs): 200 labelled images per class and
            500 test images per class (``experiments/cifar10/make_lists.py``)
  probe     linear probes of each frozen backbone on the 2,000 labelled images, 5 epochs, test
            top-1 after the last: block 2 of 4, mean patch token (the demo probe) and block 4,
            [CLS] + mean (``probe.pool: cls_mean``: v2's patch aggregation trains the [CLS])
  baseline  the same probes and fine-tuning of randomly initialised backbones (``finetune.init=''``,
            v1's normalisation; fine-tuning with the pre-trained arms' recipe, not tuned for scratch)
  finetune  each backbone fine-tuned on the 2,000 labelled images, 8 epochs, crop + flip only,
            layer decay 0.75, lr 1e-3 (the CIFAR-10 study's recipe), test top-1 after the last
  table     results.md: mean ± sample std over the seeds, v2 - v1, Welch's two-sided t-test

Probes and fine-tuning normalise as their backbone was pre-trained (v2: ImageNet mean / std).
No hyper-parameter was tuned on the test images.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from beit_ds.processes import exit_on_sigterm, run_child

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "experiments" / "cifar10"))
from table import cell, compare  # noqa: E402  (the CIFAR-10 study's statistics)

ARCHIVE = ROOT.parent / "shared" / "datasets" / "cifar10" / "cifar10_jpeg.tar.gz"
STAGES = ("pretrain", "mim", "lists", "probe", "baseline", "finetune", "table")
DVAE = ["tokenizer.name=dvae", "tokenizer.path=package:demo_dvae.safetensors"]
ARMS = {"v1": ("pretrain_demo_cpu", []), "v2": ("pretrain_beitv2_demo_cpu", []),
        "v2dvae": ("pretrain_beitv2_demo_cpu", DVAE)}
IMAGENET = ["data.transform.mean=[0.485,0.456,0.406]", "data.transform.std=[0.229,0.224,0.225]"]
NORM = {"v1": ["data.transform.mean=[0.5,0.5,0.5]", "data.transform.std=[0.5,0.5,0.5]"], "v2": IMAGENET, "v2dvae": IMAGENET}
PAIRS = (("v2", "v1"), ("v2dvae", "v1"), ("v2", "v2dvae"))  # (a, b): is a > b?
PROBES = {"mid_mean": ["probe.layer=2", "probe.pool=mean"], "last_cls_mean": ["probe.layer=4", "probe.pool=cls_mean"]}
QUIET = ["log.progress_bar=false", "log.tensorboard=false", "log.every_steps=20"]
CLASSIFY = ["model.num_classes=10", "data.source=filelist", "data.num_workers=1", "data.transform.crop_pct=1.0",
            "data.transform.scale=[0.35,1.0]", "data.transform.color_jitter=0.0", "data.repeats=1",
            "checkpoint.save_every_steps=100000", "checkpoint.save_every_epochs=100"]
FINETUNE = ["augment.rand_augment_ops=0", "augment.random_erasing=0.0", "augment.mixup=0.0", "augment.cutmix=0.0",
            "finetune.ema_decay=0.0", "finetune.label_smoothing=0.1", "optim.lr=1e-3", "optim.layer_decay=0.75",
            "schedule.epochs=8", "schedule.warmup_epochs=1", "schedule.micro_batch_size=64"]


class Comparison:
    """Runs the stages into ``out``: one folder per run, ``DONE.json`` once it has finished."""

    def __init__(self, out: Path, seeds: list[int], epochs: int) -> None:
        self.out, self.seeds, self.epochs = out, seeds, epochs

    def launch(self, name: str, config: str, overrides: list[str]) -> None:
        """``python launch/train.py --config <config> ...`` into ``out/<name>`` unless already done."""
        if (self.out / name / "DONE.json").exists():
            print(f"{name}: done, skipped", flush=True)
            return
        cmd = [sys.executable, str(ROOT / "launch" / "train.py"), "--config", config, *QUIET, *overrides,
               f"checkpoint.output_dir={self.out / name}"]
        print(f"{name}: starting", flush=True)
        t0 = time.time()
        self.out.mkdir(parents=True, exist_ok=True)
        with open(self.out / f"{name}.log", "a") as log:
            rc = run_child(cmd, log, ROOT)
        if rc != 0:
            raise SystemExit(f"{name}: exit {rc}; see {self.out / name}.log (rerun to resume)")
        wall = time.time() - t0
        (self.out / name / "DONE.json").write_text(json.dumps({"wall_s": wall, "command": " ".join(cmd[1:])}))
        print(f"{name}: finished in {wall / 60:.1f} min", flush=True)

    def pretrain(self) -> None:
        for seed in self.seeds:
            for arm, (recipe, extra) in ARMS.items():
                self.launch(f"pt_{arm}_s{seed}", recipe, [*extra, f"schedule.seed={seed}", f"schedule.epochs={self.epochs}"])

    def mim(self) -> None:
        from beit_ds.engine.checkpoint import resolve
        from beit_ds.engine.saved import read_saved
        from beit_ds.tasks.pretrain import PretrainTask

        for seed in self.seeds:
            for arm in ARMS:
                path = self.out / f"pt_{arm}_s{seed}" / "mim.json"
                if not path.exists():
                    saved = read_saved(resolve(path.parent / "checkpoints"))
                    path.write_text(json.dumps(PretrainTask.evaluate_checkpoint(saved, batches=32)))
                print(f"mim {arm} seed {seed}: {json.loads(path.read_text())}", flush=True)

    def lists(self) -> None:
        if (self.out / "test.txt").exists():
            return
        from beit_ds.data.archive import extracted_folder

        root = extracted_folder(ARCHIVE, self.out / "cache")
        run_args = [str(root), str(self.out), "--labelled", "200", "--val", "0", "--test", "500"]
        with open(self.out / "lists.log", "a") as log:
            rc = run_child([sys.executable, str(ROOT / "experiments/cifar10/make_lists.py"), *run_args], log, ROOT)
        if rc != 0:
            raise SystemExit(f"lists: exit {rc}; see {self.out}/lists.log")

    def data(self, arm: str) -> list[str]:
        return [*CLASSIFY, *NORM[arm], f"data.path={self.out / 'labelled.txt'}", f"data.eval_path={self.out / 'test.txt'}"]

    def probe(self, arms: tuple[str, ...] = tuple(ARMS)) -> None:
        for seed in self.seeds:
            for arm in arms:
                run = self.out / f"pt_{arm}_s{seed}" / "checkpoints"
                init = f"finetune.init={run if arm in ARMS else ''}"
                for probe, args in PROBES.items():
                    extra = ["optim.lr=4e-3", "schedule.epochs=5", "schedule.micro_batch_size=64", f"schedule.seed={seed}"]
                    data = self.data(arm if arm in ARMS else "v1")
                    self.launch(f"probe_{probe}_{arm}_s{seed}", "linprobe_demo_cpu", [*data, *args, init, *extra])

    def baseline(self) -> None:
        self.probe(("random",))
        for seed in self.seeds:
            self.launch(f"ft_random_s{seed}", "finetune_demo_cpu", [*self.data("v1"), *FINETUNE, "finetune.init=", f"schedule.seed={seed}"])

    def finetune(self) -> None:
        for seed in self.seeds:
            for arm in ARMS:
                init = f"finetune.init={self.out / f'pt_{arm}_s{seed}' / 'checkpoints'}"
                self.launch(f"ft_{arm}_s{seed}", "finetune_demo_cpu", [*self.data(arm), *FINETUNE, init, f"schedule.seed={seed}"])

    def last_top1(self, name: str) -> float:
        rows = [json.loads(line) for line in (self.out / name / "metrics.jsonl").read_text().splitlines() if line.strip()]
        return float([r["val/top1"] for r in rows if "val/top1" in r][-1])

    def measures(self) -> dict[str, dict[str, list[float]]]:
        """``{measure: {arm: one value per seed}}`` for the runs that have finished for every seed."""
        out: dict[str, dict[str, list[float]]] = {}
        for arm in ARMS:
            mim = [json.loads((self.out / f"pt_{arm}_s{s}" / "mim.json").read_text()) for s in self.seeds]
            out.setdefault("masked-token accuracy %, last layer", {})[arm] = [100 * m["mim_accuracy"] for m in mim]
            out.setdefault("MIM loss, last layer", {})[arm] = [m["mim_loss"] for m in mim]
            if arm != "v1":
                out.setdefault("masked-token accuracy %, aggregation head", {})[arm] = [100 * m["agg_accuracy"] for m in mim]
            for kind in (*(f"probe_{p}" for p in PROBES), "ft"):
                names = [f"{kind}_{arm}_s{s}" for s in self.seeds]
                if all((self.out / n / "DONE.json").exists() for n in names):
                    out.setdefault(f"{kind} test top-1 %", {})[arm] = [self.last_top1(n) for n in names]
        return out

    def table(self) -> str:
        measures = self.measures()
        lines = ["| measure | " + " | ".join(ARMS) + " |", "|:--|" + "--:|" * len(ARMS)]
        for measure, arms in measures.items():
            lines.append(f"| {measure} | " + " | ".join(cell(arms[a]) if a in arms else "" for a in ARMS) + " |")
        lines += ["", "| measure | comparison | difference | Welch p | verdict |", "|:--|:--|--:|--:|:--|"]
        for measure, arms in measures.items():
            for a, b in PAIRS:
                if a in arms and b in arms and "loss" not in measure:
                    diff, p, verdict = compare(arms[a], arms[b])
                    lines.append(f"| {measure} | {a} > {b} | {diff:+.2f} | {p:.3f} | {verdict} |")
        for kind in (*(f"probe_{p}" for p in PROBES), "ft"):
            names = [f"{kind}_random_s{s}" for s in self.seeds]
            if all((self.out / n / "DONE.json").exists() for n in names):
                lines.append(f"\nrandom weights, {kind}: {cell([self.last_top1(n) for n in names])} %.")
        lines.append("\nPer seed " + str(self.seeds) + ": " + json.dumps(measures))
        text = "\n".join(lines) + "\n\n" + self.wall() + "\n"
        (self.out / "results.md").write_text(text)
        return text

    def wall(self) -> str:
        walls: dict[str, float] = {}
        for done in sorted(self.out.glob("*/DONE.json")):
            stage = done.parent.name.split("_")[0]
            walls[stage] = walls.get(stage, 0.0) + json.loads(done.read_text())["wall_s"] / 60
        return "Wall minutes per stage: " + ", ".join(f"{k} {v:.1f}" for k, v in walls.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("stages", nargs="*", help=f"any of {', '.join(STAGES)} (default: all)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/beit_v2_demo"))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-epochs", type=int, default=20)
    args = parser.parse_args()
    if set(args.stages) - set(STAGES):
        parser.error(f"stages {args.stages}: expected some of {', '.join(STAGES)}")
    exit_on_sigterm()
    study = Comparison(args.out.resolve(), args.seeds, args.pretrain_epochs)
    for stage in STAGES:
        if stage in (args.stages or STAGES):
            print(f"== {stage}", flush=True)
            result = getattr(study, stage)()
            if isinstance(result, str):
                print(result, flush=True)


if __name__ == "__main__":
    main()
