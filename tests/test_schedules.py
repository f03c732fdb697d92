"""Pure step -> value schedules (seed §5: 10 warm-up epochs then cosine)."""

from __future__ import annotations

import math

import pytest

from beit_ds.schedules import cosine, cosine_with_warmup, scaled_lr


def test_warmup_then_cosine():
    f = lambda s: cosine_with_warmup(s, total_steps=110, warmup_steps=10, peak=1.0, final=0.1)  # noqa: E731
    assert f(0) == 0.0 and f(5) == pytest.approx(0.5) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 0.5)))
    assert f(110) == pytest.approx(0.1) and f(500) == pytest.approx(0.1)
    values = [f(s) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_linear_scaling_rule_and_wd_schedule():
    assert scaled_lr(1.5e-3, 2048, 1024) == pytest.approx(7.5e-4)
    assert cosine(0, 100, 0.04, 0.4) == pytest.approx(0.04) and cosine(100, 100, 0.04, 0.4) == pytest.approx(0.4)


def test_linear_with_warmup_is_mmseg_poly_with_linear_warmup() -> None:
    from beit_ds.schedules import linear_with_warmup

    # unilm's ADE20K lr_config: poly, power 1, min 0, 1500 linear warm-up iterations from 1e-6 x lr
    peak, total, warm = 1e-3, 160_000, 1500
    assert linear_with_warmup(0, total, warm, peak, 0.0) == pytest.approx(1e-9)
    regular = peak * (1 - 750 / total)  # the poly rate at 750, scaled by 1 - 0.5 (1 - 1e-6)
    assert linear_with_warmup(750, total, warm, peak, 0.0) == pytest.approx(regular * (1 - 0.5 * (1 - 1e-6)))
    assert linear_with_warmup(1500, total, warm, peak, 0.0) == pytest.approx(peak * (1 - 1500 / total))
    assert linear_with_warmup(80_000, total, warm, peak, 0.0) == pytest.approx(5e-4)
    assert linear_with_warmup(total, total, warm, peak, 0.0) == 0.0
    assert linear_with_warmup(total + 10, total, warm, peak, 0.0) == 0.0
