"""Images/s of our DALL-E-compatible encoder against OpenAI's ``dall_e`` reference on the same
batch in the same run. Tokenisation sits on the critical path of pre-training: the
DALL-E encoder costs ≈ 52 GFLOP per 112² view, half a BEiT-B training step.

    python bench/tokenizer.py                      # CPU, fp32, 8 views of 112²
    python bench/tokenizer.py --bf16 --compile     # also bf16 and tokenizer.compile (ratio_bf16, ratio_compiled)
    python bench/tokenizer.py --dtypes bfloat16,float16   # the cost of each tokenizer.dtype choice
    python bench/tokenizer.py --threads 1 --clock thread

``--dtypes`` times our encoder in each precision (``ours_<dtype>_img_s``, ``ratio_<dtype>``)
and reports how many token ids stay equal to fp32 (``<dtype>_token_agreement``), both for the
random-weight DALL-E encoder here and for the shipped demo dVAE, a trained tokenizer, on 512 crops
of the photographs (``dvae_<dtype>_token_agreement``, and ``dvae_fp32_on_bf16_view_token_agreement``
for an fp32 tokenizer fed a bf16-rounded view, as when the step cast both views to the run's dtype). ``tokenizer.dtype`` defaults
to float32 because only it keeps >= 99.5 % of the targets.

Both run under ``torch.no_grad`` with the same random weights (saved and loaded the way
OpenAI's ``encoder.pkl`` is); parity (max |Δlogit|, equal token ids) is checked in fp32 before
timing. Candidates are timed in interleaved rounds (``harness.time_interleaved``) and compared by
medians. ``--threads 1 --clock thread`` counts CPU time, which other processes on a shared machine
barely disturb. The last line is a JSON object; ``ratio`` is ours img/s ÷ reference img/s.
"""

from __future__ import annotations

import argparse
import copy
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
from dvae_demo import demo_photos, random_crops
from harness import check_clock, emit, median, time_interleaved

from beit_ds.config import TokenizerConfig
from beit_ds.tokenizers import build_tokenizer, load_dalle_tokenizer, map_pixels


def photo_batch(n: int, size: int) -> torch.Tensor:
    """``[n, 3, size, size]`` map_pixels'ed squares of the demo photographs (cycled)."""
    photos = demo_photos(short_side=size)
    squares = [photos[i % len(photos)][:, :size, :size] for i in range(n)]
    return map_pixels(torch.stack(squares))


def dvae_agreement(dtypes: list[str]) -> dict[str, float]:
    """Token agreement with fp32 of the shipped demo dVAE on 512 32² crops of the photographs."""
    crops = random_crops(demo_photos(short_side=64), 512, 32, torch.Generator().manual_seed(0))

    def tokenizer(dtype: str) -> torch.nn.Module:
        return build_tokenizer(
            TokenizerConfig(name="dvae", path="package:demo_dvae.safetensors", image_size=32, dtype=dtype)
        )

    with torch.no_grad():
        fp32 = tokenizer("float32")
        reference = fp32.encode(crops)
        out = {"dvae_fp32_on_bf16_view_token_agreement": (fp32.encode(crops.bfloat16().float()) == reference)}
        out |= {f"dvae_{d}_token_agreement": tokenizer(d).encode(crops) == reference for d in dtypes}
    return {k: round(v.float().mean().item(), 4) for k, v in out.items()}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=112)
    p.add_argument("--warmup", type=int, default=1, help="untimed batches per candidate")
    p.add_argument("--repeats", type=int, default=5, help="timed batches per candidate")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--clock", default="wall", help="wall, or thread (CPU time; needs --threads 1)")
    p.add_argument("--bf16", action="store_true", help="also time our encoder in bfloat16")
    p.add_argument("--dtypes", default="", help="comma list of tokenizer dtypes to time and compare to fp32")
    p.add_argument("--compile", action="store_true", help="also time torch.compile of our encoder")
    return p.parse_args()


def encoders(size: int) -> tuple[torch.nn.Module, torch.nn.Module]:
    """OpenAI's reference encoder (seeded random weights) and ours loaded from it as ``encoder.pkl``."""
    import dall_e  # the reference: a test/bench dependency only (dev extra)

    torch.manual_seed(0)
    reference = dall_e.Encoder().eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "encoder.pkl"
        torch.save(reference, path)  # the way OpenAI distributes encoder.pkl
        return reference, load_dalle_tokenizer(path, input_size=size)


def rates(times: dict[str, list[float]], batch: int) -> dict[str, float]:
    """Images/s of every candidate and the ``ratio<suffix>`` of each of ours to the reference."""
    out = {f"{name}_img_s": round(batch / median(ts), 3) for name, ts in times.items()}
    for name in times:
        if name != "reference":
            suffix = name.removeprefix("ours")
            out[f"ratio{suffix}"] = round(median(times["reference"]) / median(times[name]), 3)
    return out


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    check_clock(args.clock, torch.get_num_threads())
    reference, ours = encoders(args.size)
    images = photo_batch(args.batch, args.size)
    with torch.no_grad():
        expected = reference(images)
    logits = ours.logits(images)
    result: dict[str, object] = {
        "max_abs_logit_diff": (logits - expected).abs().max().item(),
        "tokens_equal": bool(torch.equal(logits.argmax(1), expected.argmax(1))),
    }
    candidates: dict[str, Callable[[int], object]] = {
        "reference": lambda _: reference(images).argmax(1),
        "ours": lambda _: ours.encode(images),
    }
    if args.bf16:
        bf16 = copy.deepcopy(ours).to(torch.bfloat16)
        candidates["ours_bf16"] = lambda _: bf16.encode(images)
        result["bf16_token_agreement"] = (bf16.encode(images) == logits.argmax(1)).float().mean().item()
    dtypes = [d for d in args.dtypes.split(",") if d]
    for name in dtypes:
        cast = copy.deepcopy(ours).to(getattr(torch, name))
        candidates[f"ours_{name}"] = lambda _, t=cast: t.encode(images)
        result[f"{name}_token_agreement"] = (cast.encode(images) == logits.argmax(1)).float().mean().item()
    if dtypes:
        result.update(dvae_agreement(dtypes))
    if args.compile:  # tokenizer.compile: true
        compiled = copy.deepcopy(ours)
        compiled.compile_encoder()
        result["compiled_max_abs_logit_diff"] = (compiled.logits(images) - expected).abs().max().item()
        candidates["ours_compiled"] = lambda _: compiled.encode(images)
    with torch.no_grad():
        times = time_interleaved(candidates, args.warmup, args.repeats, args.clock)
    result.update(rates(times, args.batch))
    result.update(
        batch=args.batch,
        size=args.size,
        clock=args.clock,
        threads=torch.get_num_threads(),
        torch=torch.__version__,
    )
    emit(result)


if __name__ == "__main__":
    main()
