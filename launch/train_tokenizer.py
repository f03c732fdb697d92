"""Train our own visual tokenizer (the dVAE of seed App. C).

    python launch/train_tokenizer.py                                   # CPU demo on the bundled photos
    deepspeed launch/train_tokenizer.py --deepspeed_config ds_configs/zero2_bf16.json --config tokenizer_in1k
"""

from pathlib import Path

from beit_ds.cli import default_ds_config, job_parser, run_cli
from beit_ds.config_io import load_recipe
from beit_ds.engine.tokenizer_train import train_tokenizer
from beit_ds.recipe import TokenizerRecipe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    args = job_parser(__doc__, default_recipe="tokenizer_demo_cpu").parse_args()
    recipe = load_recipe(TokenizerRecipe, args.config, args.overrides)
    train_tokenizer(recipe, args.deepspeed_config or default_ds_config(ROOT / "ds_configs"), resume=args.resume)


if __name__ == "__main__":
    run_cli(main)
