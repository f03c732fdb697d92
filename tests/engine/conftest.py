"""A real single-rank DeepSpeed process group (gloo, CPU) for in-process engine tests."""

from __future__ import annotations

import os
import socket

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ds_single_rank():
    import deepspeed
    import torch.distributed as dist

    if not dist.is_initialized():
        for key, value in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port()), "RANK": "0",
                           "WORLD_SIZE": "1", "LOCAL_RANK": "0"}.items():
            os.environ.setdefault(key, value)
        deepspeed.init_distributed(dist_backend="gloo")
    return deepspeed
