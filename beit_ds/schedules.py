"""Learning-rate and weight-decay schedules as pure functions of the optimizer step
(seed §5: linear warm-up, then cosine decay; house style rule 11 — resume needs no state).
"""

from __future__ import annotations

import math


def cosine_with_warmup(step: int, total_steps: int, warmup_steps: int, peak: float, final: float) -> float:
    """Value at ``step``: linear 0 → ``peak`` over ``warmup_steps``, then cosine to ``final``.

    ``step`` counts optimizer steps from 0; past ``total_steps`` the value stays at ``final``.
    """
    if step < warmup_steps:
        return peak * step / warmup_steps
    decay_steps = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / decay_steps)
    return final + 0.5 * (peak - final) * (1.0 + math.cos(math.pi * progress))


def linear_with_warmup(step: int, total_steps: int, warmup_steps: int, peak: float, final: float,
                       warmup_ratio: float = 1e-6) -> float:
    """mmseg's ``poly`` policy with ``power=1`` and ``warmup='linear'`` (unilm's segmentation
    ``lr_config``): the rate falls linearly from ``peak`` at step 0 to ``final`` at
    ``total_steps``; during the first ``warmup_steps`` it is scaled by a factor rising linearly
    from ``warmup_ratio`` to 1 (``1 - (1 - step / warmup) · (1 - warmup_ratio)``)."""
    progress = min(1.0, step / max(1, total_steps))
    value = (peak - final) * (1.0 - progress) + final
    if step < warmup_steps:
        value *= 1.0 - (1.0 - step / warmup_steps) * (1.0 - warmup_ratio)
    return value


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Cosine from ``start`` to ``end`` over ``total_steps`` (the optional weight-decay schedule)."""
    return cosine_with_warmup(step, total_steps, 0, start, end)


def scaled_lr(base_lr: float, base_batch: int, global_batch: int) -> float:
    """The linear scaling rule: ``base_lr`` is the rate for ``base_batch`` images per step."""
    return base_lr * global_batch / base_batch
