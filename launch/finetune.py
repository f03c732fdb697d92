"""Image classification fine-tuning of a pre-trained BEiT (seed §3.1, App. F and H).

    python launch/finetune.py                       # CPU demo: tiny BEiT on the bundled photographs
    deepspeed launch/finetune.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --config finetune_base_in1k finetune.init=runs/pretrain_base_in1k data.path=/data/imagenet/train

finetune.init: an export (model.safetensors), a DeepSpeed checkpoint folder (step_*, checkpoints/ or
the run folder), timm / unilm / Hugging Face BEiT weights; '' trains from scratch.
"""

from pathlib import Path

from beit_ds.cli import run_cli, run_training
from beit_ds.engine.finetune import finetune
from beit_ds.recipe import FinetuneRecipe

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    run_cli(lambda: run_training(__doc__, "finetune_demo_cpu", FinetuneRecipe, finetune, ROOT / "ds_configs"))
