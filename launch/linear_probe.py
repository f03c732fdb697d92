"""Linear probe of a pre-trained BEiT (seed App. D): a frozen backbone, the mean patch token of block
probe.layer (default: the middle block), one linear layer trained with AdamW and a cosine schedule.

    python launch/linear_probe.py finetune.init=runs/pretrain_demo_cpu    # CPU demo recipe
    deepspeed launch/linear_probe.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --config linprobe_base finetune.init=runs/pretrain_base_in1k data.path=/data/imagenet/train

An alias of ``launch/train.py`` / ``beit-ds train`` that expects this kind of recipe.
"""

from beit_ds.cli import run_cli, train_main
from beit_ds.recipe import LinearProbeRecipe

if __name__ == "__main__":
    run_cli(lambda: train_main(default_recipe="linprobe_demo_cpu", expected=LinearProbeRecipe, description=__doc__))
