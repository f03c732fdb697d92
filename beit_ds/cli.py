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


def job_parser(description: str, default_recipe: str | None) -> argparse.ArgumentParser:
    """The parser every training launcher uses."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--config", default=default_recipe, help=f"recipe YAML path or shipped name (default: {default_recipe})")
    parser.add_argument("--deepspeed_config", default=None, help="DeepSpeed JSON (default: ds_configs/ by device)")
    parser.add_argument("--resume", default="auto", help="auto (newest complete checkpoint), none, or a checkpoint dir")
    parser.add_argument("--local_rank", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="recipe overrides")
    return parser


def default_ds_config(configs_dir: Path) -> Path:
    """bf16 ZeRO-2 on a GPU that supports it, fp16 ZeRO-2 on older GPUs, fp32 ZeRO-2 on CPU."""
    import torch

    if not torch.cuda.is_available():
        return configs_dir / "zero2_fp32_cpu.json"
    return configs_dir / ("zero2_bf16.json" if torch.cuda.is_bf16_supported() else "zero2_fp16.json")


def run_cli(main: Callable[[], object]) -> None:
    """Run ``main``; a configuration or input error ends the process with its one line, exit 2."""
    from beit_ds.data.skips import DataError
    from beit_ds.engine.checkpoint import CheckpointError

    try:
        main()
    except (ConfigError, DataError, CheckpointError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
