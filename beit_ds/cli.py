"""Command-line arguments shared by the ``launch/`` scripts.

``--config`` names a recipe (path or shipped name), trailing ``section.key=value`` words
override it, ``--deepspeed_config`` names the DeepSpeed JSON, ``--resume`` is ``auto``
(default), ``none`` or a checkpoint directory. ``--local_rank`` is accepted because the
``deepspeed`` launcher passes it; the rank itself is read from the environment.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

from beit_ds.config import ConfigError


def recipe_parser(description: str, default_recipe: str | None) -> argparse.ArgumentParser:
    """``--config``, the launcher's ``--local_rank`` and trailing overrides: every launcher's options."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_recipe, help=f"recipe YAML path or shipped name (default: {default_recipe})")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    return parser


def job_parser(description: str, default_recipe: str | None) -> argparse.ArgumentParser:
    """The parser every training launcher uses."""
    parser = recipe_parser(description, default_recipe)
    parser.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/ by device)")
    parser.add_argument("--resume", default="auto",
                        help="auto (newest complete checkpoint), none, or a checkpoint / checkpoints / run dir")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow replacing complete checkpoints of another run in checkpoint.output_dir")
    return parser


def run_training(
    description: str, default_recipe: str, recipe_cls: type, train: Callable[..., object], configs_dir: Path
) -> None:
    """A training launcher's body: parse, load ``recipe_cls``, ``train(recipe, ds_config, resume=)``."""
    from beit_ds.config_io import load_recipe

    args = job_parser(description, default_recipe).parse_args()
    recipe: object = load_recipe(recipe_cls, args.config, args.overrides)
    train(recipe, args.deepspeed_config or default_ds_config(configs_dir), resume=args.resume, overwrite=args.overwrite)


def default_ds_config(configs_dir: Path) -> Path:
    """bf16 ZeRO-2 on a GPU that supports it, fp16 ZeRO-2 on older GPUs, fp32 ZeRO-2 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return configs_dir / "zero2_fp32_cpu.json"
    return configs_dir / ("zero2_bf16.json" if torch.cuda.is_bf16_supported() else "zero2_fp16.json")


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
