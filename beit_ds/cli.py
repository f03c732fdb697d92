"""``beit-ds``: the one command for every kind of run.

    beit-ds train --config pretrain_demo_cpu [--deepspeed_config J] [--resume auto|none|PATH] [k=v ...]
    beit-ds export RUN_OR_CHECKPOINT [--out DIR]
    beit-ds evaluate --config R finetune.init=W [--out metrics.json]
    beit-ds visualize attention|mim|curves ...
    beit-ds convert RUN_OR_CHECKPOINT [--out DIR] [--workers N]
    beit-ds recipes                      # the shipped recipes, by kind

``train`` runs the task of the recipe's ``kind`` (``deepspeed -m beit_ds.cli train ...`` or
``deepspeed launch/train.py ...`` on several ranks); the ``launch/`` scripts are thin aliases of
these commands. A configuration or input error ends with one line and exit status 2; a run that
ends on non-finite losses with 1; a preemption (checkpoint saved) with ``preemption.EXIT_CODE``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe, recipe_kinds, recipe_parser
from beit_ds.recipe import TrainingRecipe

DS_CONFIGS = Path(__file__).resolve().parent.parent / "ds_configs"
COMMANDS = ("train", "export", "evaluate", "visualize", "convert", "recipes")


def recipes_by_kind() -> str:
    """The shipped recipes, one line per kind (``--help``)."""
    return "\n".join(f"  {kind:13s} {', '.join(names)}" for kind, names in recipe_kinds().items())


def default_ds_config() -> Path:
    """bf16 ZeRO-2 on a GPU that supports it, fp16 ZeRO-2 on older GPUs, fp32 ZeRO-2 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return DS_CONFIGS / "zero2_fp32_cpu.json"
    return DS_CONFIGS / ("zero2_bf16.json" if torch.cuda.is_bf16_supported() else "zero2_fp16.json")


def train_main(argv: Sequence[str] | None = None, default_recipe: str | None = None,
               expected: type[TrainingRecipe] | None = None, description: str = "") -> None:
    """``beit-ds train``: load the recipe (its ``kind`` picks the task; ``expected``: the root an
    alias such as ``launch/pretrain.py`` trains) and train it."""
    from beit_ds import tasks

    parser = recipe_parser(description or "train the task of a recipe's kind", default_recipe)
    parser.epilog = "shipped recipes:\n" + recipes_by_kind()
    parser.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/ by device)")
    parser.add_argument("--resume", default="auto",
                        help="auto (newest complete checkpoint), none, or a checkpoint / checkpoints / run dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing complete checkpoints of another run in checkpoint.output_dir")
    args = parser.parse_args(argv)
    if args.config is None:
        raise ConfigError("--config: expected a recipe, a YAML path or a shipped name (beit-ds recipes lists them)")
    recipe = load_recipe(expected, args.config, args.overrides)
    tasks.train(recipe, args.deepspeed_config or default_ds_config(), resume=args.resume, overwrite=args.overwrite)


def export_main(argv: Sequence[str] | None = None) -> None:
    """``beit-ds export``: a checkpoint exported by the kind stored in it."""
    from beit_ds import tasks
    from beit_ds.logger import init_logging

    parser = argparse.ArgumentParser(description="export a checkpoint by the kind stored in it")
    parser.add_argument("source", type=Path, help="a run's output_dir, its checkpoints/ or one checkpoint directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/export)")
    args = parser.parse_args(argv)
    init_logging(0)
    for path in tasks.export(args.source, args.out):
        print(path)


