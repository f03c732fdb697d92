"""``launch/train_tokenizer.py`` end to end: the dVAE trains through the shared DeepSpeed loop,
its loss falls, the export loads as a tokenizer and a pre-training run can use it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "launch" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_train_tokenizer_then_pretrain_on_its_tokens(tmp_path):
    tok = tmp_path / "tok"
    _run("train_tokenizer.py", f"checkpoint.output_dir={tok}", "schedule.max_steps=60", "log.every_steps=5",
         "tokenizer.dvae.codebook_size=128", "tokenizer.dvae.temperature_steps=60", "tokenizer.dvae.prior_warmup_steps=20",
         "log.progress_bar=false")
    rows = [json.loads(x) for x in (tok / "metrics.jsonl").read_text().splitlines()]
    recon = [r["train/recon_loss"] for r in rows]
    assert {"train/perplexity", "train/usage", "train/kl"} <= rows[0].keys()
    assert recon[-1] < 0.7 * recon[0], recon
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tok / "tensorboard"), size_guidance={"images": 0}).Reload()
    shots = events.Images("tokenizer/reconstructions")  # originals beside reconstructions, per checkpoint
    assert shots and shots[-1].step == 60
    report = json.loads((tok / "export/report.json").read_text())
    assert report["recon_mse"] < report["mean_image_mse"], report

    from beit_ds.config import DVAEConfig, TokenizerConfig
    from beit_ds.tokenizers import build_tokenizer

    tokenizer = build_tokenizer(TokenizerConfig(name="dvae", path=str(tok / "export/tokenizer.safetensors"), image_size=32,
                                                dvae=DVAEConfig()))
    tokens = tokenizer.encode(torch.rand(2, 3, 32, 32))
    assert tokens.shape == (2, 8, 8) and int(tokens.max()) < 128

    run = tmp_path / "pre"
    _run("pretrain.py", f"checkpoint.output_dir={run}", f"tokenizer.path={tok / 'export/tokenizer.safetensors'}",
         "mim.vocab_size=128", "schedule.max_steps=6", "log.every_steps=1", "log.progress_bar=false")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert abs(rows[0]["train/loss"] - torch.log(torch.tensor(128.0)).item()) < 1.0  # untrained head ≈ ln V
