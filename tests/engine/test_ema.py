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
