"""The process-group helpers: the world read from torchrun's variables, the sharding rule and
its inverse, and a real two-process gloo gather."""

from __future__ import annotations

import socket

import pytest
import torch
import torch.multiprocessing as mp

from optenv import distributed as D


def test_world_is_one_process_without_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    world = D.world_from_env()
    assert world == D.World(0, 1, 0)
    assert not world.distributed and world.is_main
    assert D.init("cpu") == (world, torch.device("cpu"))


def test_world_reads_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    world = D.world_from_env()
    assert world == D.World(3, 4, 1)
    assert world.distributed and not world.is_main


@pytest.mark.parametrize(("size", "rank", "match"), [("two", "0", "WORLD_SIZE"),
                                                     ("2", "2", "RANK must be < WORLD_SIZE=2"),
                                                     ("0", "0", "WORLD_SIZE must be >= 1"),
                                                     ("2", "-1", "RANK must be >= 0")])
def test_bad_torchrun_variables_name_the_variable(monkeypatch: pytest.MonkeyPatch, size: str,
                                                  rank: str, match: str) -> None:
    monkeypatch.setenv("WORLD_SIZE", size)
    monkeypatch.setenv("RANK", rank)
    with pytest.raises(ValueError, match=match):
        D.world_from_env()


def test_bad_timeout_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTENV_DIST_TIMEOUT", "soon")
    with pytest.raises(ValueError, match="OPTENV_DIST_TIMEOUT"):
        D.timeout()
    monkeypatch.setenv("OPTENV_DIST_TIMEOUT", "0")
    with pytest.raises(ValueError, match="> 0"):
        D.timeout()
    monkeypatch.setenv("OPTENV_DIST_TIMEOUT", "12.5")
    assert D.timeout().total_seconds() == 12.5


def test_backend_follows_the_device() -> None:
    assert D.backend_for("cpu") == "gloo"
    assert D.backend_for("cuda:1") == "nccl"


@pytest.mark.parametrize("size", [1, 2, 3, 7])
@pytest.mark.parametrize("n", [0, 1, 5, 10])
def test_unshard_restores_the_order_shard_split(size: int, n: int) -> None:
    items = [f"item{i}" for i in range(n)]
    pieces = [D.shard(items, D.World(r, size)) for r in range(size)]
    assert sorted(x for piece in pieces for x in piece) == sorted(items)
    assert D.unshard(pieces) == items


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _gather_worker(rank: int, port: int, out: dict) -> None:  # runs in a spawned process
    import os
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OPTENV_DIST_TIMEOUT="60")
    world, dev = D.init("cpu")
    try:
        mine = D.shard(list(range(5)), world)
        out[rank] = (dev.type, D.unshard(D.all_gather_objects([i * i for i in mine], world)))
        D.barrier(world)
    finally:
        D.shutdown()


def test_two_gloo_processes_gather_back_the_single_process_order() -> None:
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_gather_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    assert results == {0: ("cpu", [0, 1, 4, 9, 16]), 1: ("cpu", [0, 1, 4, 9, 16])}


def _slow_peer_worker(rank: int, port: int, out: dict) -> None:  # runs in a spawned process
    import os
    import time
    os.environ.update(WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OPTENV_DIST_TIMEOUT="2")
    world, _ = D.init("cpu")
    try:
        D.wait_for_all(world)  # the first call makes the wait group
        if rank == 1:
            time.sleep(5)  # "training": longer than the collective timeout
        D.wait_for_all(world)
        out[rank] = "through"
    finally:
        D.shutdown()


def test_wait_for_all_outlasts_the_collective_timeout() -> None:
    """A rank waiting at a phase boundary for a peer's long work is not failed by the short
    collective timeout (a plain barrier would time out after 2 s here)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_slow_peer_worker, args=(_free_port(), out), nprocs=2, join=True)
        results = dict(out)
    assert results == {0: "through", 1: "through"}


def test_bad_wait_timeout_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPTENV_DIST_WAIT_TIMEOUT", "-1")
    with pytest.raises(ValueError, match="OPTENV_DIST_WAIT_TIMEOUT"):
        D.wait_timeout()
