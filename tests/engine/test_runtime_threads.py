"""The oversubscription warning: torch threads x training processes + loader workers vs cores."""

from __future__ import annotations

import logging

import pytest

from beit_ds.engine import runtime


def test_oversubscription_counts_threads_processes_and_workers():
    assert runtime.oversubscription(workers=0, processes=1, threads=2, cores=2, cpu=True) is None
    reason = runtime.oversubscription(workers=1, processes=1, threads=2, cores=2, cpu=True)
    assert reason == ("1 process(es) x (2 torch threads + 1 loader workers) = 3 busy threads on 2 cores:"
                      " set OMP_NUM_THREADS=1 or fewer data.num_workers")
    assert "= 4 busy threads" in runtime.oversubscription(0, 2, 2, 2, cpu=True)
    # on a GPU a process keeps one core busy feeding it; its torch threads are idle
    assert runtime.oversubscription(workers=6, processes=8, threads=16, cores=64, cpu=False) is None
    assert "= 72 busy threads on 64 cores" in runtime.oversubscription(8, 8, 16, 64, cpu=False)


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
