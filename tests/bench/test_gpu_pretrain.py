"""``bench/gpu_pretrain.py`` runs on the CPU as a smoke test (tiny model and tokenizer, the real
DeepSpeed engine), and its FLOP count agrees with the analytic roofline count."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))


def test_smoke_run_reports_throughput_and_mfu():
    proc = subprocess.run([sys.executable, "bench/gpu_pretrain.py", "--smoke", "--steps", "2", "--warmup", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["model"] == "smoke" and result["batch"] == 4
    bf16 = result["bf16"]
    assert bf16["images_per_s"] > 0 and 0 < bf16["mfu"] < 1 and result["mfu"] == bf16["mfu"]
    assert abs(bf16["images_per_s"] * bf16["seconds_per_step"] - 4) < 1e-6


def test_counted_model_flops_match_the_analytic_count():
    import gpu_pretrain
    from roofline import train_step_flops

    from beit_ds.config import MIMConfig
    from beit_ds.models import model_config

    s = gpu_pretrain.Setting(model_config("beit_debug_patch4_32", patch_size=8, embed_dim=64), 16, 32, 4)
    batch = gpu_pretrain.synthetic_batch(s)
    k = gpu_pretrain.mask_target(s)  # the LM head runs on K rows per image, masked first
    model_flops, tokenizer_flops = gpu_pretrain.count_flops(s, MIMConfig(vocab_size=512, max_masked=k), batch)
    cfg = s.model
    analytic = train_step_flops(cfg, 4, 4 * k, 512)
    # the analytic count includes the images' gradient through the patch embedding, never computed
    patch_input_grad = 4 * 2 * cfg.num_patches * cfg.in_chans * cfg.patch_size**2 * cfg.embed_dim
    assert model_flops == analytic - patch_input_grad, (model_flops, analytic)
    assert tokenizer_flops > 0
