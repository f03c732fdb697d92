"""``load_export`` dispatches on an export's manifest: one tiny real run of every kind (pre-training,
fine-tuning, linear probe, segmentation, MIM + DINO with its teacher, tokenizer) → export →
``load_export`` gives the module of the checkpoint, weights and outputs equal. Folders written
before the manifest existed still load by their weights."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from beit_ds.artifacts import MANIFEST, ExportDir, RunDir
from beit_ds.config import ConfigError, MIMConfig
from beit_ds.config_io import load_recipe, to_dict
from beit_ds.engine.consolidate import checkpoint_task
from beit_ds.engine.saved import read_saved
from beit_ds.models import (
    Beit,
    BeitForImageClassification,
    BeitForMaskedImageModeling,
    build_classifier,
    build_mim_model,
    build_model,
    model_config,
)
from beit_ds.models.dino import BeitDinoStudent
from beit_ds.recipe import PretrainRecipe
from beit_ds.segmentation.model import BeitForSegmentation
from beit_ds.tasks import export as export_any
from beit_ds.tasks import train
from beit_ds.tasks.exported import load_export
from beit_ds.tasks.registry import task_type
from beit_ds.tasks.weights import model_to_inspect
from beit_ds.tokenizers import DiscreteVAE
from tests.models.conftest import randomise
from tests.tasks.test_dino import SMALL as DINO_SMALL
from tests.tasks.test_finetune import FP32, pretrained  # noqa: F401
from tests.tasks.test_registry import runs  # noqa: F401
from tests.tasks.test_segment import _tiny as tiny_segmentation

QUIET = ["log.progress_bar=false", "log.tensorboard=false", "checkpoint.export_at_end=false"]
TYPES = {"pretrain": BeitForMaskedImageModeling, "finetune": BeitForImageClassification,
         "linear_probe": BeitForImageClassification, "segmentation": BeitForSegmentation,
         "dino": BeitDinoStudent, "tokenizer": DiscreteVAE}


@pytest.fixture(scope="module")
def every_kind(runs, tmp_path_factory):  # noqa: F811
    """The runs of ``test_registry`` plus a tiny segmentation run and a MIM + DINO run that exports its teacher."""
    root = tmp_path_factory.mktemp("more_kinds")
    seg = tiny_segmentation(root / "seg", "schedule.steps=2")
    train(seg, FP32, resume="none")
    dino = load_recipe(PretrainRecipe, "pretrain_dino_demo_cpu", [*DINO_SMALL, *QUIET, "schedule.max_steps=2",
                       "dino.export_teacher=true", f"checkpoint.output_dir={root / 'dino'}"])
    train(dino, FP32, resume="none")
    return {**runs, "segmentation": Path(seg.checkpoint.output_dir), "dino": root / "dino"}


def _tag(run: Path) -> Path:
    ckpts = RunDir(run).checkpoints
    return ckpts / json.loads((ckpts / "latest.json").read_text())["latest"]


def _outputs(kind: str, model: nn.Module, size: int) -> list[torch.Tensor]:
    """What the model computes on a fixed input (``size``² images, seed 0)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, size, size, generator=g)
    with torch.no_grad():
        if kind == "tokenizer":
            tokens = model.encode(x)
            return [tokens, model.decode(tokens)]
        if kind == "segmentation":
            return [model.logits(x)]
        if kind == "dino":
            return [model.teacher_logits(x), model.mim.forward_features(x)]
        if kind == "pretrain":
            mask = torch.zeros(2, model.cfg.grid_size[0] * model.cfg.grid_size[1], dtype=torch.bool)
            mask[:, :4] = True
            target = torch.randint(0, model.lm_head.out_features, mask.shape, generator=g)
            out = model(x, mask, target)
            return [out.loss, out.logits]
        return [model(x)]


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key].float(), b[key].float()), key


@pytest.mark.parametrize("kind", list(TYPES))
def test_every_kind_round_trips_through_its_export(every_kind, tmp_path, kind):
    saved = read_saved(_tag(every_kind[kind]))
    assert saved.kind == kind
    out = tmp_path / kind
    export_any(saved.tag_dir, out)
    manifest = ExportDir(out).read_manifest()
    assert (manifest.kind, manifest.format_version, manifest.source) == (kind, 1, str(saved.tag_dir))
    on_disk = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert set(manifest.files) == on_disk - {MANIFEST} and "recipe.json" in manifest.files
    loaded = load_export(out)
    assert type(loaded) is TYPES[kind] and not loaded.training
    _, reference = checkpoint_task(task_type(kind), saved)  # the consolidated checkpoint
    reference.eval()
    _assert_same(loaded.state_dict(), reference.state_dict())
    if kind == "tokenizer":
        exported = load_file(out / "tokenizer.safetensors")
    elif kind == "dino":
        exported = {f"mim.{k}": v for k, v in load_file(out / "model.safetensors").items()}
        exported |= {f"dino_head.{k}": v for k, v in load_file(out / "dino_head.safetensors").items()}
    else:
        exported = load_file(out / "model.safetensors")
    _assert_same(loaded.state_dict(), exported)
    size = saved.recipe["tokenizer"]["image_size"] if kind == "tokenizer" else saved.recipe["model"]["img_size"]
    for got, want in zip(_outputs(kind, loaded, size), _outputs(kind, reference, size), strict=True):
        torch.testing.assert_close(got, want, atol=0, rtol=0)


