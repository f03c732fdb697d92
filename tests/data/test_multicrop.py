"""Multi-crop data for MIM + DINO (seed App. E): view sizes, one mask per global view, a batch's
view-major layout, and determinism per (seed, epoch, index)."""

from __future__ import annotations

import torch

from beit_ds.config import DataConfig, MaskingConfig, TransformConfig
from beit_ds.data import LoaderPlace
from beit_ds.data.multicrop import MultiCrop, build_dino_loader, collate_dino

DATA = DataConfig(source="demo", num_workers=0, transform=TransformConfig(
    input_size=32, second_input_size=16, tokenizer_view="raw", second_interpolation="bicubic", scale=(0.4, 1.0)))
MASKING = MaskingConfig(num_masking_patches=26, min_block_patches=4)
CROPS = MultiCrop(crops=3, size=16, scale=(0.05, 0.4))


def _loader(seed: int = 0, crops: MultiCrop = CROPS):
    return build_dino_loader(DATA, MASKING, (8, 8), crops, LoaderPlace(batch_size=4, seed=seed))


def test_views_have_their_sizes():
    sample = _loader().dataset[(0, 3)]
    shapes = [tuple(v.shape) for v in sample.views]
    assert shapes == [(3, 32, 32), (3, 16, 16)] * 2 + [(3, 16, 16)] * 3  # 2 x (patch, tokenizer) + 3 local
    assert sample.mask.shape == (2, 8, 8) and sample.mask.dtype == bool


def test_each_global_view_has_its_own_mask_and_crop():
    sample = _loader().dataset[(0, 5)]
    assert not (sample.mask[0] == sample.mask[1]).all()
    assert all(abs(int(m.sum()) - 26) <= 4 for m in sample.mask)  # blockwise, near the target
    assert not torch.equal(sample.views[0], sample.views[2])  # two random-resized crops


def test_deterministic_per_seed_epoch_and_index():
    a, b = _loader().dataset, _loader().dataset
    first, again = a[(1, 7)], b[(1, 7)]
    assert all(torch.equal(x, y) for x, y in zip(first.views, again.views))
    assert (first.mask == again.mask).all()
    for other in (a[(2, 7)], a[(1, 8)], _loader(seed=1).dataset[(1, 7)]):
        assert not torch.equal(other.views[0], first.views[0])


def test_batch_is_view_major():
    dataset = _loader().dataset
    samples = [dataset[(0, i)] for i in range(4)]
    batch, reads = collate_dino(samples)
    assert batch.global_images.shape == (8, 3, 32, 32) and batch.tokenizer_images.shape == (8, 3, 16, 16)
    assert batch.bool_masked_pos.shape == (8, 8, 8) and batch.local_images.shape == (12, 3, 16, 16)
    assert torch.equal(batch.global_images[1], samples[1].views[0])
    assert torch.equal(batch.global_images[4 + 1], samples[1].views[2])  # view 1 of image 1
    assert torch.equal(batch.tokenizer_images[4 + 2], samples[2].views[3])
    assert torch.equal(batch.local_images[2 * 4 + 3], samples[3].views[4 + 2])  # local 2 of image 3
    assert (batch.bool_masked_pos[4 + 1].numpy() == samples[1].mask[1]).all()
    assert batch.indices.tolist() == [0, 1, 2, 3] and len(batch) == 4 and len(reads.loaded) == 4


def test_no_local_crops_and_the_loader():
    loader = _loader(crops=MultiCrop(crops=0))
    batch = next(iter(loader))
    assert batch.local_images.shape[0] == 0 and batch.global_images.shape == (8, 3, 32, 32)
    moved = batch.to("cpu", torch.float64)
    assert moved.global_images.dtype == torch.float64 and moved.bool_masked_pos.dtype == torch.bool
