"""artifacts.py: ``RunDir`` names every path of a run folder (and the runtime writes where it
says), ``ExportDir`` writes an export file by file, never through a planted link, and closes it
with a manifest that reads back; a missing or bad manifest is one line naming the folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from beit_ds.artifacts import FORMAT_VERSION, MANIFEST, ExportDir, Manifest, RunDir
from beit_ds.config import ConfigError
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.run_lock import RunLock
from beit_ds.logger import init_logging
from beit_ds.metrics import MetricWriter


def test_run_dir_names_every_path_of_a_run_folder(tmp_path: Path) -> None:
    run = RunDir(str(tmp_path / "run"))
    assert run.root == tmp_path / "run"
    named = {
        "checkpoints": "checkpoints", "imported": "checkpoints/imported", "export": "export",
        "recipe": "recipe.yaml", "metrics": "metrics.jsonl", "tensorboard": "tensorboard",
        "overlays": "overlays", "log": "train.log", "lock": ".run.lock",
    }
    assert {name: getattr(run, name) for name in named} == {k: run.root / v for k, v in named.items()}
    assert run == RunDir(tmp_path / "run")
    with pytest.raises(AttributeError):
        run.root = tmp_path  # type: ignore[misc]


@pytest.mark.parametrize("tag", ["checkpoints/step_00000004", "checkpoints/step_00000004_universal",
                                 "checkpoints/imported/step_00000004_0123456789_universal"])
def test_the_run_of_a_checkpoint_folder(tmp_path: Path, tag: str) -> None:
    assert RunDir.of_checkpoint(tmp_path / "run" / tag) == RunDir(tmp_path / "run")


def test_the_runtime_writes_where_run_dir_says(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    writer = MetricWriter(run.root, enabled=True, tensorboard=False)
    writer.write(1, {"loss": 2.0})
    writer.close()
    assert json.loads(run.metrics.read_text())["train/loss"] == 2.0
    logger = init_logging(0, run.root)
    logger.info("hello")
    init_logging(0)  # closes the file handler
    assert "hello" in run.log.read_text()
    lock = RunLock(run.root).acquire()
    assert lock.path == run.lock and run.lock.is_file()
    lock.release()
    manager = CheckpointManager(run.root, keep_last=1, place=ProcessPlace())
    assert manager.dir == run.checkpoints
    imported = manager.universal_target(tmp_path / "other" / "checkpoints" / "step_00000002")
    assert imported.parent == run.imported and RunDir.of_checkpoint(imported) == run


def _write_export(path: Path) -> ExportDir:
    export = ExportDir(path).create()
    export.write_weights("model.safetensors", {"w": torch.arange(4.0)}, source="ckpt")
    sub = export.sub("timm")
    sub.write_tensors("model.safetensors", {"v": torch.ones(2)})
    sub.write_json("timm.json", {"model_name": "beit"})
    export.write_file("notes.txt", lambda p: p.write_text("hi"))
    export.finish("pretrain", {"kind": "pretrain", "model": {"depth": 2}}, source="runs/a/checkpoints/step_00000002")
    return export


def test_an_export_ends_with_a_manifest_naming_every_file(tmp_path: Path) -> None:
    export = _write_export(tmp_path / "export")
    files = ("model.safetensors", "notes.txt", "recipe.json", "timm/model.safetensors", "timm/timm.json")
    assert export.read_manifest() == Manifest("pretrain", files, FORMAT_VERSION, "runs/a/checkpoints/step_00000002")
    assert json.loads((tmp_path / "export" / MANIFEST).read_text())["format_version"] == 1
    assert ExportDir(tmp_path / "export").read_recipe() == {"kind": "pretrain", "model": {"depth": 2}}
    assert load_file(tmp_path / "export" / "model.safetensors")["w"].tolist() == [0.0, 1.0, 2.0, 3.0]
    assert ExportDir(tmp_path / "export").read_weights("timm/model.safetensors")["v"].tolist() == [1.0, 1.0]
    ExportDir(tmp_path / "export").create()  # a new export into the folder: no manifest until it finishes
    assert not ExportDir(tmp_path / "export").has_manifest
    with pytest.raises(ValueError, match="is not a path inside the export"):
        export.write_json("../escape.json", {})


def test_an_export_never_writes_through_a_planted_link(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "export"
    (out / "timm").mkdir(parents=True)
    for name in ("model.safetensors", "recipe.json", MANIFEST, "timm/timm.json"):
        (out / name).symlink_to(victim)
    _write_export(out)
    assert victim.read_text() == "precious"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    (out / "hf").symlink_to(victim.parent)
    with pytest.raises(ConfigError, match=f"^{out / 'hf'}: a symbolic link, expected a folder"):
        ExportDir(out).sub("hf")


GOOD = {"kind": "finetune", "format_version": 1, "files": ["model.safetensors"]}


@pytest.mark.parametrize(("content", "match"), [
    (None, r"no export.json \(not an export folder of beit_ds\)"),
    ("{not json", r"export.json: unreadable export manifest \(JSONDecodeError\)"),
    ("[1, 2]", "export.json: expected a JSON object with a 'kind'"),
    ({**GOOD, "kind": ""}, "export.json: expected a JSON object with a 'kind'"),
    ({**GOOD, "format_version": 2}, r"export.json: format_version=2: this beit_ds reads 1 to 1"),
    ({**GOOD, "files": "model.safetensors"}, "export.json: files='model.safetensors': expected a list"),
    ({**GOOD, "files": ["../model.safetensors"]}, "export.json: lists '../model.safetensors': expected paths inside"),
    ({**GOOD, "files": ["model.safetensors", "hf/config.json"]}, "export.json: lists hf/config.json, which is missing"),
])
def test_a_missing_or_bad_manifest_is_one_line_naming_the_folder(tmp_path: Path, content, match: str) -> None:
    (tmp_path / "model.safetensors").write_bytes(b"")
    if content is not None:
        (tmp_path / MANIFEST).write_text(content if isinstance(content, str) else json.dumps(content))
    with pytest.raises(ConfigError, match=match) as err:
        ExportDir(tmp_path).read_manifest()
    assert str(err.value).startswith(str(tmp_path)) and "\n" not in str(err.value)


def test_a_missing_recipe_or_weights_file_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"^{tmp_path}: no recipe.json"):
        ExportDir(tmp_path).read_recipe()
    with pytest.raises(ConfigError, match=f"^{tmp_path}: no model_ema.safetensors in this export"):
        ExportDir(tmp_path).read_weights("model_ema.safetensors")
