"""What checksum verification of a checkpoint costs: SHA-256 of a file written to disk
by ``beit_ds.engine.integrity.sha256`` (the function resume uses), and the implied time for a
BEiT-L ZeRO checkpoint, whose size is counted from the model (bf16 module weights + fp32 master
weights + two fp32 Adam moments per parameter).

    python bench/checkpoint_verify.py --mib 1024

The last line is JSON. The figure is measured rate x counted size, read from the page cache (a
cold read from a network file system adds its own read time, which DeepSpeed's load pays too).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch

from beit_ds.config import MIMConfig
from beit_ds.engine.integrity import sha256
from beit_ds.models import build_mim_model, model_config

BYTES_PER_PARAM = 2 + 4 + 4 + 4  # bf16 module copy, fp32 master, exp_avg, exp_avg_sq


def beit_large_checkpoint_bytes() -> int:
    with torch.device("meta"):
        model = build_mim_model(model_config("beit_large_patch16_224"), MIMConfig(vocab_size=8192))
    return sum(p.numel() for p in model.parameters()) * BYTES_PER_PARAM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="size of the file hashed")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "shard.bin"
        with open(path, "wb") as f:
            for _ in range(args.mib):
                f.write(os.urandom(1 << 20))
        times = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            sha256(path)
            times.append(time.perf_counter() - t)
    rate = args.mib / 1024 / min(times)  # GiB/s
    size = beit_large_checkpoint_bytes()
    result = {"sha256_gib_per_s": round(rate, 3), "beit_large_checkpoint_gb": round(size / 1e9, 2),
              "beit_large_verify_s": round(size / 2**30 / rate, 1)}
    print(f"SHA-256 {rate:.2f} GiB/s on one core; a BEiT-L ZeRO checkpoint is {size / 1e9:.2f} GB:"
          f" {result['beit_large_verify_s']} s to verify")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
