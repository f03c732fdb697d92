"""Evaluate the weights a recipe names (``finetune.init``) as the recipe's kind does: a classifier
or probe by top-1 / top-5 accuracy and loss, a segmentation model by mIoU / mAcc / aAcc (mmseg's
definitions, with per-class IoU and the pairs that could not be read); ``beit-ds evaluate`` is
the same command.

    python launch/evaluate.py --config finetune_demo_cpu finetune.init=runs/finetune_demo_cpu
    python launch/evaluate.py --config finetune_base_in1k_384 finetune.init=beit_384.pth \\
        data.eval_path=/data/imagenet/val --out results/eval.json
    deepspeed launch/evaluate.py --config seg_upernet_base_ade20k_640 finetune.init=upernet_beit_base_640.pth \\
        data.path=/data/ADEChallengeData2016 inference.scales=[0.5,0.75,1.0,1.25,1.5,1.75] inference.flip=true

A checkpoint (run, checkpoints/ or step_* folder) given to a classification recipe is evaluated
as its stored kind says: a classifier or probe with its own architecture on this recipe's data,
a pre-training checkpoint by MIM loss and masked-token accuracy, a tokenizer by reconstruction
error. Other weights: the recipe gives the architecture. --out writes the numbers as JSON (and,
for segmentation, prediction overlays as a PNG beside it).
"""

from beit_ds.cli import evaluate_main, run_cli

if __name__ == "__main__":
    run_cli(lambda: evaluate_main(description=__doc__))
