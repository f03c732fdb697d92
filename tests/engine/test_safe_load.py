"""No code runs from a checkpoint folder or weights file a user points us at (issue 12, items 1-2).

A real ZeRO-2 checkpoint is written, then each of its ``.pt`` files in turn is replaced by the same
content plus an object whose ``__reduce__`` runs ``touch MARKER`` (and ``COMPLETE.json`` is
rewritten to match, as an attacker who controls the folder would). Every reader of checkpoints —
resume, ``finetune.init`` (consolidation), export, universal conversion, DeepSpeed's own loader
inside ``weights_only_loading`` — must refuse without creating the marker file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from beit_ds.config import ConfigError, MIMConfig
from beit_ds.config_io import to_dict
from beit_ds.distributed import ProcessPlace
from beit_ds.engine import integrity, safe_load
from beit_ds.engine.checkpoint import MARKER, CheckpointError, CheckpointManager, to_universal
from beit_ds.engine.state import TrainState
from beit_ds.models import build_model, model_config
from beit_ds.recipe import PretrainRecipe
from beit_ds.tasks import export as export_any
from beit_ds.tasks.weights import read_init_weights as read_weights
from tests.engine.test_checkpoint import _engine, _step


class Payload:
    """Unpickling this runs a shell command: what a crafted checkpoint would carry."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _rewrite_marker(tag_dir: Path) -> None:
    info = json.loads((tag_dir / MARKER).read_text())
    info["files"] = integrity.manifest(tag_dir, 0, 1, MARKER)
    (tag_dir / MARKER).write_text(json.dumps(info))


def _poison(tag_dir: Path, name: str, marker: Path) -> None:
    obj = torch.load(tag_dir / name, weights_only=False)  # our own file: trusted here
    obj["payload"] = Payload(marker)
    torch.save(obj, tag_dir / name)
    _rewrite_marker(tag_dir)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, ds_single_rank):
    root = tmp_path_factory.mktemp("ckpt")
    engine = _engine(ds_single_rank)
    _step(engine, 1)
    manager = CheckpointManager(root, keep_last=2, place=ProcessPlace(), global_batch=4)
    manager.meta = {"kind": "pretrain", "recipe": {}}
    recipe = PretrainRecipe(model=model_config("beit_debug_patch4_32", drop_path_rate=0.2), mim=MIMConfig(vocab_size=32))
    extra = {"recipe": to_dict(recipe), "kind": "pretrain"}
    tag = manager.save(engine, TrainState(step=1), extra)
    return engine, tag


FILES = ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt", "rng_rank0.pt"]


@pytest.mark.parametrize("name", FILES)
def test_a_crafted_file_in_a_checkpoint_runs_no_code(saved, name, tmp_path):
    engine, tag = saved
    bad = tmp_path / "run" / "checkpoints" / tag.name
    shutil.copytree(tag, bad)
    marker = tmp_path / "PWNED"
    _poison(bad, name, marker)
    manager = CheckpointManager(tmp_path / "run", 2, ProcessPlace())
    assert manager.find("auto") == bad  # sizes and checksums match: the folder is consistent

    with pytest.raises(CheckpointError, match=f"{name} holds pickled objects outside the allow-list.*posix.system"):
        manager.load(engine, bad)
    with pytest.raises(ConfigError, match=name):
        read_weights(str(bad))  # finetune.init: ZeRO consolidation
    with pytest.raises(CheckpointError, match=name):
        export_any(bad, tmp_path / "export")
    with pytest.raises(CheckpointError, match=name):
        to_universal(bad, tmp_path / "universal")
    # DeepSpeed's own readers, with our pre-check bypassed: the forced restricted unpickler refuses
    with pytest.raises(Exception, match="Weights only load failed"), safe_load.weights_only_loading():
        if name == "rng_rank0.pt":
            torch.load(bad / name, weights_only=False)
        else:
            engine.load_checkpoint(str(bad.parent), tag=bad.name)
    assert not marker.exists()
    assert safe_load.FORCE_ENV not in os.environ  # the context restores the environment


def test_our_own_checkpoint_files_are_all_within_the_allow_list(saved):
    _, tag = saved
    found = {p.name: safe_load.unsafe_globals(p) for p in tag.glob("*.pt")}
    assert set(found) == set(FILES) and all(v == [] for v in found.values()), found


def test_unilm_checkpoint_with_argparse_args_loads(tmp_path):
    model = build_model(model_config("beit_debug_patch4_32", num_classes=0))
    sd = {k: v for k, v in model.state_dict().items()}
    args = argparse.Namespace(model="beit_base_patch16_224", lr=5e-4, layer_decay=0.65, input_size=224)
    torch.save({"model": sd, "args": args, "epoch": 99}, tmp_path / "checkpoint-99.pth")  # unilm's save_model
    weights, source = read_weights(str(tmp_path / "checkpoint-99.pth"))
    assert source.endswith("checkpoint-99.pth")
    assert torch.equal(weights["blocks.0.attn.qkv.weight"], sd["blocks.0.attn.qkv.weight"])


def test_a_crafted_weights_file_runs_no_code(tmp_path):
    marker = tmp_path / "PWNED"
    torch.save({"model": {"w": torch.zeros(1)}, "args": Payload(marker)}, tmp_path / "evil.pth")
    with pytest.raises(ConfigError, match="refused: it holds pickled objects outside the allow-list"):
        read_weights(str(tmp_path / "evil.pth"))
    assert not marker.exists()


@pytest.mark.parametrize("suffix, expected", [(".safetensors", "not a readable safetensors file"),
                                              (".pth", "not a readable torch file")])
def test_random_bytes_as_weights_are_one_line_errors(tmp_path, suffix, expected):
    path = tmp_path / f"weights{suffix}"
    path.write_bytes(os.urandom(4096))
    with pytest.raises(ConfigError, match=expected) as err:
        read_weights(str(path))
    assert "\n" not in str(err.value)
