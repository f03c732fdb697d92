"""Train a small dVAE (seed App. C) on the bundled demo photographs on CPU and report how well it
reconstructs: hard-token reconstruction MSE against the mean-image MSE, and codebook usage.

This is the measurement behind the CPU demo recipe of ``launch/train_tokenizer.py``;
it uses a minimal Adam loop (cosine lr), not the DeepSpeed engine, so that it runs anywhere in
minutes. Training images are random square crops (1/8 to all of the shorter side) of skimage's
photographs; the evaluation uses 512 other crops drawn with a fixed seed.

    python bench/dvae_demo.py                     # 32² view, downsample 4 -> 8×8 tokens, K=512, 600 steps
    python bench/dvae_demo.py --diversity 0       # the collapse the usage term prevents
    python bench/dvae_demo.py --size 64 --downsample 8

The last line is a JSON object with the figures.
"""

from __future__ import annotations

import argparse
import logging
import time

import numpy as np
import skimage.data
import torch
import torch.nn.functional as F
from harness import emit

from beit_ds.config import DVAEConfig
from beit_ds.tokenizers.dvae import DiscreteVAE, code_usage, dvae_schedule

RGB = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "hubble_deep_field", "retina")
GRAY = ("camera", "coins", "moon", "grass", "gravel", "brick", "clock")
log = logging.getLogger("dvae_demo")


def demo_photos(short_side: int = 256) -> list[torch.Tensor]:
    """skimage's CC0 photographs as float ``[3, H, W]`` in [0, 1], shorter side ``short_side``."""
    arrays = [getattr(skimage.data, n)() for n in RGB] + list(skimage.data.stereo_motorcycle()[:2])
    arrays += [np.repeat(getattr(skimage.data, n)()[..., None], 3, axis=2) for n in GRAY]
    photos = []
    for a in arrays:
        x = torch.from_numpy(np.ascontiguousarray(a[..., :3])).permute(2, 0, 1).float()[None] / 255.0
        scale = short_side / min(x.shape[-2:])
        size = (round(x.shape[-2] * scale), round(x.shape[-1] * scale))
        photos.append(F.interpolate(x, size=size, mode="bilinear", antialias=True)[0].clamp(0, 1))
    return photos


def random_crops(photos: list[torch.Tensor], n: int, size: int, gen: torch.Generator) -> torch.Tensor:
    """``n`` random-resized crops ``[n, 3, size, size]``: side 1/8 to 1 of the shorter side."""
    out = []
    for _ in range(n):
        img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
        h, w = img.shape[-2:]
        side = int(min(h, w) * (0.125 + 0.875 * float(torch.rand(1, generator=gen))))
        top = int(torch.randint(h - side + 1, (1,), generator=gen))
        left = int(torch.randint(w - side + 1, (1,), generator=gen))
        crop = img[None, :, top : top + side, left : left + side]
        out.append(F.interpolate(crop, size=(size, size), mode="bilinear", antialias=True)[0])
    return torch.stack(out).clamp(0, 1)


@torch.no_grad()
def evaluate(model: DiscreteVAE, images: torch.Tensor) -> dict[str, float]:
    """Hard-token reconstruction MSE, mean-image MSE and token usage on ``images``."""
    tokens = model.encode(images)
    recon = model.decode(tokens)
    perplexity, usage = code_usage(tokens, model.vocab_size)
    return {
        "recon_mse": F.mse_loss(recon, images).item(),
        "mean_image_mse": F.mse_loss(images.mean(0, keepdim=True).expand_as(images), images).item(),
        "eval_perplexity": perplexity.item(),
        "eval_usage": usage.item(),
    }


def train(cfg: DVAEConfig, args: argparse.Namespace) -> dict[str, float]:
    photos = demo_photos()
    gen = torch.Generator().manual_seed(args.seed)
    eval_images = random_crops(photos, 512, args.size, torch.Generator().manual_seed(12345))
    torch.manual_seed(args.seed)
    model = DiscreteVAE(cfg, input_size=args.size)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    start = time.perf_counter()
    for step in range(args.steps):
        lr = args.lr * 0.5 * (1 + np.cos(np.pi * step / args.steps))
        for group in opt.param_groups:
            group["lr"] = lr
        batch = random_crops(photos, args.batch, args.size, gen)
        schedule = dvae_schedule(step, cfg)
        out = model(batch, **schedule, generator=gen)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step % args.log_every == 0 or step == args.steps - 1:
            m = {k: round(v.item(), 4) for k, v in out.metrics().items()}
            log.info(
                "step %d %.0fs tau %.3f %s", step, time.perf_counter() - start, schedule["temperature"], m
            )
    model.eval()
    result = evaluate(model, eval_images)
    result.update(train_seconds=time.perf_counter() - start, steps=args.steps)
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--downsample", type=int, default=4)
    p.add_argument("--codebook", type=int, default=512)
    p.add_argument("--codebook-dim", type=int, default=64)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--res-blocks", type=int, default=1)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--kl", type=float, default=0.0)
    p.add_argument("--diversity", type=float, default=0.1)
    p.add_argument("--tau-end", type=float, default=0.0625)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log-every", type=int, default=100)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    cfg = DVAEConfig(
        codebook_size=args.codebook,
        codebook_dim=args.codebook_dim,
        hidden_dim=args.hidden,
        num_res_blocks=args.res_blocks,
        downsample=args.downsample,
        temperature_end=args.tau_end,
        temperature_steps=args.steps,
        kl_weight=args.kl,
        prior_warmup_steps=max(1, args.steps // 5),
        diversity_weight=args.diversity,
    )
    result = train(cfg, args)
    result.update(vars(args))
    emit({k: (round(v, 5) if isinstance(v, float) else v) for k, v in result.items()})


if __name__ == "__main__":
    main()
