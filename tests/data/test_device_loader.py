"""The on-device data path (``data.on_device: true``): the worker path's sample order, batches that
are a function of (seed, epoch, index) only, exact continuation from a position, the decode cache,
and one-line refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from beit_ds.config import AugmentConfig, ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.data import (
    DeviceLoader,
    LoaderPlace,
    ResumableLoader,
    build_finetune_loader,
    build_pretrain_loader,
    resident,
)
from beit_ds.data.device_loader import (
    build_device_finetune_loader,
    build_device_pretrain_loader,
    check_on_device,
)
from beit_ds.data.skips import DataError
from beit_ds.data.sources import build_records
from beit_ds.masking import build_mask_generator
from beit_ds.recipe import DinoPretrainRecipe, PretrainRecipe
from beit_ds.tasks import train
from beit_ds.tasks.dino import check_dino

GRID = (8, 8)
FP32 = Path(__file__).resolve().parents[2] / "ds_configs/zero2_fp32_cpu.json"


@pytest.fixture
def device_data(tiny_data, tmp_path):
    """The demo photographs, each decoded once to 40² (centred square), cached under ``tmp_path``."""
    return tiny_data(on_device=True, on_device_size=40, repeats=3, cache_dir=str(tmp_path / "cache"))


def _pretrain(data, masking, **place) -> DeviceLoader:
    loader = build_pretrain_loader(data, masking, GRID, LoaderPlace(**{"batch_size": 4, "seed": 7, **place}))
    assert isinstance(loader, DeviceLoader)
    return loader


def _by_index(loader) -> dict[int, tuple[torch.Tensor, ...]]:
    """Every sample of the loader's epoch by its global index: (patch view, tokenizer view, mask)."""
    out = {}
    for b in loader:
        for k, i in enumerate(b.indices.tolist()):
            out[i] = (b.images[k], b.tokenizer_images[k], b.bool_masked_pos[k])
    return out


def test_order_is_the_worker_paths_and_samples_depend_on_seed_epoch_index_only(device_data, tiny_masking):
    workers = build_pretrain_loader(replace(device_data, on_device=False), tiny_masking, GRID,
                                    LoaderPlace(batch_size=4, rank=1, world_size=2, seed=7))
    assert isinstance(workers, ResumableLoader)
    ranks = [_pretrain(device_data, tiny_masking, rank=r, world_size=2) for r in (0, 1)]
    assert len(ranks[1]) == len(workers) == 5  # 42 samples over 2 ranks of 4: 5 full batches each
    order = [i for b in ranks[1] for i in b.indices.tolist()]
    assert order == workers.sampler.indices()[:20].tolist()
    one = _by_index(_pretrain(device_data, tiny_masking, batch_size=6))  # other batches, one rank
    both = {**_by_index(ranks[0]), **_by_index(ranks[1])}
    assert set(both) <= set(one)
    assert all(all(torch.equal(x, y) for x, y in zip(both[i], one[i])) for i in both)
    b = next(iter(ranks[0]))
    assert b.images.shape == (4, 3, 32, 32) and b.tokenizer_images.shape == (4, 3, 16, 16)
    assert b.bool_masked_pos.shape == (4, 8, 8) and b.bool_masked_pos.sum().item() <= 4 * 26
    assert b.labels is not None and b.labels.tolist() == [i % 14 for i in b.indices.tolist()]
    later = _by_index(_pretrain(device_data, tiny_masking, batch_size=6, epoch=1))
    assert not any(torch.equal(one[i][0], later[i][0]) for i in set(one) & set(later))


def test_a_loader_at_a_position_continues_the_epoch_exactly(device_data, tiny_masking):
    loader = _pretrain(device_data, tiny_masking, epoch=2)
    full = list(loader)
    assert loader.state_dict() == {"epoch": 2, "position": 40}
    rest = loader.at(2, start_sample=16)
    assert len(rest) == len(full) - 4
    for a, b in zip(full[4:], rest):
        assert torch.equal(a.indices, b.indices) and torch.equal(a.images, b.images)
        assert torch.equal(a.tokenizer_images, b.tokenizer_images) and torch.equal(a.bool_masked_pos, b.bool_masked_pos)


def test_finetune_views_erasing_and_ordered_evaluation(device_data):
    place = LoaderPlace(batch_size=8, seed=1)
    train = build_finetune_loader(device_data, "train", place, augment=AugmentConfig(rand_augment_ops=0, random_erasing=1.0))
    b = next(iter(train))
    assert b.images.shape == (8, 3, 32, 32) and b.labels.tolist() == [i % 14 for i in b.indices.tolist()]
    assert (b.images.abs() > 1.0001).any()  # normal noise leaves the normalised [-1, 1] range
    evaluation = build_finetune_loader(device_data, "eval", place)
    batches = list(evaluation)
    assert [len(x) for x in batches] == [8, 6] and torch.cat([x.indices for x in batches]).tolist() == list(range(14))
    assert torch.equal(batches[0].images, next(iter(evaluation)).images)


def test_every_tensor_of_a_batch_is_made_on_the_device(device_data, tiny_masking):
    """On ``meta`` (a stand-in for a GPU here: any CPU tensor mixed into its work raises), every
    view, mask and label is computed on the device; only the per-sample parameters cross. The sample
    indices stay on the host, as the worker path's do: the fine-tuning step seeds its Mixup from
    them, which would otherwise wait for the device every step."""
    meta = torch.device("meta")
    records = build_records(device_data, "train")
    masks = build_mask_generator(tiny_masking, GRID)
    pretrain = next(iter(build_device_pretrain_loader(device_data, masks, LoaderPlace(batch_size=4), records, meta)))
    augment = AugmentConfig(rand_augment_ops=0, random_erasing=0.5)
    finetune = next(iter(build_device_finetune_loader(device_data, "train", LoaderPlace(batch_size=4), records,
                                                      augment, meta)))
    evaluation = next(iter(build_device_finetune_loader(device_data, "eval", LoaderPlace(batch_size=4), records,
                                                        None, meta)))
    batches = (pretrain, finetune, evaluation)
    tensors = [t for b in batches for k, t in vars(b).items() if k != "indices"]
    assert all(t.device == meta for t in tensors) and len(tensors) == 8
    assert all(b.indices.device.type == "cpu" and b.indices.dtype == torch.int64 for b in batches)


