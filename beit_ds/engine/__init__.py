"""The runtime: the DeepSpeed engine, the one training loop, checkpoints (integrity, elastic
resume, preemption, the run lock) and the job that runs any ``Task`` on them. It knows no task:
``beit_ds.tasks`` composes models, data, tokenizers and pictures into tasks on top of it.

DeepSpeed is imported only inside this package.
"""
