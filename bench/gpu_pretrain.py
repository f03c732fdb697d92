"""The real pre-training step on one device: a DALL-E-sized tokenizer under no_grad plus the BEiT
MIM step through the DeepSpeed engine (ZeRO-2, the shipped ``ds_configs``), in bf16 and fp16;
images/s and model FLOPs utilisation (MFU).

    python bench/gpu_pretrain.py                     # GPU: BEiT-B 224², DALL-E encoder at 112², batch 64
    python bench/gpu_pretrain.py --smoke             # CPU smoke test (CI): tiny model and tokenizer, bf16

MFU = (model forward+backward FLOPs + tokenizer forward FLOPs) per second / the device's dense
peak for the precision. FLOPs are counted once, outside the timed steps, by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; a multiply-add
is 2 FLOPs) on the plain modules without activation checkpointing, so recomputation does not
count as useful work. Peaks are datasheet dense tensor-core figures looked up by device name
(``--peak-tflops`` overrides; on CPU the peak is the fp32 matmul rate measured in the same run).
Weights are random: speed does not depend on them. The last line is a JSON object with the
figures per precision and ``mfu`` of the first precision.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import torch
from harness import emit
from roofline import matmul_probe, matmul_rate
from torch.utils.flop_counter import FlopCounterMode

from beit_ds.config import MaskingConfig, MIMConfig, ModelConfig
from beit_ds.data.collate import MIMBatch
from beit_ds.engine.ds_setup import read_ds_config, resolve_ds_config
from beit_ds.engine.pretrain import mim_forward
from beit_ds.engine.runtime import init_engine, torch_dtype
from beit_ds.masking import build_mask_generator, mask_rng
from beit_ds.models import build_mim_model, model_config
from beit_ds.recipe import OptimConfig, ScheduleConfig
from beit_ds.tokenizers.dalle import DalleEncoder, DalleTokenizer

# Dense (no sparsity) tensor-core peaks in TFLOP/s for bf16 / fp16, from the vendors' datasheets.
PEAK_TFLOPS = {"H200": 989.0, "H100 SXM": 989.0, "H100 80GB HBM3": 989.0, "H100 PCIe": 756.0, "H100": 756.0,
               "A100": 312.0, "L40S": 362.0, "A10G": 70.0, "V100": 125.0}


@dataclass
class Setting:
    """What one run measures: the backbone, the tokenizer's size and the batch."""

    model: ModelConfig
    tokenizer_hidden: int
    tokenizer_size: int
    batch: int


def setting(args: argparse.Namespace) -> Setting:
    if args.smoke:
        return Setting(model_config("beit_debug_patch4_32", patch_size=8), 16, 32, 4)
    return Setting(model_config(args.model), 256, 112, args.batch)


def mask_target(s: Setting) -> int:
    """Patches masked per image (≈40 %, the seed's 75 of 196): the LM head's rows (``mim.max_masked``)."""
    return int(0.4 * s.model.num_patches)


def synthetic_batch(s: Setting, seed: int = 0) -> MIMBatch:
    """Random views and Algorithm-1 masks (the default ≈40 %); the speed does not depend on pixels."""
    g = torch.Generator().manual_seed(seed)
    cfg = s.model
    masked = mask_target(s)
    masker = build_mask_generator(MaskingConfig(num_masking_patches=masked, min_block_patches=min(16, masked)), cfg.grid_size)
    masks = torch.stack([torch.from_numpy(masker(mask_rng(seed, 0, i))) for i in range(s.batch)])
    return MIMBatch(
        images=torch.randn(s.batch, 3, cfg.img_size, cfg.img_size, generator=g),
        tokenizer_images=0.1 + 0.8 * torch.rand(s.batch, 3, s.tokenizer_size, s.tokenizer_size, generator=g),
        bool_masked_pos=masks,
        indices=torch.arange(s.batch),
    )


def build_tokenizer(s: Setting, vocab: int) -> DalleTokenizer:
    return DalleTokenizer(DalleEncoder(n_hid=s.tokenizer_hidden, vocab_size=vocab), input_size=s.tokenizer_size)


