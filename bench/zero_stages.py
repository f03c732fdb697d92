"""ZeRO stage 0 / 1 / 2 on 1 and 2 CPU ranks through the real ``deepspeed`` launcher: the
pre-training job's logged images/s per stage and world size, at the same global batch.

    python bench/zero_stages.py                       # CIFAR-10 recipe + demo dVAE, 6 steps per run
    python bench/zero_stages.py --worlds 1 --stages 0,2 --repeats 2
    python bench/zero_stages.py --precisions fp32,bf16     # also the bf16 configs (AMX CPUs)
    python bench/zero_stages.py --recipe pretrain_demo_cpu --set tokenizer.compile=true

Each run is ``deepspeed --num_gpus W launch/pretrain.py --deepspeed_config
ds_configs/zero{S}_fp32_cpu.json`` (``--precisions bf16``: ``zero{S}_bf16.json``) with ``schedule.max_steps`` steps, the micro batch divided by
W (the global batch stays the recipe's) and ``OMP_NUM_THREADS = cores // W``. Its figure is the
median ``images_per_s`` of ``metrics.jsonl`` without the first logged window (start-up, first
allocations). Runs are interleaved over ``--repeats`` rounds in rotating order, so a busy patch
of a shared machine hits every configuration alike. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from harness import emit

ROOT = Path(__file__).resolve().parents[1]
CIFAR = ROOT / "../shared/datasets/cifar10/cifar10_jpeg.tar.gz"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--recipe", default=str(ROOT / "experiments/cifar10/pretrain.yaml"))
    p.add_argument("--stages", default="0,1,2")
    p.add_argument("--precisions", default="fp32", help="comma-separated: fp32 (zero{S}_fp32_cpu.json), bf16 (zero{S}_bf16.json)")
    p.add_argument("--worlds", default="1,2")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run")
    p.add_argument("--log-every", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--set", action="append", default=[], help="recipe override key=value (repeatable)")
    p.add_argument("--timeout", type=int, default=900, help="seconds per run")
    return p.parse_args()


def recipe_sets(args: argparse.Namespace, world: int, out: Path) -> list[str]:
    """Overrides of one run: the demo dVAE, the data, short run, micro batch per rank."""
    from beit_ds.config_io import load_recipe
    from beit_ds.recipe import PretrainRecipe

    sets = ["tokenizer.path=package:demo_dvae.safetensors", f"checkpoint.output_dir={out}", "log.progress_bar=false",
            "log.tensorboard=false", f"schedule.max_steps={args.steps}", f"log.every_steps={args.log_every}",
            "checkpoint.export_at_end=false", f"checkpoint.save_every_steps={10 * args.steps}"]
    if "cifar10" in args.recipe:
        sets += [f"data.path={CIFAR.resolve()}"] if CIFAR.exists() else ["data.source=demo", "data.repeats=64"]
    recipe = load_recipe(PretrainRecipe, args.recipe, [*sets, *args.set])
    micro = recipe.schedule.micro_batch_size
    if micro % world:
        raise SystemExit(f"schedule.micro_batch_size={micro} does not split over {world} ranks")
    return [*sets, *args.set, f"schedule.micro_batch_size={micro // world}"]


CONFIGS = {"fp32": "zero{}_fp32_cpu.json", "bf16": "zero{}_bf16.json"}
Run = tuple[str, int, int]  # precision, ZeRO stage, world size


def run_once(args: argparse.Namespace, run: Run, out: Path) -> float:
    """Median logged images/s (all ranks) of one launcher run, the first window left out."""
    precision, stage, world = run
    cores = len(os.sched_getaffinity(0))
    env = {**os.environ, "OMP_NUM_THREADS": str(max(1, cores // world)), "PYTHONPATH": str(ROOT)}
    cmd = ["deepspeed", "--num_gpus", str(world), "--master_port", str(29500 + 10 * stage + world),
           "launch/pretrain.py", "--deepspeed_config", f"ds_configs/{CONFIGS[precision].format(stage)}",
           "--config", args.recipe, *recipe_sets(args, world, out)]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=args.timeout)
    if proc.returncode != 0:
        raise SystemExit(f"{precision} stage {stage}, {world} rank(s): exit {proc.returncode}\n{proc.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rates = [row["train/images_per_s"] for row in rows if "train/images_per_s" in row]
    return float(statistics.median(rates[1:] or rates))


def main() -> None:
    args = parse_args()
    unknown = [p for p in args.precisions.split(",") if p not in CONFIGS]
    if unknown:
        raise SystemExit(f"--precisions {args.precisions}: expected a comma-separated subset of {', '.join(CONFIGS)}")
    runs: list[Run] = [(p, int(s), int(w)) for p in args.precisions.split(",") for w in args.worlds.split(",")
                       for s in args.stages.split(",")]
    rates: dict[Run, list[float]] = {run: [] for run in runs}
    with tempfile.TemporaryDirectory(prefix="zero_stages_") as tmp:
        for r in range(args.repeats):
            shift = r % len(runs)
            for run in runs[shift:] + runs[:shift]:
                precision, stage, world = run
                rate = run_once(args, run, Path(tmp) / f"r{r}_{precision}_s{stage}_w{world}")
                rates[run].append(rate)
                print(f"{precision} stage {stage}, {world} rank(s): {rate:.1f} img/s", flush=True)
    med = {run: statistics.median(v) for run, v in rates.items()}
    result: dict[str, object] = {f"{p}_stage{s}_world{w}_img_s": round(v, 1) for (p, s, w), v in med.items()}
    for p, s, w in runs:
        if s != 2 and (p, 2, w) in med:
            result[f"{p}_stage{s}_vs_stage2_world{w}"] = round(med[(p, s, w)] / med[(p, 2, w)], 3)
        if p == "bf16" and ("fp32", s, w) in med:
            result[f"bf16_vs_fp32_stage{s}_world{w}"] = round(med[(p, s, w)] / med[("fp32", s, w)], 3)
    result.update(recipe=Path(args.recipe).name, steps=args.steps, repeats=args.repeats, overrides=args.set,
                  cores=len(os.sched_getaffinity(0)), python=sys.version.split()[0])
    emit(result)


if __name__ == "__main__":
    main()
