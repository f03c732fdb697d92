"""The segmentation task's recipes and checks (issue 15); training itself runs in
tests/e2e/test_segment_launcher.py through the real launcher."""

from __future__ import annotations

import pytest

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.engine.segment import check_recipe
from beit_ds.engine.task import task_type
from beit_ds.recipe import SegmentationRecipe


def recipe(name: str, *overrides: str) -> SegmentationRecipe:
    return load_recipe(SegmentationRecipe, name, list(overrides))


def test_paper_recipes_have_unilm_and_seed_values() -> None:
    b = recipe("seg_upernet_base_ade20k_640")  # unilm upernet_beit_base_12_640_slide_160k_ade20k_pt2ft.py
    assert (b.optim.lr, b.optim.layer_decay, b.optim.weight_decay, b.optim.clip_grad) == (3e-5, 0.9, 0.05, 0.0)
    assert (b.schedule.steps, b.schedule.warmup_steps, b.schedule.decay, b.schedule.micro_batch_size) == (
        160_000, 1500, "linear", 2)
    assert b.data.transform.crop_size == b.model.img_size == 640 and b.data.transform.scale == (2560, 640)
    assert (b.decode.out_indices, b.decode.channels, b.decode.aux_weight) == ((3, 5, 7, 11), 768, 0.4)
    assert (b.inference.mode, b.inference.stride) == ("slide", 426)
    large = recipe("seg_upernet_large_ade20k_640")  # unilm ..._large_24_640_..._pt2ft.py
    assert (large.optim.lr, large.optim.layer_decay, large.schedule.warmup_steps) == (2e-5, 0.95, 3000)
    assert (large.schedule.micro_batch_size, large.schedule.grad_accum) == (1, 2)
    assert (large.decode.out_indices, large.decode.channels, large.model.drop_path_rate) == ((7, 11, 15, 23), 1024, 0.2)
    setr = recipe("seg_setr_pup_base_ade20k_512")  # seed App. I
    assert (setr.optim.lr, setr.optim.layer_decay, setr.schedule.steps, setr.schedule.warmup_steps) == (
        1e-3, 0.65, 160_000, 1500)
    assert (setr.decode.head, setr.decode.up_convs, setr.decode.channels, setr.model.img_size) == ("setr_pup", 4, 256, 512)
    for r in (b, large, setr):
        check_recipe(r)


def test_a_stated_crop_must_be_the_model_size() -> None:
    with pytest.raises(ConfigError, match="data.transform.crop_size=256"):
        recipe("seg_camvid_demo_cpu", "data.transform.crop_size=256")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["decode.out_indices=[1,2,3,7]"], "decode.out_indices"),
        (["finetune.ema_decay=0.999"], "finetune.ema_decay"),
        (["inference.crop=100"], "inference.crop=100"),
        (["model.patch_size=14", "model.img_size=126"], "model.patch_size=14"),
        (["decode.class_names=[a,b]"], "decode.class_names"),
    ],
)
def test_bad_recipes_are_one_line_errors(overrides: list[str], match: str) -> None:
    with pytest.raises(ConfigError, match=match) as err:
        check_recipe(recipe("seg_camvid_demo_cpu", *overrides))
    assert "\n" not in str(err.value)


def test_the_kind_is_registered() -> None:
    assert task_type("segmentation").recipe_type is SegmentationRecipe


def test_one_image_per_batchnorm_is_refused_before_training() -> None:
    from beit_ds.distributed import ProcessPlace
    from beit_ds.engine.segment import SegmentationTask

    r = recipe("seg_camvid_demo_cpu", "schedule.micro_batch_size=1")
    with pytest.raises(ConfigError, match="at least 2 images"):
        SegmentationTask(r, ProcessPlace()).check()
    SegmentationTask(r, ProcessPlace(rank=0, world_size=8, local_rank=0)).check()  # SyncBN over 8 ranks: 8 images
