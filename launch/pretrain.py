"""BEiT masked-image-modeling pre-training.

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --config pretrain_base_in22k [k=v ...]
    python launch/pretrain.py            # the CPU demo: tiny BEiT on the bundled photographs
"""

from pathlib import Path

from beit_ds.cli import run_cli, run_training
from beit_ds.engine.pretrain import pretrain
from beit_ds.recipe import PretrainRecipe

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    run_cli(lambda: run_training(__doc__, "pretrain_demo_cpu", PretrainRecipe, pretrain, ROOT / "ds_configs"))
