"""Checkpoints through a real DeepSpeed ZeRO-2 engine: atomic pointer, pruning, damaged or
incomplete checkpoints, and an exact resume (weights, optimizer, RNG, TrainState)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from beit_ds.config import MIMConfig
from beit_ds.distributed import ProcessPlace
from beit_ds.engine.checkpoint import CheckpointError, CheckpointManager, to_universal
from beit_ds.engine.ds_setup import read_ds_config, resolve_ds_config
from beit_ds.engine.state import TrainState
from beit_ds.models import build_mim_model, model_config
from beit_ds.optim import param_groups
from beit_ds.recipe import OptimConfig, ScheduleConfig

ROOT = Path(__file__).resolve().parents[2]


# fp32 ZeRO-2 (the CPU default) and the bf16 configs a CPU with AMX trains ~1.9x faster on (issue 17)
CONFIGS = ["zero2_fp32_cpu", "zero2_bf16", "zero0_bf16"]


def _engine(deepspeed, config: str = "zero2_fp32_cpu", **ds_extra):
    torch.manual_seed(0)
    model = build_mim_model(model_config("beit_debug_patch4_32", drop_path_rate=0.2), MIMConfig(vocab_size=32))
    ds = resolve_ds_config(read_ds_config(ROOT / f"ds_configs/{config}.json"), ScheduleConfig(micro_batch_size=4),
                           OptimConfig(), 1, 1e-3)
    ds.update(ds_extra)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=param_groups(model, 0.05), config=ds)
    return engine


def _step(engine, seed: int) -> float:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 3, 32, 32, generator=g).to(next(engine.module.parameters()).dtype)
    mask = torch.rand(4, 64, generator=g) < 0.4
    out = engine(x, mask, torch.randint(0, 32, (4, 64), generator=g))
    engine.backward(out.loss)
    engine.step()
    return out.loss.item()


@pytest.mark.parametrize("config", CONFIGS)
def test_save_prune_resume_exactly(ds_single_rank, tmp_path, config):
    engine = _engine(ds_single_rank, config)
    manager = CheckpointManager(tmp_path, keep_last=2, place=ProcessPlace())
    for step in range(1, 4):
        _step(engine, step)
        manager.save(engine, TrainState(step=step, samples_in_epoch=4 * step), {"recipe": {"x": 1}})
    pointer = json.loads((tmp_path / "checkpoints/latest.json").read_text())
    assert pointer == {"latest": "step_00000003", "history": ["step_00000002"]}
    tags = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*"))
    assert tags == ["step_00000002", "step_00000003"]  # pruned to keep_last
    assert not (tmp_path / "checkpoints/latest").exists()  # DeepSpeed's own pointer is never written
    after = [_step(engine, s) for s in (10, 11)]  # drop path draws from the global RNG

    found = manager.find("auto")
    assert found == tmp_path / "checkpoints/step_00000003"
    state, _ = manager.load(engine, found)
    assert state == TrainState(step=3, samples_in_epoch=12)
    again = [_step(engine, s) for s in (10, 11)]
    assert again == after  # bitwise: weights, AdamW moments and RNG restored


def test_damaged_and_incomplete_checkpoints(ds_single_rank, tmp_path):
    engine = _engine(ds_single_rank)
    manager = CheckpointManager(tmp_path, keep_last=3, place=ProcessPlace())
    for step in (1, 2):
        _step(engine, step)
        manager.save(engine, TrainState(step=step), {})
    ckpt = tmp_path / "checkpoints"
    # a save killed half-way: files of step 3 exist but it was never published
    (ckpt / "step_00000003").mkdir()
    (ckpt / "step_00000003" / "mp_rank_00_model_states.pt").write_bytes(b"partial")
    assert manager.find("auto") == ckpt / "step_00000002"
    with pytest.raises(CheckpointError, match="step_00000003: incomplete"):
        manager.find(str(ckpt / "step_00000003"))
    # the newest published checkpoint truncated on disk: auto falls back, an explicit path is an error
    shard = ckpt / "step_00000002" / "mp_rank_00_model_states.pt"
    shard.write_bytes(shard.read_bytes()[:100])
    assert manager.find("auto") == ckpt / "step_00000001"
    with pytest.raises(CheckpointError, match=r"step_00000002: damaged \(mp_rank_00_model_states.pt"):
        manager.find(str(ckpt / "step_00000002"))
    assert manager.find("none") is None
    assert CheckpointManager(tmp_path / "empty", 3, ProcessPlace()).find("auto") is None


@pytest.mark.parametrize("config", ["zero2_fp32_cpu", "zero2_bf16"])
def test_universal_checkpoint_resumes_exactly(ds_single_rank, tmp_path, config):
    engine = _engine(ds_single_rank, config)
    manager = CheckpointManager(tmp_path, keep_last=1, place=ProcessPlace(), global_batch=4)
    for step in (1, 2):
        _step(engine, step)
    tag_dir = manager.save(engine, TrainState(step=2, samples_in_epoch=8), {})
    after = [_step(engine, s) for s in (10, 11)]

    universal = to_universal(tag_dir)
    assert universal == tmp_path / "checkpoints/step_00000002_universal"
    marker = json.loads((universal / "COMPLETE.json").read_text())
    assert marker["universal"] is True and marker["source"] == "step_00000002"
    assert (marker["world_size"], marker["global_batch"], marker["step"]) == (1, 4, 2)
    assert {"zero/cls_token/fp32.pt", "zero/cls_token/exp_avg.pt", "zero/cls_token/exp_avg_sq.pt",
            "zero/optimizer_state.pt", "mp_rank_00_model_states.pt", "rng_rank0.pt"} <= marker["files"].keys()
    assert not (tmp_path / "checkpoints/latest_universal").exists()  # DeepSpeed's pointer: never ours
    assert to_universal(tag_dir) == universal  # converted once
    assert to_universal(universal) == universal

    fresh = _engine(ds_single_rank, config, checkpoint={"load_universal": True})
    state, _ = manager.load(fresh, manager.find(str(universal)))
    assert state == TrainState(step=2, samples_in_epoch=8)
    again = [_step(fresh, s) for s in (10, 11)]
    assert again == after  # bitwise: fp32 weights, both Adam moments and the Adam step count carried over

    _step(fresh, 12)
    manager.save(fresh, TrainState(step=3), {})  # keep_last=1: step 2 goes, its universal form too
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*")) == ["step_00000003"]


@pytest.mark.parametrize("config", ["zero0_bf16", "zero0_fp32_cpu"])
def test_stage0_checkpoint_exports_its_fp32_masters_and_needs_no_universal_form(ds_single_rank, tmp_path, config):
    """DeepSpeed's ``zero_to_fp32`` reads only ZeRO shards; a stage-0 checkpoint keeps the fp32
    masters in its model states file (bf16: the optimizer's unnamed ``fp32_groups``)."""
    from beit_ds.engine.consolidate import consolidated_state_dict

    engine = _engine(ds_single_rank, config)
    manager = CheckpointManager(tmp_path, keep_last=1, place=ProcessPlace(), global_batch=4)
    for step in (1, 2):
        _step(engine, step)
    tag_dir = manager.save(engine, TrainState(step=2), {})
    sd = consolidated_state_dict(tag_dir)
    module = engine.module.state_dict()
    assert sd.keys() == module.keys() and all(v.dtype == torch.float32 for v in sd.values())
    names = {id(p): n for n, p in engine.module.named_parameters()}
    if config == "zero0_bf16":
        masters = {names[id(p)]: m for group, fp32 in zip(engine.optimizer.fp16_groups, engine.optimizer.fp32_groups)
                   for p, m in zip(group, fp32)}
        assert masters.keys() == set(names.values())
        assert all(torch.equal(sd[n], m) for n, m in masters.items())  # the masters, not the bf16 weights
        assert any(not torch.equal(sd[n], module[n].float()) for n in masters)
    else:
        assert all(torch.equal(sd[n], module[n]) for n in module)
    with pytest.raises(CheckpointError, match="ZeRO stage 0 .* loads on any world size as it is"):
        to_universal(tag_dir)
