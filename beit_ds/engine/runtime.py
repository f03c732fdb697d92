"""Start DeepSpeed: the process group (NCCL on GPUs, gloo on CPUs) and the engine with our
parameter groups. A plain ``python`` process becomes rank 0 of 1 through the same path.
"""

from __future__ import annotations

import os
import random
import socket
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn

from beit_ds.engine.protocols import TrainEngine
from beit_ds.logger import get_logger
from beit_ds.optim import param_groups
from beit_ds.recipe import OptimConfig

_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def torch_dtype(precision: str) -> torch.dtype:
    """The dtype of the engine's module and inputs for ``precision``."""
    return _DTYPES[precision]


def _single_process_env() -> bool:
    """Set up a one-process group's environment when no launcher did; True when it chose the port."""
    if "RANK" in os.environ or "SLURM_PROCID" in os.environ:
        return False
    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)
    if "MASTER_PORT" in os.environ:
        return False
    os.environ["MASTER_PORT"] = str(_free_port())
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy's and Python's global generators."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def init_distributed() -> None:
    """Join (or, alone, create) the process group; idempotent."""
    import deepspeed
    import torch.distributed as dist

    if dist.is_initialized():
        return
    own_port = _single_process_env()
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    else:
        _skip_shm_comm_build()
    for attempt in range(3):
        try:
            deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)
            return
        except dist.DistNetworkError:  # a port found free was taken by another process meanwhile
            if not own_port or attempt == 2:
                raise
            os.environ["MASTER_PORT"] = str(_free_port())


def _skip_shm_comm_build() -> None:
    """On CPU, DeepSpeed's torch backend JIT-compiles a shared-memory all-reduce op on the first
    ``init_distributed`` (about 2 minutes on 2 cores, again whenever another environment used the
    extension cache last). Only ``inference_all_reduce`` uses it, which training never calls, so
    it is marked unavailable; gloo does every collective."""
    import deepspeed.ops

    compatible = getattr(deepspeed.ops, "__compatible_ops__", None)
    if isinstance(compatible, dict):
        compatible["deepspeed_shm_comm"] = False


def local_processes() -> int:
    """Training processes on this node: the launcher's ``LOCAL_WORLD_SIZE`` / ``LOCAL_SIZE``
    (torchrun / DeepSpeed), SLURM's tasks per node, else the world size."""
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE"):
        value = os.environ.get(name, "")
        if value.isdigit() and int(value) > 0:
            return int(value)
    return 1


def oversubscription(workers: int, processes: int, threads: int, cores: int, cpu: bool) -> str | None:
    """Why this node's cores are oversubscribed, or None. Two busy thread pools on one core slow
    each other 3-4x (measured: two training processes on 2 cores). Training on the CPU, the busy
    threads are the ``processes`` x ``threads`` torch threads: a loader worker mostly waits (a
    CIFAR-10 worker decodes ~1,100 img/s for a ~300 img/s step), and shrinking the pool for it
    costs more than it saves (2 cores, 1 worker: 2 threads 315 img/s, 1 thread 241). On a GPU a
    process keeps one core busy feeding it and its ``workers`` decode all the time."""
    if cpu:
        busy = processes * threads
        if busy <= cores:
            return None
        return (f"{processes} training process(es) x {threads} torch threads = {busy} busy threads on {cores} cores:"
                f" set OMP_NUM_THREADS={max(1, cores // processes)}")
    busy = processes * (1 + workers)
    if busy <= cores:
        return None
    return (f"{processes} process(es) x (1 feeding thread + {workers} loader workers) = {busy} busy threads on"
            f" {cores} cores: set data.num_workers={max(0, cores // processes - 1)}")


def warn_if_oversubscribed(workers: int) -> None:
    """Log ``oversubscription`` for this process's threads, loader workers and node (once per build)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    reason = oversubscription(workers, local_processes(), torch.get_num_threads(), cores, not torch.cuda.is_available())
    if reason:
        get_logger().warning("oversubscribed: %s", reason)


def cpu_has_native_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """True on a CPU whose matmul units take bf16 (AMX-BF16 or AVX512-BF16): there oneDNN's bf16
    matmul runs 5-7x faster than fp32 (a 2048² matmul on one Sapphire Rapids core: 855 vs 160
    GFLOP/s); elsewhere bf16 is converted in software and gains little."""
    try:
        flags = next((line for line in Path(cpuinfo).read_text().splitlines() if line.startswith("flags")), "")
    except OSError:
        return False
    return bool({"amx_bf16", "avx512_bf16"} & set(flags.split()))


def bf16_hint(precision: str, cuda: bool, native_bf16: bool) -> str | None:
    """The one-line advice for a CPU run whose precision does not suit the CPU, or None: an fp32
    run on a CPU that multiplies bf16 natively, or a bf16 run on one that emulates it."""
    if cuda:
        return None
    if precision == "fp32" and native_bf16:
        return ("this CPU multiplies bf16 natively (AMX / AVX512-BF16): --deepspeed_config ds_configs/zero0_bf16.json"
                " pre-trained the CIFAR-10 recipe 1.4-1.9x faster than fp32 (docs/benchmarks.md)")
    if precision == "bf16" and not native_bf16:
        return ("this CPU has no native bf16 (no amx_bf16 / avx512_bf16 in /proc/cpuinfo): bf16 is emulated and runs"
                " several times slower than fp32; --deepspeed_config ds_configs/zero2_fp32_cpu.json is faster here")
    return None


def init_engine(model: nn.Module, optim: OptimConfig, ds_config: Mapping[str, object]) -> TrainEngine:
    """``deepspeed.initialize`` with the model's AdamW groups (no decay on biases, norms, tokens,
    position tables; layer-wise lr scales when ``optim.layer_decay < 1``)."""
    import deepspeed

    init_distributed()
    groups = param_groups(model, optim.weight_decay, optim.layer_decay)
    engine, *_ = deepspeed.initialize(model=model, model_parameters=groups, config=ds_config)
    return engine


def shutdown_distributed() -> None:
    """Wait for every rank, then close the process group: no rank tears down its communication
    threads while another (e.g. rank 0 writing the export) may still talk to it."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
