"""Jaccard of a reference patch's thresholded attention vs its CamVid region: trained weights
against the same network at random init (seeds), in one run (docs/RESULTS.md).

    python bench/attention_jaccard.py --weights runs/camvid_pt --split /tmp/camvid/camvid/val
"""

import argparse
import statistics

import torch

from beit_ds.config_io import load_recipe
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks.weights import model_to_inspect as load_model
from beit_ds.visualize.inputs import normalize, read_image
from beit_ds.visualize.objects import label_pairs, object_jaccards, patch_labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--weights", required=True)
    p.add_argument("--split", required=True, help="a CamVid split folder (images/, labels/)")
    p.add_argument("--config", default="pretrain_demo_cpu")
    p.add_argument("--size", type=int, nargs=2, default=(48, 64))
    p.add_argument("--mass", type=float, default=0.6)
    p.add_argument("--seeds", type=int, default=3)
    args = p.parse_args()
    recipe = load_recipe(PretrainRecipe, args.config)
    pairs = label_pairs(args.split)
    t, patch = recipe.data.transform, recipe.model.patch_size
    images = normalize(torch.stack([read_image(i, tuple(args.size)) for i, _ in pairs]), t.mean, t.std)
    labels = torch.stack(
        [patch_labels(lab, (args.size[0] // patch, args.size[1] // patch), 11) for _, lab in pairs]
    )
    rows = [("trained", load_model(args.weights, recipe.model))]
    for seed in range(args.seeds):
        torch.manual_seed(seed)
        rows.append((f"random init seed {seed}", load_model("", recipe.model)))
    for name, model in rows:
        s = object_jaccards(model, images, labels, args.mass)
        half = [statistics.mean(s[i::2]) for i in range(2)]
        print(
            f"{name}: mean Jaccard {statistics.mean(s):.4f} (std {statistics.stdev(s):.3f}, n={len(s)} points"
            f" in {len(pairs)} images; even/odd halves {half[0]:.4f}/{half[1]:.4f})"
        )


if __name__ == "__main__":
    main()
