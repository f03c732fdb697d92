"""Loader throughput per core: decode + BEiT two-view transform, ours vs the seed's reference pipeline.

The reference is plain torchvision / PIL in the seed's order: PIL decode, ColorJitter(0.4, 0.4,
0.4) on the decoded image, horizontal flip, one random-resized crop resized bicubic to 224² and
Lanczos to 112², ToTensor + Normalize (and DALL-E ``map_pixels`` for the 112² view). Ours is
``beit_ds.data.transforms.TwoViewTransform`` with the default ``TransformConfig``. Both run on the
same JPEGs (read into memory first, so disk is not timed), in this process, one thread each, taking
turns every 16 images; a rate is images per CPU-second of this process (median over rounds), so
other load on the machine matters less, and ``ratio`` is the median of the per-round ratios. ``decode_only`` is PIL's full-size decode to RGB: the ceiling of any
pipeline that decodes at full size. ``psnr_*`` compare our views with the reference's for the same
crop without flip and jitter. The last line printed is a JSON object with every figure.

    python bench/loader.py [--archive ../shared/datasets/imagenet-sample-1k/imagenet_sample_334_fullsize.tar]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms as T
import torchvision.transforms.functional as TF
from PIL import Image

from beit_ds.config import TransformConfig
from beit_ds.data.datasets import transform_rng
from beit_ds.data.decode import open_image
from beit_ds.data.records import ByteReader
from beit_ds.data.shards import tar_archive_records
from beit_ds.data.transforms import TwoViewTransform, random_resized_crop

DEFAULT_ARCHIVE = (
    Path(__file__).resolve().parents[2]
    / "shared/datasets/imagenet-sample-1k/imagenet_sample_334_fullsize.tar"
)
MAX_PIXELS = 89_478_485


class ReferenceTwoView:
    """The seed's pipeline, built from torchvision / PIL parts in the seed's order."""

    def __init__(self) -> None:
        self.jitter = T.ColorJitter(0.4, 0.4, 0.4)
        self.flip = T.RandomHorizontalFlip()
        self.patch = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
        self.to_tensor = T.ToTensor()

    def __call__(self, data: bytes) -> tuple[torch.Tensor, torch.Tensor]:
        image = self.flip(self.jitter(Image.open(io.BytesIO(data)).convert("RGB")))
        i, j, h, w = T.RandomResizedCrop.get_params(image, (0.08, 1.0), (3 / 4, 4 / 3))
        big = TF.resized_crop(image, i, j, h, w, [224, 224], T.InterpolationMode.BICUBIC)
        small = TF.resized_crop(image, i, j, h, w, [112, 112], T.InterpolationMode.LANCZOS)
        return self.patch(big), self.to_tensor(small) * 0.8 + 0.1


def _time_interleaved(
    pipelines: dict, blobs: list[bytes], rounds: int, chunk: int = 16
) -> dict[str, list[float]]:
    """Images per CPU-second of each pipeline in each round; the pipelines take turns every
    ``chunk`` images so that they see the same machine load."""
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for _ in range(rounds):
        spent = dict.fromkeys(pipelines, 0.0)
        for at in range(0, len(blobs), chunk):
            for name, fn in pipelines.items():
                start = time.process_time()
                for i in range(at, min(at + chunk, len(blobs))):
                    fn(i, blobs[i])
                spent[name] += time.process_time() - start
        for name in pipelines:
            rates[name].append(len(blobs) / spent[name])
    return rates


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))


def _psnr(mse: float) -> float:
    """dB for 8-bit pixels; identical images are reported as 99 dB."""
    return min(99.0, 10 * math.log10(255.0**2 / max(mse, 1e-12)))


def _quality(blobs: list[bytes], ours: TwoViewTransform) -> dict[str, float]:
    """PSNR (dB) of our views against the reference, same crop, no flip or jitter: over all images
    (from the mean squared error) and the 5th percentile of the per-image values."""
    patch, token = [], []
    for i, data in enumerate(blobs):
        enc = open_image(data, str(i), MAX_PIXELS)
        crop = random_resized_crop(enc.size, (0.08, 1.0), (3 / 4, 4 / 3), np.random.default_rng(i))
        box = (crop.left, crop.top, crop.left + crop.width, crop.top + crop.height)
        full = Image.open(io.BytesIO(data)).convert("RGB")
        ref = [
            np.asarray(full.resize((s, s), f, box=box))
            for s, f in ((224, Image.BICUBIC), (112, Image.LANCZOS))
        ]
        views = ours.make(open_image(data, str(i), MAX_PIXELS), crop, True, False, None)
        mine = [(v * 255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy() for v in views]
        patch.append(_mse(ref[0], mine[0]))
        token.append(_mse(ref[1], mine[1]))
    return {
        "psnr_patch_db": _psnr(float(np.mean(patch))),
        "psnr_patch_p5_db": float(np.percentile([_psnr(m) for m in patch], 5)),
        "psnr_tokenizer_db": _psnr(float(np.mean(token))),
        "psnr_tokenizer_p5_db": float(np.percentile([_psnr(m) for m in token], 5)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE, help="tar of JPEGs")
    parser.add_argument("--rounds", type=int, default=5, help="timing rounds; medians are reported")
    parser.add_argument("--limit", type=int, default=0, help="use only the first N images (0: all)")
    parser.add_argument(
        "--second-interpolation", default="lanczos", help="our tokenizer view's filter (lanczos: the seed's)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    records = tar_archive_records(args.archive, "")
    read = ByteReader(records)
    blobs = [read(i) for i in range(len(records) if args.limit <= 0 else min(args.limit, len(records)))]
    reference = ReferenceTwoView()
    ours = TwoViewTransform(TransformConfig(second_interpolation=args.second_interpolation))
    pipelines = {
        "reference": lambda i, data: reference(data),
        "ours": lambda i, data: ours(open_image(data, str(i), MAX_PIXELS), transform_rng(0, 0, i)),
        "decode_only": lambda i, data: Image.open(io.BytesIO(data)).convert("RGB"),
    }
    _time_interleaved(pipelines, blobs[:16], 1)  # warm-up: imports, allocator, page cache
    rates = _time_interleaved(pipelines, blobs, args.rounds)
    best = {name: float(np.median(r)) for name, r in rates.items()}
    ratios = [o / r for o, r in zip(rates["ours"], rates["reference"])]
    for name, r in rates.items():
        print(f"{name:12s} {best[name]:7.1f} img/s per core  (rounds: {', '.join(f'{x:.1f}' for x in r)})")
    print(f"ratio per round: {', '.join(f'{x:.2f}' for x in ratios)}")
    result = {
        "images": len(blobs),
        "archive": str(args.archive),
        "reference_img_per_s": round(best["reference"], 1),
        "ours_img_per_s": round(best["ours"], 1),
        "decode_only_img_per_s": round(best["decode_only"], 1),
        "ratio": round(float(np.median(ratios)), 2),
        "second_interpolation": args.second_interpolation,
        **{k: round(v, 1) for k, v in _quality(blobs, ours).items()},
        "threads": 1,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "pillow": Image.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
