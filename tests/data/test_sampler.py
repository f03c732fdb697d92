"""Resumable distributed sampling: disjoint rank slices, exact resume on 1, 2 and 3 ranks."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from beit_ds.data import LoaderPlace, build_pretrain_loader
from beit_ds.data.sampler import ResumableDistributedSampler, epoch_order

N = 103  # not divisible by any batch × world size used below


def _rank_indices(world: int, start: int, batch: int, batches: int | None = None) -> list[np.ndarray]:
    """What each rank reads (whole batches, like DataLoader(drop_last=True)), optionally capped."""
    out = []
    for rank in range(world):
        idx = ResumableDistributedSampler(N, rank, world, seed=7, epoch=2, start_sample=start).indices()
        full = len(idx) // batch if batches is None else batches
        out.append(idx[: full * batch])
    return out


def test_order_is_a_function_of_seed_and_epoch():
    a = epoch_order(N, seed=1, epoch=0)
    assert sorted(a.tolist()) == list(range(N))
    assert np.array_equal(a, epoch_order(N, seed=1, epoch=0))
    assert not np.array_equal(a, epoch_order(N, seed=1, epoch=1))
    assert not np.array_equal(a, epoch_order(N, seed=2, epoch=0))
    assert np.array_equal(epoch_order(N, 1, 0, shuffle=False), np.arange(N))


@pytest.mark.parametrize("world", [1, 2, 3])
def test_ranks_are_disjoint_and_cover_a_prefix_of_the_order(world):
    parts = _rank_indices(world, start=0, batch=1)
    seen = np.concatenate(parts)
    assert len(seen) == len(set(seen.tolist())) == (N // world) * world
    assert set(seen.tolist()) == set(epoch_order(N, 7, 2)[: len(seen)].tolist())
    assert len({len(p) for p in parts}) == 1  # equal counts: every rank takes the same number of steps


@pytest.mark.parametrize(("world_a", "world_b"), [(1, 2), (2, 3), (3, 1), (2, 2), (3, 2)])
def test_resume_on_another_world_size_neither_repeats_nor_skips(world_a, world_b):
    batch_a, batch_b, steps_a = 4, 5, 3
    before = np.concatenate(_rank_indices(world_a, 0, batch_a, batches=steps_a))
    position = steps_a * batch_a * world_a  # what ResumableLoader.state_dict() reports
    after = np.concatenate(_rank_indices(world_b, position, batch_b))
    consumed = np.concatenate([before, after])
    assert len(consumed) == len(set(consumed.tolist()))  # no repeats
    order = epoch_order(N, 7, 2)
    assert set(consumed.tolist()) == set(order[: len(consumed)].tolist())  # no gaps: a prefix
    assert N - len(consumed) < batch_b * world_b  # only the final partial global batch is dropped


def test_eval_keeps_every_sample_without_padding():
    parts = [ResumableDistributedSampler(N, r, 3, 0, 0, shuffle=False, drop_last=False) for r in range(3)]
    assert [len(p) for p in parts] == [35, 34, 34]
    assert sorted(np.concatenate([p.indices() for p in parts]).tolist()) == list(range(N))


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="rank=2: expected 0 <= rank < world_size=2"):
        ResumableDistributedSampler(N, 2, 2, 0, 0)
    with pytest.raises(ValueError, match="start_sample=104"):
        ResumableDistributedSampler(N, 0, 1, 0, 0, start_sample=104)


def _run(loader, batches: int | None = None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """index → (patch view, mask) for the first ``batches`` batches (all when None)."""
    out = {}
    for batch in itertools.islice(loader, batches):
        for i, index in enumerate(batch.indices.tolist()):
            out[index] = (batch.images[i], batch.bool_masked_pos[i])
    return out


def test_loader_resume_on_other_world_sizes_sees_identical_samples(tiny_data, tiny_masking):
    """1 rank uninterrupted vs 2 ranks for 2 steps, checkpoint, then 3 ranks to the end of the epoch."""
    cfg = tiny_data(repeats=3)  # 42 samples of the demo photographs
    grid = (8, 8)
    whole = build_pretrain_loader(cfg, tiny_masking, grid, LoaderPlace(batch_size=2, seed=11, epoch=1))
    reference = _run(whole)
    place = LoaderPlace(batch_size=2, world_size=2, seed=11, epoch=1)
    first = [build_pretrain_loader(cfg, tiny_masking, grid, replace(place, rank=r)) for r in range(2)]
    seen = {}
    for loader in first:
        seen.update(_run(loader, batches=2))
    state = first[0].state_dict()
    assert state == first[1].state_dict() == {"epoch": 1, "position": 8}
    for r in range(3):
        again = LoaderPlace(
            batch_size=2, rank=r, world_size=3, seed=11, epoch=1, start_sample=state["position"]
        )
        part = _run(build_pretrain_loader(cfg, tiny_masking, grid, again))
        assert not set(part) & set(seen)  # nothing repeated
        seen.update(part)
    assert set(seen) <= set(range(42)) and len(seen) == 8 + 3 * ((42 - 8) // 3 // 2) * 2
    order = epoch_order(42, 11, 1)
    assert set(seen) == set(order[: len(seen)].tolist())
    for index, (image, mask) in seen.items():
        if index in reference:  # same crop, jitter and mask wherever and whenever it is loaded
            assert torch.equal(image, reference[index][0]) and torch.equal(mask, reference[index][1])
    assert len(set(seen) & set(reference)) >= 36
