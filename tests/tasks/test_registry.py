"""The task seam (issue 13): a registry by ``kind`` that imports no task until asked, and export /
evaluation that dispatch on the kind a checkpoint stores — one real run of each kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from beit_ds.config import ConfigError
from beit_ds.config_io import load_recipe
from beit_ds.recipe import FinetuneRecipe, LinearProbeRecipe, TokenizerRecipe
from beit_ds.tasks import export as export_any
from beit_ds.tasks import train
from beit_ds.tasks.finetune import evaluate_recipe
from beit_ds.tasks.registry import MODULES, task_type
from tests.conftest import require_module
from tests.tasks.test_finetune import FP32, TINY, _recipe, pretrained  # noqa: F401

ROOT = Path(__file__).resolve().parents[2]


def test_the_registry_imports_no_task_until_a_kind_is_looked_up():
    code = ("import sys, beit_ds.tasks.registry as t; assert not any(m in sys.modules for m in set(t.MODULES.values()));"
            " print(sorted(t.task_type(k).kind for k in t.MODULES))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(sorted(MODULES))
    with pytest.raises(ConfigError, match="kind='detection': expected one of"):
        task_type("detection")


@pytest.fixture(scope="module")
def runs(pretrained, tmp_path_factory):  # noqa: F811
    """One finished run of each kind (CPU, a few steps)."""
    root = tmp_path_factory.mktemp("kinds")
    train(_recipe(root / "finetune", str(pretrained), "schedule.max_steps=2", "checkpoint.export_at_end=false"),
             FP32, resume="none")
    probe = _recipe(root / "probe", str(pretrained), "schedule.max_steps=2", "checkpoint.export_at_end=false",
                    cls=LinearProbeRecipe, name="linprobe_demo_cpu")
    train(probe, FP32, resume="none")
    no_model = [o for o in TINY if not o.startswith("model.")]
    tok = load_recipe(TokenizerRecipe, "tokenizer_demo_cpu", [*no_model, "schedule.max_steps=2", "data.repeats=1",
                                                              "schedule.micro_batch_size=8",
                                                              f"checkpoint.output_dir={root / 'tokenizer'}",
                                                              "checkpoint.export_at_end=false"])
    train(tok, FP32, resume="none")
    return {"pretrain": pretrained, "finetune": root / "finetune", "linear_probe": root / "probe",
            "tokenizer": root / "tokenizer"}


def _tag(run: Path) -> Path:
    return run / "checkpoints" / json.loads((run / "checkpoints/latest.json").read_text())["latest"]


def test_export_dispatches_on_the_stored_kind(runs, tmp_path):
    transformers = require_module("transformers")
    files = {kind: sorted(p.name for p in export_any(_tag(run), tmp_path / kind)) for kind, run in runs.items()}
    assert files["pretrain"] == ["hf", "model.safetensors", "timm"]
    assert files["finetune"] == ["hf", "model.safetensors", "model_ema.safetensors", "timm"]
    assert files["linear_probe"] == ["model.safetensors"]
    assert files["tokenizer"] == ["report.json", "tokenizer.safetensors"]
    # the fine-tuned classifier loads into Hugging Face's BeitForImageClassification, same logits
    from beit_ds.tasks.finetune import build_finetune_model

    hf = transformers.BeitForImageClassification.from_pretrained(tmp_path / "finetune" / "hf").eval()
    ours = build_finetune_model(_recipe(tmp_path / "x", str(tmp_path / "finetune" / "model.safetensors"),
                                        "finetune.head=keep")).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(hf(pixel_values=x).logits, ours(x), atol=1e-4)
    tok = load_file(tmp_path / "tokenizer" / "tokenizer.safetensors")
    assert any("codebook" in k or "embed" in k for k in tok)


def test_evaluate_dispatches_on_the_stored_kind(runs, tmp_path):
    base = ["data.num_workers=0", "log.progress_bar=false"]
    results = {}
    for kind, run in runs.items():
        recipe = load_recipe(FinetuneRecipe, "finetune_demo_cpu", [*base, f"finetune.init={run}"])
        results[kind] = evaluate_recipe(recipe, tmp_path / f"{kind}.json")
    assert {"top1", "top5", "loss"} <= results["finetune"].keys() and {"top1"} <= results["linear_probe"].keys()
    assert 0 <= results["pretrain"]["mim_accuracy"] <= 1 and results["pretrain"]["mim_loss"] > 0
    assert results["tokenizer"]["recon_mse"] > 0 and results["tokenizer"]["codes_used"] > 0
    assert json.loads((tmp_path / "linear_probe.json").read_text())["kind"] == "linear_probe"
