"""One pre-training step of BEiT (MIM) vs BEiT + DINO (seed App. E) at the same batch of images:
images/s and memory, timed in interleaved rounds in one run.

    python bench/dino_step.py --threads 1 --clock thread            # BEiT-B, batch 4, 224², 8 local 96² crops
    python bench/dino_step.py --model beit_small_patch16_224 --batch 8 --local-crops 2

Both steps: forward, backward, AdamW on the same B images, fp32, drop path 0.1, shared relative
position bias, LayerScale 0.1, 75 of 196 patches masked (Algorithm 1), the LM head on the
``mim.max_masked`` rows a recipe derives (``mim_step.ours_mim``), random token targets (the
tokenizer is left out of both; BEiT+DINO would tokenize its two global views, BEiT one).
BEiT: one 224² view per image. BEiT+DINO (``models/dino.py``, as ``engine/dino.py`` runs it):
the student on the two masked global views (MIM on both, [CLS] → DINO head, 65536 prototypes)
and on ``--local-crops`` unmasked local crops at their own grid; the EMA teacher (a second copy)
on the two unmasked global views; the DINO loss, the centre and the teacher update.

Memory: ``state_mb`` counts parameters, gradients, AdamW state (and the teacher) by tensor size;
``step_peak_mb`` is the peak resident set (CPU, ``bench/memory.py``'s ``CPUPeak``) or allocated
memory (CUDA) above the level before one step. The last line is one JSON object whose ``ratio``
is BEiT+DINO's step time ÷ BEiT's (how many times faster BEiT is per image).
"""

from __future__ import annotations

import copy
import os
import sys
from collections.abc import Callable

import torch
from harness import MIMBatch, emit, median, mim_batch, setup_threads, time_interleaved, timing_parser
from memory import MIB, CPUPeak, CUDAPeak
from mim_step import ours_mim
from torch import nn

from beit_ds.config import MIMConfig, ModelConfig
from beit_ds.config.dino import DinoHeadConfig
from beit_ds.models import build_mim_model, model_config
from beit_ds.models.dino import BeitDinoStudent, DinoLoss
from beit_ds.tasks.dino import update_teacher


def beit_step(cfg: ModelConfig, batch: MIMBatch, vocab: int) -> tuple[Callable[[int], None], list[nn.Module]]:
    """One seeded MIM training step on ``batch`` (and the modules whose state it keeps)."""
    model = build_mim_model(cfg, ours_mim(cfg, vocab)).train()
    optimizer = torch.optim.AdamW(model.parameters())

    def step(seed: int) -> None:
        torch.manual_seed(seed)
        loss = model(batch.images, batch.mask, batch.target).loss
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()

    return step, [model, optimizer]  # type: ignore[list-item]


def dino_step(
    cfg: ModelConfig, views: MIMBatch, local: torch.Tensor, vocab: int, out_dim: int
) -> tuple[Callable[[int], None], list[nn.Module]]:
    """One seeded MIM + DINO step: ``views`` holds the 2·B global views, ``local`` the L·B crops."""
    student = BeitDinoStudent(build_mim_model(cfg, ours_mim(cfg, vocab)), DinoHeadConfig(out_dim=out_dim))
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    loss_fn = DinoLoss(out_dim)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad])

    def step(seed: int) -> None:
        torch.manual_seed(seed)
        out = student(views.images, views.mask, views.target, local)
        dino = loss_fn(out.logits, teacher.teacher_logits(views.images), 0.04)
        loss_fn.update_center(dino.batch_center)
        loss = out.mim.loss + dino.loss
        optimizer.zero_grad(set_to_none=False)
        loss.backward()
        optimizer.step()
        update_teacher(teacher, student, 0.996)

    return step, [student, teacher, optimizer, loss_fn]  # type: ignore[list-item]


def state_mib(objects: list) -> float:
    """Bytes of parameters, gradients, buffers and optimizer state held by ``objects``."""
    seen: dict[int, int] = {}

    def add(t: object) -> None:
        if isinstance(t, torch.Tensor):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()

    for obj in objects:
        if isinstance(obj, torch.optim.Optimizer):
            for state in obj.state.values():
                for value in state.values():
                    add(value)
        else:
            for t in [*obj.parameters(), *obj.buffers()]:
                add(t)
                add(t.grad)
    return sum(seen.values()) / MIB


def step_peak_mib(step: Callable[[int], None], device: str) -> float:
    meter = CUDAPeak() if device.startswith("cuda") else CPUPeak()
    meter.start()
    step(1000)
    return meter.peak_mib()


def parse_args():
    p = timing_parser(__doc__.split("\n\n")[0], warmup=1, repeats=3)
    p.add_argument("--model", default="beit_base_patch16_224")
    p.add_argument("--batch", type=int, default=4, help="images per step (both candidates)")
    p.add_argument("--local-crops", type=int, default=8)
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--out-dim", type=int, default=65536)
    return p.parse_args()


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:  # freed tensors leave the resident set (bench/memory.py)
        os.execve(sys.executable, [sys.executable, *sys.argv], dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MIB)))
    args = parse_args()
    setup_threads(args)
    torch.manual_seed(0)
    cfg = model_config(args.model, rel_pos_bias="shared", layer_scale_init=0.1, drop_path_rate=0.1)
    vocab = MIMConfig().vocab_size
    batch = mim_batch(cfg, args.batch, vocab)
    views = mim_batch(cfg, 2 * args.batch, vocab, seed=1)  # the two global views of the same B images
    local = torch.randn(args.local_crops * args.batch, 3, args.local_size, args.local_size)
    beit, beit_state = beit_step(cfg, batch, vocab)
    dino, dino_state = dino_step(cfg, views, local, vocab, args.out_dim)
    times = time_interleaved({"beit": beit, "beit_dino": dino}, args.warmup, args.repeats, args.clock)
    result: dict[str, object] = {}
    for name, step, state in (("beit", beit, beit_state), ("beit_dino", dino, dino_state)):
        secs = median(times[name])
        result[f"{name}_s"] = round(secs, 3)
        result[f"{name}_img_per_s"] = round(args.batch / secs, 3)
        result[f"{name}_state_mb"] = round(state_mib(state), 1)
        result[f"{name}_step_peak_mb"] = round(step_peak_mib(step, "cpu"), 1)
        print(f"{name:10s} median {secs:7.3f} s  all {[round(t, 2) for t in times[name]]}")
    beit_total = float(result["beit_state_mb"]) + float(result["beit_step_peak_mb"])  # type: ignore[arg-type]
    dino_total = float(result["beit_dino_state_mb"]) + float(result["beit_dino_step_peak_mb"])  # type: ignore[arg-type]
    result.update(
        memory_ratio=round(dino_total / beit_total, 3),
        model=args.model, batch=args.batch, local_crops=args.local_crops, local_size=args.local_size,
        out_dim=args.out_dim, threads=torch.get_num_threads(), clock=args.clock, repeats=args.repeats,
        ratio=round(median(times["beit_dino"]) / median(times["beit"]), 3),
    )
    emit(result)


if __name__ == "__main__":
    main()
