"""Train the task of any recipe's ``kind`` (pretrain, dino, finetune, linear_probe, segmentation,
tokenizer, vqkd): the one launcher; ``beit-ds train`` is the same command.

    python launch/train.py --config pretrain_demo_cpu                 # one process (CPU demo)
    deepspeed --num_gpus 8 launch/train.py --deepspeed_config ds_configs/zero2_bf16.json \\
        --config pretrain_base_in22k data.path=/data/in22k/files.txt tokenizer.path=/data/dall_e/encoder.pkl

``launch/pretrain.py``, ``finetune.py``, ``linear_probe.py``, ``segment.py`` and
``train_tokenizer.py`` are aliases with a default recipe of their kind.
"""

from beit_ds.cli import run_cli, train_main

if __name__ == "__main__":
    run_cli(lambda: train_main(description=__doc__))