def test_the_averaged_weights_load_where_a_kind_keeps_them(every_kind, tmp_path):
    finetune = read_saved(_tag(every_kind["finetune"]))
    export_any(finetune.tag_dir, tmp_path / "finetune")
    _assert_same(load_export(tmp_path / "finetune", ema=True).state_dict(), finetune.client["ema"])
    dino = read_saved(_tag(every_kind["dino"]))
    export_any(dino.tag_dir, tmp_path / "dino")
    assert "teacher/model.safetensors" in ExportDir(tmp_path / "dino").read_manifest().files
    teacher = load_export(tmp_path / "dino", ema=True)
    assert isinstance(teacher, BeitDinoStudent)
    _assert_same(teacher.state_dict(), dino.client["dino_teacher"])
    export_any(_tag(every_kind["linear_probe"]), tmp_path / "probe")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'probe'}: no model_ema.safetensors"):
        load_export(tmp_path / "probe", ema=True)
    export_any(_tag(every_kind["segmentation"]), tmp_path / "seg")
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'seg'}: a segmentation export has no EMA weights"):
        load_export(tmp_path / "seg", ema=True)


def test_the_end_of_run_export_has_its_manifest(pretrained):  # noqa: F811
    manifest = ExportDir(RunDir(pretrained).export).read_manifest()
    assert manifest.kind == "pretrain" and manifest.source == str(_tag(pretrained))
    assert {"model.safetensors", "recipe.json", "timm/model.safetensors", "timm/timm.json", "hf/config.json",
            "hf/model.safetensors"} == set(manifest.files)


def test_pictures_look_inside_the_beit_an_export_wraps(every_kind, tmp_path):
    cfg = model_config("beit_debug_patch4_32")
    for kind, part in (("dino", "mim"), ("segmentation", "backbone")):
        export_any(_tag(every_kind[kind]), tmp_path / kind)
        inside = model_to_inspect(str(tmp_path / kind), cfg)
        assert isinstance(inside, Beit)
        _assert_same(inside.state_dict(), getattr(load_export(tmp_path / kind), part).state_dict())
    export_any(_tag(every_kind["tokenizer"]), tmp_path / "tokenizer")
    with pytest.raises(ConfigError, match="not a BEiT export"):
        model_to_inspect(str(tmp_path / "tokenizer"), cfg)


def test_an_unknown_kind_in_the_manifest_is_one_line(tmp_path):
    (tmp_path / MANIFEST).write_text(json.dumps({"kind": "detection", "format_version": 1, "files": []}))
    with pytest.raises(ConfigError, match=f"^{tmp_path / MANIFEST}: kind='detection': expected one of") as err:
        load_export(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'empty'}: no export.json, no model.safetensors"):
        load_export(tmp_path / "empty")


def test_exports_written_before_the_manifest_still_load(every_kind, tmp_path):
    for kind in ("pretrain", "finetune", "linear_probe", "tokenizer"):
        out = tmp_path / kind
        export_any(_tag(every_kind[kind]), out)
        current = load_export(out)
        (out / MANIFEST).unlink()
        if kind == "tokenizer":  # its old export: the dVAE and the report, no recipe
            (out / "recipe.json").unlink()
        else:
            shutil.rmtree(out / "timm", ignore_errors=True)
        old = load_export(out)
        assert type(old) is type(current)
        _assert_same(old.state_dict(), current.state_dict())
    assert load_export(tmp_path / "linear_probe").probe_layer is not None  # the probe, told by its weights


def _write_unlisted(tmp_path: Path, model: nn.Module, recipe: dict, name: str) -> Path:
    """An export folder as exports were written before they had a manifest."""
    out = tmp_path / name
    ExportDir(out).create().write_weights("model.safetensors", model.state_dict(), source="test")
    (out / "recipe.json").write_text(json.dumps(recipe, indent=1))
    return out


def test_an_unlisted_folder_is_rebuilt_from_its_weights_and_recipe(tmp_path):
    debug = "beit_debug_patch4_32"
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    mim = randomise(build_mim_model(model_config(debug, depth=3, rel_pos_bias="shared", use_abs_pos_emb=True),
                                    MIMConfig(vocab_size=16)))
    clf = randomise(build_classifier(model_config(debug, depth=3, global_pool="avg", num_classes=5)))
    probe = build_classifier(clf.cfg, probe_layer=2, probe_pool="cls_mean")
    probe.load_backbone(clf.state_dict(), head="reset")
    backbone = randomise(build_model(model_config(debug, depth=2, global_pool="none")))
    cases = [
        (mim, {"model": to_dict(mim.cfg), "mim": to_dict(mim.mim), "optim": {"lr": 1e-3}}, BeitForMaskedImageModeling),
        (clf, {"model": to_dict(clf.cfg), "finetune": {"init": "x"}}, BeitForImageClassification),
        (probe, {"model": to_dict(probe.cfg), "probe": {"layer": 2, "pool": "cls_mean"}}, BeitForImageClassification),
        (backbone, {"model": to_dict(backbone.cfg)}, Beit),
    ]
    for i, (model, recipe, cls) in enumerate(cases):
        loaded = load_export(_write_unlisted(tmp_path, model, recipe, f"e{i}"))
        assert type(loaded) is cls and not loaded.training
        assert loaded.state_dict().keys() == model.state_dict().keys()
        with torch.no_grad():
            if cls is BeitForMaskedImageModeling:
                mask = torch.zeros(2, 64, dtype=torch.bool)
                mask[:, ::2] = True
                tokens = torch.randint(0, 16, (2, 64))
                torch.testing.assert_close(loaded(x, mask, tokens).loss, model(x, mask, tokens).loss, atol=0, rtol=0)
            else:
                torch.testing.assert_close(loaded(x), model(x), atol=0, rtol=0)
    assert load_export(tmp_path / "e2").probe_layer == 2
    with pytest.raises(ConfigError, match=f"^{tmp_path / 'e1'}: no export.json, no model_ema.safetensors"):
        load_export(tmp_path / "e1", ema=True)