def count_flops(s: Setting, mim: MIMConfig, batch: MIMBatch) -> tuple[float, float]:
    """(model forward+backward FLOPs, tokenizer forward FLOPs) of one batch, in fp32 on CPU."""
    model, tokenizer = build_mim_model(s.model, mim), build_tokenizer(s, mim.vocab_size)
    with FlopCounterMode(display=False) as tok_count:
        target = tokenizer.encode(batch.tokenizer_images)
    with FlopCounterMode(display=False) as model_count:
        model(batch.images, batch.bool_masked_pos, target).loss.backward()
    return float(model_count.get_total_flops()), float(tok_count.get_total_flops())


def run_precision(s: Setting, mim: MIMConfig, precision: str, args: argparse.Namespace) -> dict[str, float]:
    """Seconds per step (median of ``args.steps`` after ``args.warmup``) through the engine."""
    ds = read_ds_config(f"{args.ds_dir}/zero2_{precision}.json")
    ds = resolve_ds_config(ds, ScheduleConfig(micro_batch_size=s.batch), OptimConfig(), 1, 1.5e-3)
    torch.manual_seed(0)
    engine = init_engine(build_mim_model(s.model.replace(compile=args.compile), mim), OptimConfig(), ds)
    dtype = torch_dtype(precision)
    tokenizer = build_tokenizer(s, mim.vocab_size).to(engine.device, dtype)
    batch = synthetic_batch(s).to(engine.device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(engine.device)
        t0 = time.perf_counter()
        out = mim_forward(engine, batch, tokenizer, dtype)  # what the loop runs: forward, backward, step
        engine.backward(out.loss)
        engine.step()
        sync(engine.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    return {"seconds_per_step": times[len(times) // 2], "skipped_steps": float(engine.skipped_steps)}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(args: argparse.Namespace) -> tuple[float, str]:
    """(dense peak FLOP/s, device name) for MFU."""
    if args.peak_tflops:
        return args.peak_tflops * 1e12, "given"
    if not torch.cuda.is_available():
        probe = matmul_probe()
        probe(0)
        t0 = time.perf_counter()
        probe(1)
        return matmul_rate(time.perf_counter() - t0), "cpu (measured fp32 matmul)"
    name = torch.cuda.get_device_name()
    for key, tflops in PEAK_TFLOPS.items():
        if key in name:
            return tflops * 1e12, name
    raise SystemExit(f"unknown GPU {name!r}: pass --peak-tflops (dense bf16/fp16 TFLOP/s of the datasheet)")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="beit_base_patch16_224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="bf16,fp16", help="comma-separated: bf16, fp16, fp32")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="compile the block branches (model.compile)")
    p.add_argument("--peak-tflops", type=float, default=0.0)
    p.add_argument("--ds-dir", default="ds_configs")
    p.add_argument("--smoke", action="store_true", help="tiny model and tokenizer (CPU, CI)")
    p.add_argument("--local_rank", type=int, default=None)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    s = setting(args)
    precisions = args.precisions.split(",")
    if args.smoke and not torch.cuda.is_available():
        precisions = [p for p in precisions if p != "fp16"] or ["fp32"]  # DeepSpeed refuses fp16 on CPU
    mim = MIMConfig(vocab_size=512 if args.smoke else 8192, max_masked=mask_target(s))
    model_flops, tok_flops = count_flops(s, mim, synthetic_batch(s))
    peak, device = peak_flops(args)
    figures: dict[str, object] = {"device": device, "model": "smoke" if args.smoke else args.model, "batch": s.batch,
                                  "model_gflop_per_image": model_flops / s.batch / 1e9,
                                  "tokenizer_gflop_per_image": tok_flops / s.batch / 1e9, "peak_tflops": peak / 1e12}
    for precision in precisions:
        run = run_precision(s, mim, precision, args)
        step = run["seconds_per_step"]
        mfu = (model_flops + tok_flops) / step / peak
        figures[precision] = {"images_per_s": s.batch / step, "mfu": mfu, **run}
        print(f"{precision}: {s.batch / step:.1f} img/s, MFU {100 * mfu:.1f} % of {peak / 1e12:.3g} TFLOP/s ({device})")
    figures["mfu"] = figures[precisions[0]]["mfu"]
    emit(figures)


if __name__ == "__main__":
    main()
