"""Exports (engine/export.py) write into their folder, never through a link planted there, and a
bad ``--out`` is one line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from safetensors.torch import load_file

from beit_ds.config import ConfigError, MIMConfig
from beit_ds.config_io import to_dict
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.checkpoint import CheckpointManager
from beit_ds.engine.state import TrainState
from beit_ds.models import model_config
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks import export as export_any
from tests.engine.test_checkpoint import _engine, _step

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tag(ds_single_rank, tmp_path_factory) -> Path:
    """One pre-training checkpoint of the debug model (ZeRO-2, one step), with its recipe and kind."""
    engine = _engine(ds_single_rank)
    recipe = PretrainRecipe(model=model_config("beit_debug_patch4_32", drop_path_rate=0.2), mim=MIMConfig(vocab_size=32))
    manager = CheckpointManager(tmp_path_factory.mktemp("run"), keep_last=1, place=ProcessPlace())
    _step(engine, 1)
    return manager.save(engine, TrainState(step=1), {"recipe": to_dict(recipe), "kind": "pretrain"})


def test_planted_file_links_are_replaced_not_written_through(tag: Path, tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "export"
    (out / "hf").mkdir(parents=True)
    for name in ("model.safetensors", "recipe.json", "hf/config.json", "hf/model.safetensors"):
        (out / name).symlink_to(victim)
    assert sorted(p.name for p in export_any(tag, out)) == ["hf", "model.safetensors", "timm"]
    assert victim.read_text() == "precious"
    assert not any(p.is_symlink() for p in out.rglob("*"))
    assert "cls_token" in load_file(out / "model.safetensors")


def test_a_planted_folder_link_is_refused_in_one_line(tag: Path, tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "export"
    out.mkdir()
    (out / "timm").symlink_to(victim.parent)
    with pytest.raises(ConfigError, match=f"^{out / 'timm'}: a symbolic link, expected a folder"):
        export_any(tag, out)
    assert sorted(p.name for p in victim.parent.iterdir()) == ["victim.txt"]


def test_out_naming_an_existing_file_is_one_line(tag: Path, tmp_path: Path) -> None:
    out = tmp_path / "weights.bin"
    out.write_bytes(b"mine")
    proc = subprocess.run([sys.executable, str(ROOT / "launch/export.py"), str(tag), "--out", str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert [line for line in proc.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {out}: exists and is not a folder; expected a folder or a new name"]
    assert out.read_bytes() == b"mine"
