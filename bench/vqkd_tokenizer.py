"""Images/s and GFLOP per image of BEiT v2's VQ-KD tokenizer encode (a ViT-B/16 encoder on the
224² view, the task layer to 32-d codes, the cosine look-up in 8192 codes) against our
DALL-E-compatible encoder on BEiT's 112² view, in the same run. Tokenisation sits on the critical
path of pre-training (the paper's figures: ViT-B/16 ≈ 35 GFLOP, DALL-E ≈ 52 GFLOP per image).

    python bench/vqkd_tokenizer.py                       # CPU, fp32, batch 4
    python bench/vqkd_tokenizer.py --threads 1 --clock thread
    python bench/vqkd_tokenizer.py --smoke               # tiny models: checks that it runs (tests)

FLOPs are counted once, outside the timed calls, by ``torch.utils.flop_counter.FlopCounterMode``
(matmuls, convolutions, attention; a multiply-add is 2 FLOPs; on the CPU it does not see the fused
attention kernel, 4 % of ViT-B/16's FLOPs), and for VQ-KD also analytically (``roofline.forward_flops``
of the encoder + task layer + code look-up, attention products included). Weights are random (speed
does not depend on them). The last line is a JSON object; ``ratio`` is VQ-KD img/s ÷ DALL-E img/s.
"""

from __future__ import annotations

import torch
from harness import emit, median, setup_threads, time_interleaved, timing_parser
from roofline import forward_flops
from torch.utils.flop_counter import FlopCounterMode

from beit_ds.config import VQKDConfig
from beit_ds.tokenizers.dalle import DalleEncoder, DalleTokenizer
from beit_ds.tokenizers.vqkd import VQKD, transformer_config

SMOKE = VQKDConfig(patch_size=4, embed_dim=32, depth=1, num_heads=2, decoder_depth=1, decoder_embed_dim=32,
                   decoder_num_heads=2, decoder_out_dim=16, codebook_size=64, code_dim=8, kmeans_init=False)


def analytic_gflop(cfg: VQKDConfig, size: int) -> float:
    """Encoder forward + task layer (D->D->d) + cosine look-up (N x d x K), GFLOP per image."""
    n = cfg.grid(size) ** 2
    encoder = forward_flops(transformer_config(cfg, size, decoder=False), 0, 0)
    task = 2 * n * cfg.embed_dim * (cfg.embed_dim + cfg.code_dim)
    lookup = 2 * n * cfg.code_dim * cfg.codebook_size
    return (encoder + task + lookup) / 1e9


def counted_gflop(encode: torch.nn.Module, images: torch.Tensor) -> float:
    with FlopCounterMode(display=False) as count:
        encode(images)
    return count.get_total_flops() / 1e9 / images.shape[0]


class Encode(torch.nn.Module):
    """``tokenizer.encode`` as a module call (for the FLOP counter and the timer alike)."""

    def __init__(self, tokenizer: torch.nn.Module) -> None:
        super().__init__()
        self.tokenizer = tokenizer

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tokenizer.encode(images)  # type: ignore[operator]


def main() -> None:
    p = timing_parser(__doc__.split("\n\n")[0], warmup=1, repeats=3)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--smoke", action="store_true", help="tiny models, one timed call: checks that it runs")
    args = p.parse_args()
    setup_threads(args)
    torch.manual_seed(0)
    cfg, size, dalle_size = (SMOKE, 32, 16) if args.smoke else (VQKDConfig(), 224, 112)
    vqkd = Encode(VQKD(cfg, size).eval())
    dalle = Encode(DalleTokenizer(DalleEncoder(n_hid=16 if args.smoke else 256), input_size=dalle_size))
    images = torch.rand(args.batch, 3, size, size)
    views = 0.1 + 0.8 * torch.rand(args.batch, 3, dalle_size, dalle_size)  # map_pixels range
    result: dict[str, object] = {
        "vqkd_gflop": round(counted_gflop(vqkd, images[:1]), 4),
        "vqkd_gflop_analytic": round(analytic_gflop(cfg, size), 4),
        "dalle_gflop": round(counted_gflop(dalle, views[:1]), 4),
    }
    candidates = {"vqkd": lambda _: vqkd(images), "dalle": lambda _: dalle(views)}
    with torch.no_grad():
        times = time_interleaved(candidates, 0 if args.smoke else args.warmup, 1 if args.smoke else args.repeats,
                                 args.clock)
    rates = {name: args.batch / median(ts) for name, ts in times.items()}
    result.update({f"{name}_img_s": round(rate, 3) for name, rate in rates.items()})
    result.update(ratio=round(rates["vqkd"] / rates["dalle"], 3), batch=args.batch, vqkd_size=size,
                  dalle_size=dalle_size, clock=args.clock, threads=torch.get_num_threads(), torch=torch.__version__)
    emit(result)


if __name__ == "__main__":
    main()
