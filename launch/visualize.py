"""Looking inside a model: attention maps (seed Fig. 2), MIM predictions, training curves.

    python launch/visualize.py attention --weights runs/x/export --images demo --query cls --query 4,4
    python launch/visualize.py mim --weights runs/pretrain_demo_cpu --out mim.png
    python launch/visualize.py curves runs/a runs/b --out curves.png
Weights: an export folder or anything finetune.init accepts (none: random init); the architecture,
normalisation, masking and tokenizer come from --config (a pre-training recipe) + overrides.
"""

import sys

from beit_ds.cli import run_cli
from beit_ds.visualize.figures import MODES, parse


def main() -> None:
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode not in MODES:
        raise SystemExit(f"usage: visualize.py {{{','.join(MODES)}}} [options]  (-h after the mode for help)")
    args = parse(mode, sys.argv[2:])
    if mode == "curves":
        from beit_ds.visualize.curves import plot_runs

        print(plot_runs(args.runs, args.out, args.label))
        return
    from beit_ds.config_io import load_recipe
    from beit_ds.recipe import PretrainRecipe
    from beit_ds.visualize.figures import Look, attention_png, mim_png

    recipe = load_recipe(PretrainRecipe, args.config, args.overrides)
    look = Look(
        args.weights,
        args.images,
        tuple(args.size) if args.size else None,
        args.limit,
        args.out,
        args.scale,
        args.seed,
    )
    if mode == "attention":
        print(attention_png(recipe, look, args.query or ["cls"], args.block, args.mass))
    else:
        path, accuracy = mim_png(recipe, look, args.seed)
        print(path, "masked-token accuracy:", " ".join(f"{a:.3f}" for a in accuracy))


if __name__ == "__main__":
    run_cli(main)
