"""The segmentation task's recipes and checks (issue 15); one tiny step through the real job in
every precision (bf16 / fp16 with BatchNorm in fp32); evaluation that skips and counts unreadable
pairs. Multi-rank training, resume and export run in tests/e2e/test_segment_launcher.py."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.data import DataError
from beit_ds.engine import job
from beit_ds.recipe import SegmentationRecipe
from beit_ds.tasks import train
from beit_ds.tasks.registry import task_type
from beit_ds.tasks.segment import build_segmenter, check_recipe, evaluate_recipe
from tests.e2e.test_segment_launcher import make_pairs

ROOT = Path(__file__).resolve().parents[2]
TINY = [  # a 4-block, 32-wide backbone on 64² crops; 96x72 synthetic pairs (classes 0..4, void 9)
    "model.img_size=64", "model.embed_dim=32", "model.depth=4", "model.num_heads=2", "model.drop_path_rate=0",
    "decode.num_classes=5", "decode.out_indices=[0,1,2,3]", "decode.channels=16", "decode.aux_channels=8",
    "decode.class_names=[]", "data.ignore_index=9", "data.num_workers=0", "data.transform.scale=[96,72]",
    "data.transform.eval_scale=[96,72]", "schedule.micro_batch_size=2", "schedule.warmup_steps=0",
    "log.progress_bar=false", "log.tensorboard=false", "log.every_steps=1", "checkpoint.export_at_end=false",
]
job_init_engine = job.init_engine


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
        assert r.model.wd_exempt == "none"  # unilm's segmentation optimizer decays backbone.cls_token (wd 0.05)


def test_a_stated_crop_must_be_the_model_size() -> None:
    with pytest.raises(ConfigError, match="data.transform.crop_size=256"):
        recipe("seg_camvid_demo_cpu", "data.transform.crop_size=256")


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["decode.out_indices=[1,2,3,7]"], "decode.out_indices"),
        (["finetune.ema_decay=0.999"], r"finetune.ema_decay: unknown key \(expected one of init, label_smoothing, evaluate\)"),
        (["finetune.head=keep"], r"finetune.head: unknown key"),
        (["finetune.head_init_scale=0.01"], r"finetune.head_init_scale: unknown key"),
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
    from beit_ds.tasks.segment import SegmentationTask

    r = recipe("seg_camvid_demo_cpu", "schedule.micro_batch_size=1")
    with pytest.raises(ConfigError, match="at least 2 images"):
        SegmentationTask(r, ProcessPlace()).check()
    SegmentationTask(r, ProcessPlace(rank=0, world_size=8, local_rank=0)).check()  # SyncBN over 8 ranks: 8 images


def _tiny(tmp_path: Path, *extra: str) -> SegmentationRecipe:
    data = tmp_path / "data"
    if not data.exists():
        make_pairs(data / "train", 4, seed=0)
        make_pairs(data / "val", 1, seed=1)
    return recipe("seg_camvid_demo_cpu", *TINY, f"data.path={data / 'train'}", f"data.eval_path={data / 'val'}",
                  f"checkpoint.output_dir={tmp_path / 'run'}", *extra)


@pytest.mark.parametrize(("config", "head"), [("zero0_bf16", "upernet"), ("zero2_bf16", "upernet"),
                                              ("zero2_fp16", "upernet"), ("zero0_bf16", "setr_pup")])
def test_a_step_in_low_precision_keeps_batchnorm_in_fp32(ds_single_rank, tmp_path, monkeypatch, config, head):
    from deepspeed.accelerator import get_accelerator

    # DeepSpeed refuses fp16 on CPU; the test lifts its accelerator check to run the real fp16 engine
    monkeypatch.setattr(type(get_accelerator()), "is_fp16_supported", lambda self: True)
    engines = []
    monkeypatch.setattr(job, "init_engine", lambda *a: engines.append(job_init_engine(*a)) or engines[-1])
    r = _tiny(tmp_path, "schedule.steps=1", f"decode.head={head}", "decode.up_convs=2", "decode.aux_num_convs=1")
    assert train(r, ROOT / f"ds_configs/{config}.json", resume="none").step == 1
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    loss = [row["train/loss"] for row in rows if "train/loss" in row]
    assert len(loss) == 1 and math.isfinite(loss[0]) and 0 < loss[0] < 10
    assert [row["val/skipped"] for row in rows if "val/mIoU" in row] == [0.0]  # evaluated in the same precision
    low = torch.float16 if "fp16" in config else torch.bfloat16
    norms = [m for m in engines[0].module.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.SyncBatchNorm))]
    assert norms
    for m in norms:  # DeepSpeed cast the parameters, the statistics stayed fp32 and were updated once
        assert m.weight.dtype == low and m.running_mean.dtype == m.running_var.dtype == torch.float32
        assert int(m.num_batches_tracked) == 1 and torch.isfinite(m.running_var).all()
        assert not torch.equal(m.running_var, torch.ones_like(m.running_var))



def test_evaluation_skips_an_unreadable_pair_and_reports_it(ds_single_rank, tmp_path):
    data = tmp_path / "data"
    make_pairs(data / "train", 2, seed=0)
    make_pairs(data / "val", 3, seed=1)
    clean = data / "clean"  # the two good pairs alone
    for sub, suffix in (("images", ".jpg"), ("labels", ".png")):
        (clean / sub).mkdir(parents=True)
        for n in (0, 2):
            shutil.copy(data / "val" / sub / f"{n:03d}{suffix}", clean / sub / f"{n:03d}{suffix}")
    (data / "val" / "labels" / "001.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    base = _tiny(tmp_path)
    weights = tmp_path / "seg.safetensors"
    save_file(build_segmenter(base, init=False).state_dict(), str(weights))

    def evaluate(eval_path: Path, *extra: str) -> dict:
        out = tmp_path / f"{eval_path.name}.json"
        evaluate_recipe(_tiny(tmp_path, f"finetune.init={weights}", f"data.eval_path={eval_path}", *extra), out)
        return json.loads(out.read_text())

    good = evaluate(clean)
    got = evaluate(data / "val", "data.max_skip_fraction=0.5")
    assert (good["images"], good["skipped"]) == (2.0, 0.0)
    assert (got["images"], got["skipped"]) == (2.0, 1.0)  # never replaced by another image, never scored
    for key in ("mIoU", "mAcc", "aAcc", "per_class_iou"):
        assert got[key] == good[key], key  # the confusion matrix of the two good images only
    with pytest.raises(DataError) as err:  # 1 of 3 pairs bad: past the default 1 %
        evaluate(data / "val")
    message = str(err.value)
    assert message.startswith("data.max_skip_fraction=0.01: 1 of 3 distinct files read were bad")
    assert str(data / "val" / "labels" / "001.png") in message and "\n" not in message
