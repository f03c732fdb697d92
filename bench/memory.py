"""Peak memory of one BEiT-B MIM forward + backward (batch 32, 224², fp32) with and without
activation checkpointing (``set_grad_checkpointing``), each in a fresh subprocess.

    python bench/memory.py                    # CUDA when available, else CPU
    python bench/memory.py --device cpu --batch 32

What is counted: the peak during ``loss = model(batch).loss; loss.backward()`` minus the memory
in use just before it, when parameters, their gradient buffers (allocated by a batch-1 warm-up
step and kept by ``zero_grad(set_to_none=False)``), AdamW state and the input batch already
exist; so none of those count, only activations and temporaries.

* CUDA: ``torch.cuda.max_memory_allocated()`` after ``reset_peak_memory_stats()``, minus
  ``memory_allocated()`` before.
* CPU: the process's peak resident set (``VmHWM``, reset through ``/proc/self/clear_refs``;
  ``ru_maxrss`` where that is not writable) minus its resident set before. The child runs with
  glibc's ``MALLOC_MMAP_THRESHOLD_`` fixed at 1 MiB and calls ``malloc_trim`` before the
  baseline, so freed tensors leave the resident set and the peak follows live memory.

``saved_mb`` is a second, direct check: the bytes of distinct storages autograd saves for
backward during the forward pass (parameters excluded), seen from outside the blocks. With
checkpointing, blocks save nothing (their recomputation saves instead), so only the patch
embedding, final norm and LM head remain; the shared relative position bias is computed once
per forward outside the checkpointed blocks. The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import resource
import subprocess
import sys
import time

import torch
from harness import emit, mim_batch

from beit_ds.config import MIMConfig
from beit_ds.models import build_mim_model, model_config

MODES = ("plain", "checkpointed")
MIB = 2**20


class SavedBytes:
    """Saved-tensor hooks summing the distinct storages autograd keeps for backward."""

    def __init__(self, exclude: set[int]) -> None:
        self.exclude = exclude
        self.storages: dict[int, int] = {}

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in self.exclude:
            self.storages[storage.data_ptr()] = storage.nbytes()
        return t

    @property
    def mib(self) -> float:
        return sum(self.storages.values()) / MIB


class CPUPeak:
    """Resident-set peak of this process, relative to the resident set at ``start()``."""

    def start(self) -> None:
        try:
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current resident set
            self.source = "VmHWM"
        except OSError:
            self.source = "ru_maxrss"
        self.base = self._status("VmRSS")

    def peak_mib(self) -> float:
        peak = self._status("VmHWM") if self.source == "VmHWM" else self._maxrss()
        return (peak - self.base) / MIB

    @staticmethod
    def _status(key: str) -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError(f"/proc/self/status has no {key} line")

    @staticmethod
    def _maxrss() -> int:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class CUDAPeak:
    """``max_memory_allocated`` relative to the allocated memory at ``start()``."""

    source = "max_memory_allocated"

    def start(self) -> None:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        self.base = torch.cuda.memory_allocated()

    def peak_mib(self) -> float:
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - self.base) / MIB


def measure(mode: str, batch_size: int, device: str) -> dict[str, object]:
    """Peak activation memory of one forward + backward of the MIM model in ``mode``."""
    torch.manual_seed(0)
    cfg = model_config("beit_base_patch16_224", rel_pos_bias="shared", drop_path_rate=0.1)
    vocab = MIMConfig().vocab_size
    model = build_mim_model(cfg, MIMConfig()).to(device).train()
    model.set_grad_checkpointing(mode == "checkpointed")
    optimizer = torch.optim.AdamW(model.parameters())
    warm = mim_batch(cfg, 1, vocab, seed=1)
    model(warm.images.to(device), warm.mask.to(device), warm.target.to(device)).loss.backward()
    optimizer.step()  # creates the AdamW state
    optimizer.zero_grad(set_to_none=False)
    data = mim_batch(cfg, batch_size, vocab)
    images, mask, target = data.images.to(device), data.mask.to(device), data.target.to(device)
    saved = SavedBytes({p.untyped_storage().data_ptr() for p in model.parameters()})
    meter = CUDAPeak() if device.startswith("cuda") else CPUPeak()
    meter.start()
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda t: t):
        loss = model(images, mask, target).loss
    loss.backward()
    seconds = time.perf_counter() - start
    return {
        "mode": mode,
        "peak_mb": round(meter.peak_mib(), 1),
        "saved_mb": round(saved.mib, 1),
        "seconds": round(seconds, 1),
        "source": meter.source,
    }


def run_child(mode: str, args: argparse.Namespace) -> dict[str, object]:
    cmd = [sys.executable, __file__, "--child", mode, "--batch", str(args.batch), "--device", args.device]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=str(MIB))
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} run failed (exit {proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch threads on CPU (0: torch's default)")
    p.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    return p.parse_args()


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.child:
        emit(measure(args.child, args.batch, args.device))
        return
    runs = {mode: run_child(mode, args) for mode in MODES}
    for mode, r in runs.items():
        print(
            f"{mode:13s} peak {r['peak_mb']:9.1f} MiB  saved for backward {r['saved_mb']:9.1f} MiB"
            f"  ({r['seconds']} s, {r['source']})"
        )
    plain, ckpt = runs["plain"], runs["checkpointed"]
    emit(
        {
            "plain_peak_mb": plain["peak_mb"],
            "checkpointed_peak_mb": ckpt["peak_mb"],
            "ratio": round(ckpt["peak_mb"] / plain["peak_mb"], 3),
            "plain_saved_mb": plain["saved_mb"],
            "checkpointed_saved_mb": ckpt["saved_mb"],
            "batch": args.batch,
            "device": args.device,
            "source": plain["source"],
        }
    )


if __name__ == "__main__":
    main()
