"""The real pre-training step on one device: a DALL-E-sized tokenizer under no_grad plus the BEiT
MIM step through the DeepSpeed engine (ZeRO-2, the shipped ``ds_configs``), in bf16 and fp16;
images/s and model FLOPs utilisation (MFU).

    python bench/gpu_pretrain.py                     # GPU: BEiT-B 224², DALL-E encoder at 112², batch 64
    python bench/gpu_pretrain.py --smoke             # CPU smoke test (CI): tiny model and tokenizer, bf16

Two MFUs: ``model_mfu`` counts the model's forward + backward FLOPs, ``pipeline_mfu`` (= ``mfu``)
adds the tokenizer's forward, both per second over the device's dense peak for the precision.
FLOPs are counted once, outside the timed steps, by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions, attention; a multiply-add
is 2 FLOPs) on the plain modules without activation checkpointing, so recomputation does not
count as useful work. Peaks are datasheet dense tensor-core figures looked up by device name in
``bench/device.py`` (``--peak-tflops`` overrides; a GPU not in the table gets no MFU; on CPU the
peak is the fp32 matmul rate measured in the same run).
Weights are random: speed does not depend on them.

``--runs`` lists configurations ``precision:stage:eager|compiled:source`` (``bench/gpu_suite.sh``
runs the GPU suite's set): ZeRO ``stage`` 0 / 1 / 2 (``ds_configs/zero{stage}_*.json``),
compiled blocks (``model.compile: blocks`` where the tree has it, else the block branches), and
the batches' ``source``: ``synthetic`` (one batch already on the device: the model-only step),
``loader`` (the job's JPEG loader on ``--data``, repeated, ``--workers`` workers, pinned memory;
the step waits for its batch) or ``gpu_decode`` (``torchvision.io.decode_jpeg`` on the device,
``gpu_input.py``). Each run reports img/s, the two MFUs and peak device memory. The last line is a JSON object: ``runs`` by name, the first run of each
precision under its name (``bf16``, ...), ``mfu`` of the first run, what was ``skipped`` and why,
and whether SDPA's memory-efficient kernel takes the relative-position bias.
"""

from __future__ import annotations

import argparse
import gc
import itertools
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from device import detect
from gpu_input import DeviceDecoder, loader_batches
from harness import emit
from roofline import matmul_probe, matmul_rate
from torch.utils.flop_counter import FlopCounterMode

from beit_ds.config import ConfigError, MaskingConfig, MIMConfig, ModelConfig
from beit_ds.data.collate import MIMBatch
from beit_ds.engine.ds_setup import read_ds_config, resolve_ds_config
from beit_ds.engine.runtime import init_engine, torch_dtype
from beit_ds.masking import build_mask_generator, mask_rng
from beit_ds.models import build_mim_model, model_config
from beit_ds.recipe import OptimConfig, ScheduleConfig
from beit_ds.tasks.pretrain import mim_forward
from beit_ds.tokenizers.dalle import DalleEncoder, DalleTokenizer


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


def count_flops(s: Setting, mim: MIMConfig, batch: MIMBatch, device: str = "cpu") -> tuple[float, float]:
    """(model forward+backward FLOPs, tokenizer forward FLOPs) of one batch, in fp32 on ``device``."""
    model, tokenizer = build_mim_model(s.model, mim).to(device), build_tokenizer(s, mim.vocab_size).to(device)
    batch = batch.to(torch.device(device))
    with FlopCounterMode(display=False) as tok_count:
        target = tokenizer.encode(batch.tokenizer_images)
    with FlopCounterMode(display=False) as model_count:
        model(batch.images, batch.bool_masked_pos, target).loss.backward()
    return float(model_count.get_total_flops()), float(tok_count.get_total_flops())


@dataclass(frozen=True)
class Run:
    """One measured configuration: ``precision`` (bf16 / fp16 / fp32), ZeRO ``stage``, ``compiled``
    block branches, ``source`` of the batches (``synthetic``: one pre-made batch; ``loader``: the
    job's JPEG loader; ``gpu_decode``: JPEGs decoded on the device, ``gpu_input.py``)."""

    precision: str
    stage: int = 2
    compiled: bool = False
    source: str = "synthetic"

    @property
    def name(self) -> str:
        return f"{self.precision}_zero{self.stage}_{'compiled' if self.compiled else 'eager'}_{self.source}"


