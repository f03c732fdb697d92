"""Export any checkpoint by the kind stored in it: pre-training → ``model.safetensors`` (beit_ds /
unilm layout) + the backbone in ``timm/`` and ``hf/``; fine-tuning → the classifier (timm,
Hugging Face ``BeitForImageClassification``) and its EMA; linear probe → the probe; tokenizer →
``tokenizer.safetensors`` + its reconstruction report.

    python launch/export.py runs/pretrain_base_in22k            # newest complete checkpoint
    python launch/export.py runs/x/checkpoints/step_00010000 --out exported/

An alias of ``beit-ds export``.
"""

from beit_ds.cli import export_main, run_cli

if __name__ == "__main__":
    run_cli(export_main)
