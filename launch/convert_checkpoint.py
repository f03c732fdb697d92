"""Convert a ZeRO checkpoint to DeepSpeed's universal format, loadable on any number of ranks.

    python launch/convert_checkpoint.py runs/pretrain_base_in22k            # newest complete checkpoint
    python launch/convert_checkpoint.py runs/x/checkpoints/step_00010000 --workers 8

Writes ``<tag>_universal`` beside the checkpoint (or ``--out``) and prints its path; resume from it
with ``--resume <path>``. ``--resume`` converts by itself when the world size changed: this script
is for converting ahead of time, off the training nodes.
"""

import argparse
from pathlib import Path

from beit_ds.cli import run_cli
from beit_ds.engine.checkpoint import resolve, to_universal
from beit_ds.logger import init_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a run's output_dir or one checkpoint directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <checkpoint>_universal)")
    parser.add_argument("--workers", type=int, default=1, help="conversion worker processes")
    args = parser.parse_args()
    init_logging(0)
    print(to_universal(resolve(args.source), args.out, args.workers, checksums=False))  # resolve() verified it


if __name__ == "__main__":
    run_cli(main)
