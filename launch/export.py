"""Export any checkpoint by the kind stored in it: pre-training → ``model.safetensors`` (beit_ds /
unilm layout) + the backbone in ``timm/`` and ``hf/``; fine-tuning → the classifier (timm,
Hugging Face ``BeitForImageClassification``) and its EMA; linear probe → the probe; tokenizer →
``tokenizer.safetensors`` + its reconstruction report.

    python launch/export.py runs/pretrain_base_in22k            # newest complete checkpoint
    python launch/export.py runs/x/checkpoints/step_00010000 --out exported/
"""

import argparse
from pathlib import Path

from beit_ds.cli import run_cli
from beit_ds.engine.checkpoint import resolve
from beit_ds.engine.export import export_any
from beit_ds.logger import init_logging


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("source", type=Path, help="a run's output_dir, its checkpoints/ or one checkpoint directory")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: <run>/export)")
    args = parser.parse_args()
    init_logging(0)
    tag_dir = resolve(args.source)
    out = args.out or tag_dir.parent.parent / "export"
    for path in export_any(tag_dir, out):
        print(path)


if __name__ == "__main__":
    run_cli(main)