def parse_runs(text: str) -> list[Run]:
    """``precision:stage:eager|compiled:source`` items, comma-separated (missing fields: defaults)."""
    runs = []
    for item in filter(None, text.split(",")):
        p, *rest = item.split(":")
        stage, mode, source = (rest + ["2", "eager", "synthetic"][len(rest):])[:3]
        runs.append(Run(p, int(stage), mode == "compiled", source))
    return runs


def ds_file(run: Run, ds_dir: str) -> str:
    suffix = "fp32_cpu" if run.precision == "fp32" else run.precision
    return f"{ds_dir}/zero{run.stage}_{suffix}.json"


def batches(run: Run, s: Setting, args: argparse.Namespace, device: torch.device) -> Iterator[MIMBatch]:
    """The batches ``run`` trains on (on ``device`` for ``synthetic`` and ``gpu_decode``)."""
    if run.source == "synthetic":
        return itertools.repeat(synthetic_batch(s).to(device))
    if not args.data:
        raise SystemExit(f"{run.name}: needs --data (a JPEG tar archive)")
    if run.source == "loader":
        return loader_batches(Path(args.data), s.model, s.tokenizer_size, s.batch, args.workers, args.data_repeats)
    return DeviceDecoder(Path(args.data), s.model.img_size, s.tokenizer_size, synthetic_batch(s), device)