def test_the_split_is_decoded_once_and_read_back(device_data, tiny_masking, monkeypatch, victim):
    first = next(iter(_pretrain(device_data, tiny_masking)))
    (cached,) = Path(device_data.cache_dir).glob("decoded-*.npz")

    def refuse(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(resident, "decode_split", refuse)
    assert torch.equal(first.images, next(iter(_pretrain(device_data, tiny_masking))).images)
    monkeypatch.undo()
    cached.unlink()
    cached.symlink_to(victim)  # a link planted under the cache's name is replaced, never followed
    assert torch.equal(first.images, next(iter(_pretrain(device_data, tiny_masking))).images)
    assert victim.read_text() == "precious" and cached.is_file() and not cached.is_symlink()


def test_images_of_different_sizes_need_a_decode_size(tiny_data, tiny_masking, tmp_path, photos):
    root = tmp_path / "mixed"
    root.mkdir()
    for n, (w, h) in enumerate([(32, 32), (32, 32), (40, 30)]):
        Image.fromarray(np.ascontiguousarray(photos[n][:h, :w])).save(root / f"{n}.png")
    data = tiny_data(source="folder", path=str(root), on_device=True, cache_dir=str(tmp_path / "cache"))
    with pytest.raises(DataError) as err:
        build_pretrain_loader(data, tiny_masking, GRID, LoaderPlace(batch_size=2))
    message = str(err.value)
    assert "\n" not in message and message.startswith("data.on_device_size=0: images differ in size (")
    assert "2.png is 40x30" in message


def test_a_bad_file_is_reported_and_read_as_the_next_one(tiny_data, tmp_path, photos):
    for n, name in enumerate(["a/0.png", "a/1.png", "a/2.jpg", "b/0.png", "b/1.png"]):
        (tmp_path / "tree" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(photos[n][:32, :32])).save(tmp_path / "tree" / name, format="PNG")
    (tmp_path / "tree/a/2.jpg").write_bytes(b"\xff\xd8\xff not a JPEG")
    data = tiny_data(source="folder", path=str(tmp_path / "tree"), on_device=True, max_skip_fraction=0.5,
                     cache_dir=str(tmp_path / "cache"))
    loader = build_finetune_loader(data, "eval", LoaderPlace(batch_size=5))
    (batch,) = list(loader)
    assert batch.labels.tolist() == [0, 0, 1, 1, 1]  # entry 2 reads b/0.png, label included (as ImageDataset)
    assert torch.equal(batch.images[2], batch.images[3]) and not torch.equal(batch.images[1], batch.images[2])
    assert loader.report.skipped == 1 and loader.report.files == 5 and loader.report.loaded == 5
    assert "a/2.jpg" in loader.report.summary()
    with pytest.raises(DataError, match=r"^data.max_skip_fraction=0.1: 1 of 5 distinct files read were bad"):
        build_finetune_loader(replace(data, max_skip_fraction=0.1), "eval", LoaderPlace(batch_size=5))


def test_unsupported_combinations_are_one_line(device_data):
    with pytest.raises(ConfigError) as err:
        check_on_device(device_data, AugmentConfig(rand_augment_ops=2))
    assert str(err.value) == (
        "augment.rand_augment_ops=2: RandAugment has no on-device version (data.on_device=true);"
        " set augment.rand_augment_ops=0 or data.on_device=false"
    )
    recipe = load_recipe(DinoPretrainRecipe, "pretrain_dino_demo_cpu", ["data.on_device=true"])
    with pytest.raises(ConfigError, match=r"^data.on_device=true: the DINO multi-crop views have no on-device version"):
        check_dino(recipe)


def _losses(out: Path) -> dict[int, float]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def _pretrain_on_device(out: Path, cache: Path, *extra: str) -> int:
    """Train the demo recipe on the device path (28 samples of 8: 3 steps an epoch, 6 in all); the step reached."""
    sets = ["model.depth=2", "data.repeats=2", "schedule.micro_batch_size=8", "schedule.epochs=2",
            "data.on_device=true", "data.on_device_size=40", f"data.cache_dir={cache}", "checkpoint.save_every_steps=2",
            "log.every_steps=1", "log.progress_bar=false", "log.tensorboard=false", f"checkpoint.output_dir={out}"]
    return train(load_recipe(PretrainRecipe, "pretrain_demo_cpu", [*sets, *extra]), FP32, "auto").step


def test_pretraining_resumed_mid_epoch_is_bit_identical(ds_single_rank, tmp_path):
    """The second run stops at step 4 (epoch 1, position 8) and resumes from that checkpoint."""
    full, part, cache = tmp_path / "full", tmp_path / "part", tmp_path / "cache"
    assert _pretrain_on_device(full, cache) == 6
    assert _pretrain_on_device(part, cache, "schedule.max_steps=4") == 4
    assert _pretrain_on_device(part, cache) == 6
    a, b = _losses(full), _losses(part)
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5, 6]
    assert all(a[s] == b[s] for s in a), (a, b)
    wa, wb = load_file(full / "export/model.safetensors"), load_file(part / "export/model.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert len(list((tmp_path / "cache").glob("decoded-*.npz"))) == 1  # decoded once, by the device path
