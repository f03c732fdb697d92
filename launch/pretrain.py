"""BEiT masked-image-modeling pre-training (with a ``dino`` section: MIM + DINO, seed App. E).

    deepspeed launch/pretrain.py --deepspeed_config ds_configs/zero2_bf16.json --config pretrain_base_in22k [k=v ...]
    deepspeed launch/pretrain.py --config pretrain_base_in1k_dino      # multi-task MIM + DINO
    python launch/pretrain.py            # the CPU demo: tiny BEiT on the bundled photographs
"""

from pathlib import Path

from beit_ds.cli import run_cli, run_training
from beit_ds.engine.dino import dino_pretrain
from beit_ds.engine.pretrain import pretrain
from beit_ds.recipe import DinoPretrainRecipe, PretrainRecipe

ROOT = Path(__file__).resolve().parents[1]


def train(recipe: PretrainRecipe, ds_config: str, **kwargs: object) -> object:
    """The recipe's root says the task: ``PretrainRecipe.root_for`` picks MIM + DINO by its ``dino`` section."""
    run = dino_pretrain if isinstance(recipe, DinoPretrainRecipe) else pretrain
    return run(recipe, ds_config, **kwargs)  # type: ignore[arg-type]


if __name__ == "__main__":
    run_cli(lambda: run_training(__doc__, "pretrain_demo_cpu", PretrainRecipe, train, ROOT / "ds_configs"))
