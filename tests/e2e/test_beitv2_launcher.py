"""BEiT v2 pre-training through the real ``deepspeed`` launcher with 2 CPU ranks (gloo): killed
with SIGKILL mid-run, resumed with ``--resume auto``, the losses continue bit for bit; the export
keeps the aggregation head in ``model.safetensors`` only, and its backbone loads in timm's
``beitv2_*`` and Hugging Face's ``BeitModel`` with the MIM model's features."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from tests.conftest import wait_for
from tests.e2e.test_pretrain_launcher import _launch, _losses, _rows, _wait

pytestmark = pytest.mark.slow
V2 = "pretrain_beitv2_demo_cpu"
STEPS = ["schedule.max_steps=12", "mim.aggregation.early_layer=1"]  # SMALL keeps 2 blocks: the head reads block 1


def test_v2_two_ranks_kill_and_resume_is_bitwise(tmp_path):
    """Two launches: the steps after the checkpoint that the killed run had already logged are
    logged again after the resume, and must be the same numbers."""
    run = tmp_path / "run"
    proc = _launch(run, "fp32", STEPS, config=V2)
    wait_for(lambda: max(_losses(run), default=0) >= 6, 600, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, mid-run, no clean-up
    proc.wait()
    first = _losses(run)
    killed_at = max(first)
    resumed_from = int(json.loads((run / "checkpoints/latest.json").read_text())["latest"].split("_")[1])
    assert resumed_from in (4, 8) and resumed_from < killed_at < 12, (resumed_from, killed_at)

    _wait(_launch(run, "fp32", STEPS, config=V2), run)
    rows = _rows(run)
    resumed = {r["step"]: r["train/loss"] for r in rows[len(first):]}
    assert sorted(resumed) == list(range(resumed_from + 1, 13))
    for step in range(resumed_from + 1, killed_at + 1):
        assert resumed[step] == first[step], (step, resumed[step], first[step])
    for row in rows:  # the trained loss is the sum of the two MIM losses (means over the global batch)
        assert row["train/loss"] == pytest.approx(row["train/mim_loss"] + row["train/agg_loss"], rel=1e-5)
        assert 0.0 <= row["train/agg_accuracy"] <= 1.0
    _export_matches_timm_beitv2_and_hf(run / "export")


def _export_matches_timm_beitv2_and_hf(export: Path) -> None:
    import timm
    from safetensors.torch import load_file
    from transformers import BeitModel

    from beit_ds.models.convert import backbone_state_dict
    from beit_ds.tasks.exported import load_export

    mim = load_export(export)  # the whole MIM model, aggregation head included (strict)
    saved = load_file(export / "model.safetensors")
    assert any(k.startswith("cls_pt_layers.1.") for k in saved)
    assert set(backbone_state_dict(saved)) == set(load_file(export / "timm/model.safetensors"))
    spec = json.loads((export / "timm/timm.json").read_text())
    assert spec["model_name"] == "beitv2_base_patch16_224"  # the run normalised by ImageNet's mean / std
    tm = timm.create_model(spec["model_name"], pretrained=False, **spec["kwargs"]).eval()
    tm.load_state_dict(load_file(export / "timm/model.safetensors"), strict=True)
    hf = BeitModel.from_pretrained(export / "hf").eval()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = mim.forward_features(x)
        torch.testing.assert_close(tm.forward_features(x), feats, atol=1e-4, rtol=0)
        torch.testing.assert_close(hf(pixel_values=x).last_hidden_state, feats, atol=1e-4, rtol=0)