def evaluate_main(argv: Sequence[str] | None = None, default_recipe: str | None = "finetune_demo_cpu",
                  description: str = "") -> None:
    """``beit-ds evaluate``: the weights a recipe names, evaluated as its kind's task does."""
    from beit_ds import tasks

    parser = recipe_parser(description or "evaluate the weights a recipe names (finetune.init)", default_recipe)
    parser.add_argument("--out", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args(argv)
    recipe: TrainingRecipe = load_recipe(None, args.config, args.overrides)
    tasks.evaluate(recipe, Path(args.out) if args.out else None)


def convert_main(argv: Sequence[str] | None = None) -> None:
    """``beit-ds convert``: a ZeRO checkpoint in DeepSpeed's universal form, for any world size."""
    from beit_ds.engine.checkpoint import resolve, to_universal
    from beit_ds.logger import init_logging

    parser = argparse.ArgumentParser(description="convert a ZeRO checkpoint to DeepSpeed's universal format")
    parser.add_argument("source", type=Path, help="a run's output_dir or one checkpoint directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint>_universal)")
    parser.add_argument("--workers", type=int, default=1, help="conversion worker processes")
    args = parser.parse_args(argv)
    init_logging(0)
    print(to_universal(resolve(args.source), args.out, args.workers, checksums=False))  # resolve() verified it


def visualize_main(argv: Sequence[str] | None = None) -> None:
    """``beit-ds visualize MODE``: attention maps, MIM predictions or training curves as a PNG."""
    from beit_ds.visualize.figures import MODES, Look, attention_png, mim_png, parse

    argv = list(sys.argv[2:] if argv is None else argv)
    mode = argv[0] if argv else ""
    if mode not in MODES:
        raise SystemExit(f"usage: beit-ds visualize {{{','.join(MODES)}}} [options]  (-h after the mode for help)")
    args = parse(mode, argv[1:])
    if mode == "curves":
        from beit_ds.visualize.curves import plot_runs

        print(plot_runs(args.runs, args.out, args.label))
        return
    from beit_ds.recipe import PretrainRecipe
    from beit_ds.tasks.weights import model_to_inspect

    recipe = load_recipe(PretrainRecipe, args.config, args.overrides)
    size = (int(args.size[0]), int(args.size[1])) if args.size else None
    look = Look(model_to_inspect, args.weights, args.images, size, args.limit, args.out, args.scale, args.seed)
    if mode == "attention":
        print(attention_png(recipe, look, args.query or ["cls"], args.block, args.mass))
    else:
        path, accuracy = mim_png(recipe, look, args.seed)
        print(path, "masked-token accuracy:", " ".join(f"{a:.3f}" for a in accuracy))


def recipes_main(argv: Sequence[str] | None = None) -> None:
    print(recipes_by_kind())


MAINS: dict[str, Callable[[Sequence[str] | None], None]] = {
    "train": train_main, "export": export_main, "evaluate": evaluate_main, "visualize": visualize_main,
    "convert": convert_main, "recipes": recipes_main,
}


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main``; a configuration or input error ends the process with its one line, exit 2;
    a preemption (checkpoint saved) with ``preemption.EXIT_CODE``, which job scripts requeue on."""
    from beit_ds.data.skips import DataError
    from beit_ds.engine.checkpoint import CheckpointError
    from beit_ds.engine.loop import NonFiniteLossError
    from beit_ds.engine.preemption import EXIT_CODE, Preempted
    from beit_ds.engine.safe_load import UnsafeFileError

    try:
        main()
    except (ConfigError, DataError, CheckpointError, UnsafeFileError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
    except NonFiniteLossError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except Preempted as stop:
        print(str(stop), file=sys.stderr)
        raise SystemExit(EXIT_CODE) from None
    from beit_ds.engine.runtime import shutdown_distributed

    shutdown_distributed()  # ranks leave together, after rank 0's export


def main(argv: Sequence[str] | None = None) -> None:
    """The ``beit-ds`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in MAINS:
        print(__doc__.split("\n\n")[0] + "\n\n" + __doc__.split("\n\n")[1] + "\n\nshipped recipes:\n" + recipes_by_kind())
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    run_cli(lambda: MAINS[command](rest))


if __name__ == "__main__":
    main()