def run_one(s: Setting, mim: MIMConfig, run: Run, args: argparse.Namespace) -> dict[str, float | None]:
    """Seconds per step (median of ``args.steps`` after ``args.warmup``) through the engine,
    the batch included (for ``loader``, waiting for it); peak device memory in GiB (None on CPU)."""
    ds = read_ds_config(ds_file(run, args.ds_dir))
    ds = resolve_ds_config(ds, ScheduleConfig(micro_batch_size=s.batch), OptimConfig(), 1, 1.5e-3)
    torch.manual_seed(0)
    engine = init_engine(build_mim_model(compiled(s.model, run.compiled), mim), OptimConfig(), ds)
    dtype = torch_dtype(run.precision)
    tokenizer = build_tokenizer(s, mim.vocab_size).to(engine.device, dtype)
    source = batches(run, s, args, engine.device)
    if engine.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(engine.device)
    times = []
    for i in range(args.warmup + args.steps):
        sync(engine.device)
        t0 = time.perf_counter()
        out = mim_forward(engine, next(source), tokenizer, dtype)  # what the loop runs: forward, backward, step
        engine.backward(out.loss)
        engine.step()
        sync(engine.device)
        if i >= args.warmup:
            times.append(time.perf_counter() - t0)
    times.sort()
    peak = torch.cuda.max_memory_allocated(engine.device) / 2**30 if engine.device.type == "cuda" else None
    skipped = float(engine.skipped_steps)
    del engine, source
    gc.collect()
    return {"seconds_per_step": times[len(times) // 2], "skipped_steps": skipped, "peak_memory_gib": peak}


def compiled(cfg: ModelConfig, on: bool) -> ModelConfig:
    """``cfg`` with each whole block compiled (``model.compile: blocks``), or its branches where
    this tree does not know ``blocks`` yet; unchanged when ``on`` is False."""
    if not on:
        return cfg
    try:
        return cfg.replace(compile="blocks")
    except ConfigError:
        return cfg.replace(compile=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_flops(given_tflops: float | None = None) -> tuple[float | None, str]:
    """(dense peak FLOP/s, device name) for MFU: ``given_tflops``, else the GPU's datasheet figure
    (``bench/device.py``; None for a GPU not in its table), else the CPU's measured fp32 matmul rate."""
    device = detect(given_tflops or None)
    if device.kind == "cpu" and not given_tflops:
        probe = matmul_probe()
        probe(0)
        t0 = time.perf_counter()
        probe(1)
        return matmul_rate(time.perf_counter() - t0), "cpu (measured fp32 matmul)"
    return (device.peak_tflops * 1e12 if device.peak_tflops else None), device.name


def rates(batch: int, seconds_per_step: float, flops: tuple[float, float], peak: float | None) -> dict[str, float | None]:
    """img/s, ``model_mfu`` (model FLOPs), ``pipeline_mfu`` = ``mfu`` (+ the tokenizer's) of a
    step of ``batch`` images; ``flops``: (model, tokenizer) FLOPs of that batch; None without a peak."""
    model, tokenizer = flops
    mfu = (model + tokenizer) / seconds_per_step / peak if peak else None
    return {"images_per_s": batch / seconds_per_step, "model_mfu": model / seconds_per_step / peak if peak else None,
            "pipeline_mfu": mfu, "mfu": mfu}


def efficient_sdpa_with_bias(s: Setting) -> str:
    """Whether SDPA's memory-efficient kernel runs BEiT's attention (a learnable relative-position
    bias as ``attn_mask``, its gradient included) on this GPU in bf16: "yes", or why not."""
    if not torch.cuda.is_available():
        return "no GPU"
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from beit_ds.models.attention import Attention

    t, d = s.model.num_patches + 1, s.model.embed_dim
    attn = Attention(d, s.model.num_heads, grid=s.model.grid_size).cuda().bfloat16()
    x = torch.randn(2, t, d, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_kernel(SDPBackend.EFFICIENT_ATTENTION):
            attn(x).sum().backward()
    except RuntimeError as err:
        return f"no: {str(err).splitlines()[0][:200]}"
    table = attn.relative_position_bias_table
    ok = table is not None and table.grad is not None
    return "yes" if ok else "no: no gradient for the bias table"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="beit_base_patch16_224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--precisions", default="bf16,fp16", help="comma-separated: bf16, fp16, fp32 (ZeRO-2, synthetic)")
    p.add_argument("--runs", default="", help="precision:stage:eager|compiled:synthetic|loader|gpu_decode, ... "
                   "(replaces --precisions)")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="--precisions runs with compiled block branches")
    p.add_argument("--data", default="", help="JPEG tar archive for the loader / gpu_decode runs")
    p.add_argument("--data-repeats", type=int, default=20, help="data.repeats of the archive")
    p.add_argument("--workers", type=int, default=8, help="loader workers of the loader runs")
    p.add_argument("--peak-tflops", type=float, default=0.0, help="dense peak of the device (default: bench/device.py)")
    p.add_argument("--ds-dir", default="ds_configs")
    p.add_argument("--smoke", action="store_true", help="tiny model and tokenizer (CPU, CI)")
    p.add_argument("--local_rank", type=int, default=None)
    return p.parse_args()


def runs_of(args: argparse.Namespace) -> tuple[list[Run], dict[str, str]]:
    """The runs to measure and those left out (name -> why): DeepSpeed refuses fp16 on a CPU,
    and compiling takes minutes on one (a smoke run)."""
    mode = "compiled" if args.compile else "eager"
    runs = parse_runs(args.runs or ",".join(f"{p}:2:{mode}" for p in args.precisions.split(",")))
    skipped: dict[str, str] = {}
    if not torch.cuda.is_available():
        for r in runs:
            if r.precision == "fp16":
                skipped[r.name] = "DeepSpeed refuses fp16 on a CPU"
            elif r.compiled and args.smoke:
                skipped[r.name] = "smoke on a CPU: compiling takes minutes"
    kept = [r for r in runs if r.name not in skipped]
    return kept or [Run("fp32")], skipped


def main() -> None:
    args = parse_args()
    s = setting(args)
    runs, skipped = runs_of(args)
    mim = MIMConfig(vocab_size=512 if args.smoke else 8192, max_masked=mask_target(s))
    flops = count_flops(s, mim, synthetic_batch(s), "cuda" if torch.cuda.is_available() else "cpu")
    peak, device = peak_flops(args.peak_tflops)
    figures: dict[str, object] = {"device": device, "model": "smoke" if args.smoke else args.model, "batch": s.batch,
                                  "model_gflop_per_image": flops[0] / s.batch / 1e9,
                                  "tokenizer_gflop_per_image": flops[1] / s.batch / 1e9,
                                  "peak_tflops": peak / 1e12 if peak else None,
                                  "sdpa_efficient_with_bias": efficient_sdpa_with_bias(s), "skipped": skipped}
    results: dict[str, dict[str, float | None]] = {}
    for run in runs:
        figures_of_run = run_one(s, mim, run, args)
        step = float(figures_of_run["seconds_per_step"] or 0.0)
        results[run.name] = {**rates(s.batch, step, flops, peak), **figures_of_run}
        figures.setdefault(run.precision, results[run.name])  # the first run of each precision
        mfu = results[run.name]["mfu"]
        shown = "—" if mfu is None else f"{100 * mfu:.1f} %"
        print(f"{run.name}: {s.batch / step:.1f} img/s, pipeline MFU {shown} ({device})", flush=True)
    figures["runs"] = results
    figures["mfu"] = results[runs[0].name]["mfu"]
    emit(figures)


if __name__ == "__main__":
    main()
