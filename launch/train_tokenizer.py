"""Train our own visual tokenizer (the dVAE of seed App. C).

    python launch/train_tokenizer.py                                   # CPU demo on the bundled photos
    deepspeed launch/train_tokenizer.py --deepspeed_config ds_configs/zero2_bf16.json --config my_tokenizer.yaml
"""

from pathlib import Path

from beit_ds.cli import run_cli, run_training
from beit_ds.engine.tokenizer_train import train_tokenizer
from beit_ds.recipe import TokenizerRecipe

ROOT = Path(__file__).resolve().parents[1]

if __name__ == "__main__":
    run_cli(lambda: run_training(__doc__, "tokenizer_demo_cpu", TokenizerRecipe, train_tokenizer, ROOT / "ds_configs"))
