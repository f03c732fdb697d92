"""Train our own visual tokenizer (the dVAE of seed App. C).

    python launch/train_tokenizer.py                                   # CPU demo on the bundled photos
    deepspeed launch/train_tokenizer.py --deepspeed_config ds_configs/zero2_bf16.json --config my_tokenizer.yaml

An alias of ``launch/train.py`` / ``beit-ds train`` that expects this kind of recipe.
"""

from beit_ds.cli import run_cli, train_main
from beit_ds.recipe import TokenizerRecipe

if __name__ == "__main__":
    run_cli(lambda: train_main(default_recipe="tokenizer_demo_cpu", expected=TokenizerRecipe, description=__doc__))
