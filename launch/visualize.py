"""Looking inside a model: attention maps (seed Fig. 2), MIM predictions, training curves.

    python launch/visualize.py attention --weights runs/x/export --images demo --query cls --query 4,4
    python launch/visualize.py mim --weights runs/pretrain_demo_cpu --out mim.png
    python launch/visualize.py curves runs/a runs/b --out curves.png
Weights: an export folder or anything finetune.init accepts (none: random init); the architecture,
normalisation, masking and tokenizer come from --config (a pre-training recipe) + overrides.

An alias of ``beit-ds visualize``.
"""

import sys

from beit_ds.cli import run_cli, visualize_main

if __name__ == "__main__":
    run_cli(lambda: visualize_main(sys.argv[1:]))
