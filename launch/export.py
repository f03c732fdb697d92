"""Consolidated fp32 weights from a (ZeRO-sharded) checkpoint, ready for fine-tuning:
``OUT/model.safetensors`` (beit_ds / unilm layout), ``OUT/timm/`` and ``OUT/hf/``.

    python launch/export.py runs/pretrain_base_in22k            # newest complete checkpoint
    python launch/export.py runs/x/checkpoints/step_00010000 --out exported/
"""

import argparse
from pathlib import Path

from beit_ds.cli import run_cli
from beit_ds.engine.checkpoint import resolve
from beit_ds.engine.export import export_checkpoint
from beit_ds.logger import init_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a run's output_dir or one checkpoint directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SOURCE/export)")
    args = parser.parse_args()
    init_logging(0)
    tag_dir = resolve(args.source)
    out = args.out or (args.source if tag_dir != args.source else tag_dir.parent.parent) / "export"
    for path in export_checkpoint(tag_dir, out):
        print(path)


if __name__ == "__main__":
    run_cli(main)
