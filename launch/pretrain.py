"""BEiT masked-image-modeling pre-training (with a ``dino`` section: MIM + DINO, seed App. E).

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --config pretrain_base_in22k [k=v ...]
    deepspeed launch/pretrain.py --config pretrain_base_in1k_dino      # multi-task MIM + DINO
    python launch/pretrain.py            # the CPU demo: tiny BEiT on the bundled photographs

An alias of ``launch/train.py`` / ``beit-ds train`` that expects this kind of recipe.
"""

from beit_ds.cli import run_cli, train_main
from beit_ds.recipe import PretrainRecipe

if __name__ == "__main__":
    run_cli(lambda: train_main(default_recipe="pretrain_demo_cpu", expected=PretrainRecipe, description=__doc__))
