"""Per-rank optimizer-state bytes of ZeRO-2 vs plain data parallel (stage 0), 2 ranks, same model.

    deepspeed --num_gpus 2 bench/zero_memory.py                      # BEiT-B MIM model (CPU: gloo)
    deepspeed --num_gpus 2 bench/zero_memory.py --model beit_debug_patch4_32

Each rank builds the real engine twice (stage 0, then stage 2, fp32 master weights, AdamW) and
counts the bytes of the tensors its optimizer holds after one step: the fp32 master weights it
updates and the two Adam moments. (In fp32, ZeRO-2's master copy comes on top of the module's own
fp32 weights; in fp16/bf16 training both stages keep such a copy.) Rank 0 prints the
figures; the last line is a JSON object with ``ratio`` = stage-2 bytes ÷ stage-0 bytes.
"""

from __future__ import annotations

import argparse
import copy

import torch
from harness import emit

from beit_ds.config import MIMConfig
from beit_ds.distributed import place_from_env
from beit_ds.engine.ds_setup import resolve_ds_config
from beit_ds.engine.runtime import init_engine
from beit_ds.models import build_mim_model, model_config
from beit_ds.recipe import OptimConfig, ScheduleConfig


def optimizer_state_bytes(engine) -> int:
    """Bytes of every tensor the (ZeRO-wrapped) optimizer keeps between steps, on this rank."""
    inner = getattr(engine.optimizer, "optimizer", engine.optimizer)
    total = 0
    for state in inner.state.values():
        total += sum(t.numel() * t.element_size() for t in state.values() if torch.is_tensor(t) and t.ndim > 0)
    # + the fp32 master weights the optimizer steps: the module's parameters under stage 0, this
    # rank's partition of DeepSpeed's fp32 copy under ZeRO-2
    total += sum(p.numel() * p.element_size() for g in inner.param_groups for p in g["params"])
    return total


def measure(model: torch.nn.Module, stage: int, batch: int) -> int:
    ds = {"zero_optimization": {"stage": stage}, "optimizer": {"type": "AdamW", "params": {"torch_adam": True}},
          "zero_allow_untested_optimizer": True}
    ds = resolve_ds_config(ds, ScheduleConfig(micro_batch_size=batch), OptimConfig(), place_from_env().world_size, 1e-3)
    engine = init_engine(copy.deepcopy(model), OptimConfig(), ds)
    n = engine.module.cfg.num_patches
    size = engine.module.cfg.img_size
    out = engine(torch.randn(batch, 3, size, size), torch.rand(batch, n) < 0.4, torch.randint(0, 8192, (batch, n)))
    engine.backward(out.loss)
    engine.step()
    return optimizer_state_bytes(engine)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="beit_base_patch16_224")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--local_rank", type=int, default=None)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = build_mim_model(model_config(args.model), MIMConfig())
    params = sum(p.numel() for p in model.parameters())
    stage0, stage2 = measure(model, 0, args.batch), measure(model, 2, args.batch)
    place = place_from_env()
    if place.is_main:
        print(f"{args.model}: {params / 1e6:.1f}M parameters, {place.world_size} ranks")
        print(f"optimizer state per rank: stage 0 {stage0 / 2**20:.1f} MiB, ZeRO-2 {stage2 / 2**20:.1f} MiB")
        emit({"model": args.model, "world_size": place.world_size, "params": params, "stage0_bytes": stage0,
              "zero2_bytes": stage2, "ratio": round(stage2 / stage0, 4)})


if __name__ == "__main__":
    main()
