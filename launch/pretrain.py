"""BEiT masked-image-modeling pre-training.

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --config pretrain_base_in22k [k=v ...]
    python launch/pretrain.py            # the CPU demo: tiny BEiT on the bundled photographs
"""

from pathlib import Path

from beit_ds.cli import default_ds_config, job_parser, run_cli
from beit_ds.config_io import load_recipe
from beit_ds.engine.pretrain import pretrain
from beit_ds.recipe import PretrainRecipe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    args = job_parser(__doc__, default_recipe="pretrain_demo_cpu").parse_args()
    recipe = load_recipe(PretrainRecipe, args.config, args.overrides)
    pretrain(recipe, args.deepspeed_config or default_ds_config(ROOT / "ds_configs"), resume=args.resume)


if __name__ == "__main__":
    run_cli(main)
