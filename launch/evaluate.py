"""Top-1 / top-5 accuracy and loss of a classifier on a labelled set, at any resolution.

    python launch/evaluate.py --config finetune_demo_cpu finetune.init=runs/finetune_demo_cpu
    python launch/evaluate.py --config finetune_base_in1k_384 finetune.init=beit_384.pth \\
        data.eval_path=/data/imagenet/val --out results/eval.json

A checkpoint (run, checkpoints/ or step_* folder) is evaluated as its stored kind says: a classifier or
probe with its own architecture on this recipe's data, a pre-training checkpoint by MIM loss and
masked-token accuracy, a tokenizer by reconstruction error. Other weights: the recipe gives the
architecture (a linear-probe recipe, one with a probe: section, gives a probe);
finetune.init any weights launch/finetune.py accepts; --out also writes the numbers as JSON.
"""

from pathlib import Path

from beit_ds.cli import recipe_parser, run_cli
from beit_ds.engine.finetune import evaluate_recipe, load_class_recipe


def main() -> None:
    parser = recipe_parser(__doc__, default_recipe="finetune_demo_cpu")
    parser.add_argument("--out", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args()
    recipe = load_class_recipe(args.config, args.overrides)
    evaluate_recipe(recipe, Path(args.out) if args.out else None)


if __name__ == "__main__":
    run_cli(main)
