"""The oversubscription warning: torch threads x training processes + loader workers vs cores."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from beit_ds.engine import runtime

ROOT_DS = Path(__file__).resolve().parents[2] / "ds_configs"


def test_oversubscription_counts_compute_threads_on_cpu_and_feeders_on_gpu():
    assert runtime.oversubscription(workers=0, processes=1, threads=2, cores=2, cpu=True) is None
    # a CPU run's loader worker mostly waits: 2 threads + 1 worker on 2 cores measured 315 img/s,
    # the 1 thread the old advice asked for 241 img/s (CIFAR-10 recipe, bf16; README)
    assert runtime.oversubscription(workers=1, processes=1, threads=2, cores=2, cpu=True) is None
    reason = runtime.oversubscription(workers=1, processes=2, threads=2, cores=2, cpu=True)
    assert reason == "2 training process(es) x 2 torch threads = 4 busy threads on 2 cores: set OMP_NUM_THREADS=1"
    # on a GPU a process keeps one core busy feeding it, its workers decode; its torch threads are idle
    assert runtime.oversubscription(workers=6, processes=8, threads=16, cores=64, cpu=False) is None
    reason = runtime.oversubscription(8, 8, 16, 64, cpu=False)
    assert reason == ("8 process(es) x (1 feeding thread + 8 loader workers) = 72 busy threads on 64 cores:"
                      " set data.num_workers=7")


def test_local_processes_reads_the_launchers_variables(monkeypatch):
    for name in ("LOCAL_WORLD_SIZE", "LOCAL_SIZE", "SLURM_NTASKS_PER_NODE", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert runtime.local_processes() == 1
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.local_processes() == 4
    monkeypatch.setenv("LOCAL_SIZE", "2")
    assert runtime.local_processes() == 2


@pytest.mark.parametrize("threads, warned", [(1, False), (64, True)])
def test_warning_is_logged_when_oversubscribed(monkeypatch, caplog, threads, warned):
    monkeypatch.setattr(runtime.torch, "get_num_threads", lambda: threads)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(runtime.os, "sched_getaffinity", lambda pid: set(range(8)), raising=False)
    monkeypatch.setattr(runtime.torch.cuda, "is_available", lambda: False)
    logger = runtime.get_logger()
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger.name):
            runtime.warn_if_oversubscribed(workers=1)
    finally:
        logger.removeHandler(caplog.handler)
    assert ("oversubscribed" in caplog.text) == warned


@pytest.mark.parametrize("flags, native", [("fpu sse avx2 avx512f amx_bf16 amx_tile", True),
                                           ("fpu avx512f avx512_bf16", True), ("fpu sse avx2 avx512f", False)])
def test_native_bf16_is_read_from_the_cpu_flags(tmp_path, flags, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Xeon\nflags\t\t: {flags}\n")
    assert runtime.cpu_has_native_bf16(str(cpuinfo)) is native
    assert runtime.cpu_has_native_bf16(str(tmp_path / "missing")) is False


def test_bf16_hint_for_a_precision_that_does_not_suit_the_cpu():
    hint = runtime.bf16_hint("fp32", cuda=False, native_bf16=True)
    assert hint is not None and "--deepspeed_config ds_configs/zero0_bf16.json" in hint
    assert (ROOT_DS / "zero0_bf16.json").is_file()  # the config it names is shipped
    slow = runtime.bf16_hint("bf16", cuda=False, native_bf16=False)
    assert slow is not None and "bf16 is emulated and runs several times slower than fp32" in slow
    assert "ds_configs/zero2_fp32_cpu.json" in slow and (ROOT_DS / "zero2_fp32_cpu.json").is_file()
    assert runtime.bf16_hint("bf16", cuda=False, native_bf16=True) is None
    assert runtime.bf16_hint("fp32", cuda=True, native_bf16=True) is None
    assert runtime.bf16_hint("bf16", cuda=True, native_bf16=False) is None
    assert runtime.bf16_hint("fp32", cuda=False, native_bf16=False) is None
