"""Convert a ZeRO checkpoint to DeepSpeed's universal format, loadable on any number of ranks.

    python launch/convert_checkpoint.py runs/pretrain_base_in22k            # newest complete checkpoint
    python launch/convert_checkpoint.py runs/x/checkpoints/step_00010000 --workers 8

Writes ``<tag>_universal`` beside the checkpoint (or ``--out``) and prints its path; resume from it
with ``--resume <path>``. ``--resume`` converts by itself when the world size changed: this script
is for converting ahead of time, off the training nodes.

An alias of ``beit-ds convert``.
"""

from beit_ds.cli import convert_main, run_cli

if __name__ == "__main__":
    run_cli(convert_main)
