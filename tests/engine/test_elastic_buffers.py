"""Elastic resume restores the module's persistent buffers: DeepSpeed's universal load takes the
parameters from ``zero/`` and skips the module state, which would leave an EMA codebook or BatchNorm
statistics at their initial values (``engine/elastic.py::restore_buffers``)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from beit_ds.config import ConfigError
from beit_ds.engine.elastic import restore_buffers


class _Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(2, 2)
        self.norm = nn.BatchNorm1d(2)
        self.register_buffer("codebook", torch.zeros(3, 2))
        self.register_buffer("derived", torch.zeros(1), persistent=False)


def test_persistent_buffers_come_back_and_nothing_else(tmp_path):
    saved = _Model()
    saved.codebook.normal_()
    saved.norm.running_mean.fill_(3.0)
    torch.save({"module": saved.state_dict(), "dp_world_size": 2}, tmp_path / "mp_rank_00_model_states.pt")
    fresh = _Model()
    weight = fresh.linear.weight.detach().clone()
    names = restore_buffers(fresh, tmp_path)
    assert names == ["codebook", "norm.num_batches_tracked", "norm.running_mean", "norm.running_var"]
    assert torch.equal(fresh.codebook, saved.codebook) and torch.equal(fresh.norm.running_mean, saved.norm.running_mean)
    assert torch.equal(fresh.linear.weight, weight) and torch.equal(fresh.derived, torch.zeros(1))  # params: DeepSpeed's
    torch.save({"module": {"linear.weight": weight}}, tmp_path / "mp_rank_00_model_states.pt")
    with pytest.raises(ConfigError, match="its model states hold no codebook"):
        restore_buffers(fresh, tmp_path)
