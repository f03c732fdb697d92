"""Image classification fine-tuning of a pre-trained BEiT (seed §3.1, App. F and H).

    python launch/finetune.py                       # CPU demo: tiny BEiT on the bundled photographs
    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --config finetune_base_in1k finetune.init=runs/pretrain_base_in1k data.path=/data/imagenet/train

finetune.init: an export (model.safetensors), a DeepSpeed checkpoint folder (step_*, checkpoints/ or
the run folder), timm / unilm / Hugging Face BEiT weights; '' trains from scratch.

An alias of ``launch/train.py`` / ``beit-ds train`` that expects this kind of recipe.
"""

from beit_ds.cli import run_cli, train_main
from beit_ds.recipe import FinetuneRecipe

if __name__ == "__main__":
    run_cli(lambda: train_main(default_recipe="finetune_demo_cpu", expected=FinetuneRecipe, description=__doc__))
