"""Time one BEiT-B masked-image-modeling training step (forward, backward, AdamW) for beit_ds,
Hugging Face ``BeitForMaskedImageModeling`` and timm's ``Beit`` with a masked LM head, in the
same run on the same masked batch, and relate it to the CPU's fp32 matmul roofline.

    python bench/mim_step.py                 # eager, batch 8, 224², fp32, torch's threads, wall clock
    python bench/mim_step.py --compile       # + our compile_blocks() model (compile time apart)
    python bench/mim_step.py --threads 1 --clock thread --compile   # robust on a shared machine

All three models: 768 wide, 12 blocks, 12 heads, shared relative position bias, LayerScale 0.1,
no absolute positions, drop path 0.1 (``--drop-path``), vocabulary 8192, the same masked batch,
``torch.optim.AdamW()`` defaults; each round seeds torch alike, so drop path draws alike.
Prints the median step times, ours ÷ fastest peer and the fraction of the matmul roofline
(``roofline.py`` documents the FLOP count); the last line is one JSON object.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from harness import MIMBatch, emit, median, mim_batch, setup_threads, time_interleaved, timing_parser
from roofline import matmul_probe, matmul_rate, train_step_flops
from torch import nn

from beit_ds.config import MaskingConfig, MIMConfig, ModelConfig
from beit_ds.masking import masking_target
from beit_ds.models import build_mim_model, model_config


class TimmMIM(nn.Module):
    """timm's ``Beit`` backbone + [MASK] substitution + LM head (its final LayerNorm, then a
    linear layer) on the masked positions only; ``forward`` returns the cross-entropy loss."""

    def __init__(self, cfg: ModelConfig, vocab: int) -> None:
        super().__init__()
        import timm

        self.backbone = timm.create_model(
            "beit_base_patch16_224",
            pretrained=False,
            num_classes=0,
            global_pool="token",  # keeps the final LayerNorm (``avg`` would swap it for fc_norm)
            use_abs_pos_emb=False,
            use_rel_pos_bias=False,
            use_shared_rel_pos_bias=True,
            init_values=cfg.layer_scale_init,
            drop_path_rate=cfg.drop_path_rate,
        )
        self.mask_token = nn.Parameter(torch.zeros(1, 1, cfg.embed_dim))
        self.lm_head = nn.Linear(cfg.embed_dim, vocab)

    def forward(self, images: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        bb = self.backbone
        x = bb.patch_embed(images)
        x = torch.where(mask.unsqueeze(-1), self.mask_token, x)
        x = torch.cat((bb.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        bias = bb.rel_pos_bias()
        for block in bb.blocks:
            x = block(x, shared_rel_pos_bias=bias)
        x = bb.norm(x)[:, 1:]
        return F.cross_entropy(self.lm_head(x[mask]), target[mask])


def build_hf(cfg: ModelConfig, vocab: int) -> nn.Module:
    """Hugging Face ``BeitForMaskedImageModeling`` with the same architecture (its LM head runs on
    every position, as Hugging Face implements it)."""
    from transformers import BeitConfig, BeitForMaskedImageModeling

    hf_cfg = BeitConfig(
        vocab_size=vocab,
        image_size=cfg.img_size,
        patch_size=cfg.patch_size,
        hidden_size=cfg.embed_dim,
        num_hidden_layers=cfg.depth,
        num_attention_heads=cfg.num_heads,
        intermediate_size=int(cfg.embed_dim * cfg.mlp_ratio),
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        drop_path_rate=cfg.drop_path_rate,
        layer_scale_init_value=cfg.layer_scale_init,
        layer_norm_eps=cfg.norm_eps,
        use_mask_token=True,
        use_absolute_position_embeddings=False,
        use_relative_position_bias=False,
        use_shared_relative_position_bias=True,
    )
    hf_cfg._attn_implementation = "sdpa"
    return BeitForMaskedImageModeling(hf_cfg)


def ours_mim(cfg: ModelConfig, vocab: int) -> MIMConfig:
    """Our MIM head as a pre-training recipe builds it: the LM head on ``max_masked`` rows per image
    (the masking target the harness's masks use, 75 of 196 by default)."""
    return MIMConfig(vocab_size=vocab, max_masked=masking_target(MaskingConfig(), cfg.grid_size))


def loss_functions(cfg: ModelConfig, vocab: int) -> dict[str, tuple[nn.Module, Callable]]:
    """name -> (model, loss(model, batch)) for the three implementations."""
    ours = build_mim_model(cfg, ours_mim(cfg, vocab))
    hf = build_hf(cfg, vocab)
    return {
        "ours": (ours, lambda m, b: m(b.images, b.mask, b.target).loss),
        "timm": (TimmMIM(cfg, vocab), lambda m, b: m(b.images, b.mask, b.target)),
        "hf": (
            hf,
            lambda m, b: m(pixel_values=b.images, bool_masked_pos=b.mask, labels=b.target[b.mask]).loss,
        ),
    }


def train_step(model: nn.Module, loss_fn: Callable, batch: MIMBatch, **adamw: bool) -> Callable[[int], None]:
    """A closure running one seeded training step of ``model`` with its own AdamW."""
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), **adamw)

    def step(seed: int) -> None:
        torch.manual_seed(seed)  # the same drop-path draws for every model in a round
        loss = loss_fn(model, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def compile_candidate(cfg: ModelConfig, vocab: int, batch: MIMBatch) -> tuple[Callable[[int], None], float]:
    """Our model with ``compile_blocks()`` and the seconds its first (compiling) step took."""
    model = build_mim_model(cfg, ours_mim(cfg, vocab))
    model.compile_blocks()
    step = train_step(model, lambda m, b: m(b.images, b.mask, b.target).loss, batch)
    start = time.perf_counter()
    step(0)
    return step, time.perf_counter() - start


def parse_args() -> argparse.Namespace:
    p = timing_parser(__doc__.split("\n\n")[0], warmup=2, repeats=5)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--drop-path", type=float, default=0.1, help="drop-path rate of all three models")
    p.add_argument("--compile", action="store_true", help="also time our compile_blocks() model")
    p.add_argument("--fused-adamw", action="store_true", help="also time ours with AdamW(fused=True)")
    return p.parse_args()


def main() -> None:
    args = parse_args()
    setup_threads(args)
    torch.manual_seed(0)
    cfg = model_config("beit_base_patch16_224", rel_pos_bias="shared", drop_path_rate=args.drop_path)
    vocab = MIMConfig().vocab_size
    batch = mim_batch(cfg, args.batch, vocab)
    models = loss_functions(cfg, vocab)
    candidates = {name: train_step(m, fn, batch) for name, (m, fn) in models.items()}
    if args.fused_adamw:
        ours, fn = models["ours"]
        candidates["ours_fused_adamw"] = train_step(ours, fn, batch, fused=True)
    result: dict[str, object] = {}
    if args.compile:
        candidates["ours_compiled"], result["compile_s"] = compile_candidate(cfg, vocab, batch)
    candidates["matmul"] = matmul_probe()
    times = time_interleaved(candidates, args.warmup, args.repeats, args.clock)
    report(result, times, cfg, batch, args.clock)


def report(
    result: dict[str, object], times: dict[str, list[float]], cfg: ModelConfig, batch: MIMBatch, clock: str
) -> None:
    vocab = MIMConfig().vocab_size
    rate = matmul_rate(median(times.pop("matmul")))
    b = batch.images.shape[0]
    flops = {"masked": train_step_flops(cfg, b, batch.num_masked, vocab)}
    flops["all"] = train_step_flops(cfg, b, b * cfg.num_patches, vocab)  # HF's head: every position
    fastest_peer = min(median(times["timm"]), median(times["hf"]))
    fastest_peer_min = min(min(times["timm"]), min(times["hf"]))  # the least disturbed steps
    for name, values in times.items():
        secs = median(values)
        result[f"{name}_s"] = round(secs, 3)
        result[f"{name}_min_s"] = round(min(values), 3)
        step_flops = flops["all" if name == "hf" else "masked"]
        result[f"{name}_roofline"] = round(step_flops / secs / rate, 3)
        if name.startswith("ours"):
            result[f"{name}_ratio"] = round(secs / fastest_peer, 3)
            result[f"{name}_ratio_of_mins"] = round(min(values) / fastest_peer_min, 3)
            paired = [t / min(p, q) for t, p, q in zip(values, times["timm"], times["hf"])]
            result[f"{name}_ratio_paired"] = round(median(paired), 3)  # round by round, same load
        print(f"{name:18s} median {secs:7.3f} s  all {[round(t, 2) for t in values]}")
    result.update(
        ratio=result["ours_ratio"],
        matmul_gflops=round(rate / 1e9, 1),
        step_gflops=round(flops["masked"] / 1e9, 1),
        batch=b,
        drop_path=cfg.drop_path_rate,
        threads=torch.get_num_threads(),
        clock=clock,
        repeats=len(times["ours"]),
    )
    emit(result)


if __name__ == "__main__":
    main()
