"""mIoU / mAcc / aAcc of a segmentation model on a validation split, as mmseg computes them.

    python launch/evaluate_segmentation.py --config seg_camvid_demo_cpu \\
        finetune.init=runs/seg_camvid_demo_cpu data.path=data/camvid/train data.eval_path=data/camvid/test
    deepspeed launch/evaluate_segmentation.py --config seg_upernet_base_ade20k_640 \\
        finetune.init=upernet_beit_base_640.pth data.path=/data/ADEChallengeData2016 \\
        inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75] inference.flip=true --out results/ade20k.json

finetune.init: our segmentation checkpoint or export, a unilm / mmseg .pth, a Hugging Face
BeitForSemanticSegmentation folder; the recipe gives the architecture. --out writes the metrics
(with per-class IoU and "skipped": image/label pairs that could not be read, never scored) as JSON
and prediction overlays as a PNG beside it.
"""

from pathlib import Path

from beit_ds.cli import recipe_parser, run_cli
from beit_ds.config_io import load_recipe
from beit_ds.engine.segment import evaluate_recipe
from beit_ds.recipe import SegmentationRecipe


def main() -> None:
    parser = recipe_parser(__doc__, default_recipe="seg_camvid_demo_cpu")
    parser.add_argument("--out", default=None, help="write the metrics to this JSON file")
    args = parser.parse_args()
    recipe = load_recipe(SegmentationRecipe, args.config, args.overrides)
    evaluate_recipe(recipe, Path(args.out) if args.out else None)


if __name__ == "__main__":
    run_cli(main)
