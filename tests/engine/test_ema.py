"""WeightEMA: the average's arithmetic, swapping it in for evaluation, and its state for resume."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from beit_ds.engine.ema import WeightEMA


def test_update_is_the_exponential_average_and_applied_to_restores():
    model = nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.fill_(1.0)
        model.bias.fill_(0.0)
    ema = WeightEMA(model, decay=0.9)
    for value in (2.0, 4.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
    # 0.9·(0.9·1 + 0.1·2) + 0.1·4 = 1.39
    assert ema.shadow["weight"].flatten().tolist() == pytest.approx([1.39, 1.39])
    with ema.applied_to(model):
        assert model.weight.flatten().tolist() == pytest.approx([1.39, 1.39])
    assert model.weight.tolist() == [[4.0, 4.0]]
    other = WeightEMA(nn.Linear(2, 1), decay=0.9)
    other.load_state_dict(ema.state_dict())
    assert torch.equal(other.shadow["weight"], ema.shadow["weight"])
    with pytest.raises(KeyError, match="EMA state lacks 1 weights, e.g. bias"):
        other.load_state_dict({"weight": torch.zeros(1, 2)})


def test_half_precision_runs_average_the_fp32_master_weights():
    """bf16 has 8 mantissa bits: 1 + 1e-3 rounds to 1.0. With decay 0.9 the fp32 masters give
    0.9·1 + 0.1·1.001 = 1.0001 after one step; averaging the bf16 module weights would give 1.0."""
    model = nn.Linear(2, 1).to(torch.bfloat16)
    masters = {id(p): torch.ones_like(p, dtype=torch.float32) for p in model.parameters()}
    ema = WeightEMA(model, decay=0.9, master=lambda p: masters[id(p)])
    with torch.no_grad():
        for p in model.parameters():
            masters[id(p)].add_(1e-3)  # the optimizer's fp32 step
            p.copy_(masters[id(p)])  # its bf16 copy: still 1.0
    assert model.weight.float().tolist() == [[1.0, 1.0]]
    ema.update(model)
    assert ema.shadow["weight"].dtype == torch.float32
    assert ema.shadow["weight"].flatten().tolist() == pytest.approx([1.0001, 1.0001], abs=1e-7)
    module_only = WeightEMA(model, decay=0.9, master=lambda p: None)  # the pre-issue-14 behaviour
    module_only.update(model)
    assert module_only.shadow["weight"].flatten().tolist() == [1.0, 1.0]


def test_fp32_master_is_none_outside_deepspeed_and_for_fp32_or_frozen_weights():
    from beit_ds.engine.ema import fp32_master

    half = nn.Linear(2, 1).to(torch.bfloat16)
    assert fp32_master(half.weight) is None  # no DeepSpeed optimizer linked to it
    assert fp32_master(nn.Linear(2, 1).weight) is None
