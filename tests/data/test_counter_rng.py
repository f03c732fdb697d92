"""Counter-based draws: the same bits from ints and tensors, uniform and normal values."""

from __future__ import annotations

import pytest
import torch

from beit_ds.data.counter_rng import hash32, normal, sample_keys, uniform


def test_hash_of_ints_and_tensors_agree_and_stay_32_bit():
    values = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 12345]
    assert hash32(torch.tensor(values)).tolist() == [hash32(v) for v in values]
    assert hash32(0x12345678) == 0xF5E71C96  # Wellons' lowbias32 (the draws of a recipe must not drift)
    keys = sample_keys(2**40 + 3, 7, 1, torch.tensor([0, 1, 2**33]))
    assert bool((keys >= 0).all() and (keys < 2**32).all()) and len(set(keys.tolist())) == 3


def test_uniform_and_normal_draws():
    keys = sample_keys(0, 0, 0, torch.arange(2000))
    u = uniform(keys, 0, 64)
    assert bool((u >= 0).all() and (u < 1).all())
    assert u.mean().item() == pytest.approx(0.5, abs=0.005) and u.var().item() == pytest.approx(1 / 12, abs=0.002)
    draws = torch.corrcoef(torch.stack([u[:, 0], u[:, 1]]))[0, 1]  # two draws of one sample
    samples = torch.corrcoef(torch.stack([u[:-1, 0], u[1:, 0]]))[0, 1]  # neighbouring samples
    assert draws.abs().item() < 0.06 and samples.abs().item() < 0.06
    z = normal(keys, 64)
    assert z.mean().item() == pytest.approx(0.0, abs=0.01) and z.std().item() == pytest.approx(1.0, abs=0.01)
