"""Semantic segmentation fine-tuning of a BEiT backbone: UperNet or SETR-PUP (seed §3.2, App. A, B, I).

    python launch/segment.py --config seg_camvid_demo_cpu data.path=data/camvid/train \\
        data.eval_path=data/camvid/val finetune.init=runs/pretrain_camvid_demo_cpu
    deepspeed launch/segment.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --config seg_upernet_base_ade20k_640 data.path=/data/ADEChallengeData2016 finetune.init=beit_base_22k.pth

finetune.init: a whole segmentation model (ours, unilm / mmseg .pth, Hugging Face
BeitForSemanticSegmentation) or any backbone launch/finetune.py accepts; '' trains from scratch.

An alias of ``launch/train.py`` / ``beit-ds train`` that expects this kind of recipe.
"""

from beit_ds.cli import run_cli, train_main
from beit_ds.recipe import SegmentationRecipe

if __name__ == "__main__":
    run_cli(lambda: train_main(default_recipe="seg_camvid_demo_cpu", expected=SegmentationRecipe, description=__doc__))
