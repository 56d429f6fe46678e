"""The process group a run belongs to: one process by default, N under ``torchrun``.

Why a module of its own: GPS training (``gps``) and the application layer's evaluations
(``optenv.lab``: compare, study) both split work across ranks, and both must agree on the same
few rules, so they live in the env library, which both may import:

- the world is read from torchrun's environment variables (``WORLD_SIZE``, ``RANK``,
  ``LOCAL_RANK``, plus ``MASTER_ADDR``/``MASTER_PORT`` for the rendezvous); without them a run is
  one process and nothing here touches ``torch.distributed``;
- the backend follows the device: NCCL for CUDA (each process on ``cuda:LOCAL_RANK``), gloo on
  the CPU;
- work is split by a fixed rule (:func:`shard`: item ``i`` goes to rank ``i % size``), so that
  gathering the pieces back (:func:`unshard`) restores the single-process order exactly;
- a collective that waits for a dead rank times out (``OPTENV_DIST_TIMEOUT`` seconds, default
  600) instead of hanging forever; torchrun then ends the other ranks.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")

#: Seconds a collective waits for the other ranks before the run fails.
DEFAULT_TIMEOUT_S = 600.0
#: Seconds :func:`wait_for_all` waits for the other ranks' WORK (a whole training run, say).
DEFAULT_WAIT_S = 7 * 86400.0

#: The gloo group :func:`wait_for_all` waits on (made on first use, once per process group).
_wait_group: Any = None


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank, the number of ranks, its rank on its node."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        """True when more than one process takes part."""
        return self.size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes files and prints."""
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    text = os.environ.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {text!r}") from None
    if value < 0:
        raise ValueError(f"environment variable {name} must be >= 0, got {value}")
    return value


def world_from_env() -> World:
    """The world torchrun describes in the environment (one process when it describes none)."""
    size = _env_int("WORLD_SIZE", 1)
    if size < 1:
        raise ValueError(f"environment variable WORLD_SIZE must be >= 1, got {size}")
    rank = _env_int("RANK", 0)
    if rank >= size:
        raise ValueError(f"environment variable RANK must be < WORLD_SIZE={size}, got {rank}")
    return World(rank=rank, size=size, local_rank=_env_int("LOCAL_RANK", 0))


def backend_for(device: torch.device | str) -> str:
    """NCCL for CUDA devices, gloo for everything else."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def _seconds(name: str, default: float) -> datetime.timedelta:
    text = os.environ.get(name)
    seconds = default
    if text:
        try:
            seconds = float(text)
        except ValueError:
            raise ValueError(f"environment variable {name} must be a number of seconds, got "
                             f"{text!r}") from None
        if not seconds > 0:
            raise ValueError(f"environment variable {name} must be > 0, got {text!r}")
    return datetime.timedelta(seconds=seconds)


def timeout() -> datetime.timedelta:
    """How long a collective waits for the others (``OPTENV_DIST_TIMEOUT`` seconds)."""
    return _seconds("OPTENV_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)


def wait_timeout() -> datetime.timedelta:
    """How long :func:`wait_for_all` waits (``OPTENV_DIST_WAIT_TIMEOUT`` seconds)."""
    return _seconds("OPTENV_DIST_WAIT_TIMEOUT", DEFAULT_WAIT_S)


def init(device: torch.device | str = "cpu") -> tuple[World, torch.device]:
    """Join the process group torchrun set up (if any) and return the world and this rank's
    device: for CUDA under torchrun, ``cuda:LOCAL_RANK``; otherwise ``device`` unchanged.

    Idempotent: a second call in the same process reuses the group.
    """
    world = world_from_env()
    dev = torch.device(device)
    if not world.distributed:
        return world, dev
    if dev.type == "cuda":
        dev = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend_for(dev), rank=world.rank,
                                world_size=world.size, timeout=timeout())
    return world, dev


def shutdown() -> None:
    """Leave the process group (a no-op when there is none)."""
    global _wait_group
    _wait_group = None
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``items``: those at positions ``rank, rank + size, ...``."""
    return list(items[world.rank::world.size])


def unshard(pieces: Sequence[Sequence[T]]) -> list[T]:
    """Put every rank's :func:`shard` back in the original order (``pieces[r]`` from rank r)."""
    size = len(pieces)
    total = sum(len(p) for p in pieces)
    out: list[T] = []
    for i in range(total):
        out.append(pieces[i % size][i // size])
    return out


def all_gather_objects(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` without a group).

    The objects travel between this run's own processes (``torch.distributed`` pickles them on
    the way); nothing is read from a user's file.
    """
    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World) -> None:
    """Wait until every rank reaches this point (a no-op without a group)."""
    if world.distributed:
        dist.barrier()


def wait_for_all(world: World) -> None:
    """Wait until every rank reaches this point, however long the others' work takes.

    Why not :func:`barrier`: its wait is the collective timeout (``OPTENV_DIST_TIMEOUT``, ten
    minutes by default), right for a collective whose peers are a moment away but not for ranks
    that wait at a phase boundary while another finishes a training run of an hour. This one
    waits on a gloo group of its own (on the CPU, whatever the main backend) with
    ``OPTENV_DIST_WAIT_TIMEOUT`` (a week by default). A rank that dies meanwhile does not leave
    the others waiting a week: torchrun ends every rank when one fails. Every rank must call it
    at the same point (the group is made on the first call, a collective too).
    """
    global _wait_group
    if not world.distributed:
        return
    if _wait_group is None:
        _wait_group = dist.new_group(backend="gloo", timeout=wait_timeout())
    dist.barrier(group=_wait_group)


def is_peer_failure(err: BaseException) -> bool:
    """Whether ``err`` is a collective that failed because another rank is gone or silent
    (gloo: "Connection closed by peer", a timed-out wait; NCCL: an aborted communicator)."""
    text = str(err)
    return isinstance(err, getattr(dist, "DistError", ())) or any(
        mark in text for mark in ("gloo", "Gloo", "NCCL", "Connection closed by peer"))


def describe(err: BaseException) -> str:
    """A one-line account of a failed collective for the user (the backend's first line)."""
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return (f"a collective operation failed, so another process of this run has stopped or "
            f"stalled ({first[:300]})")


def broadcast_object(obj: Any, world: World, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (``obj`` itself without a group); the others pass
    anything (None). One copy travels, where :func:`all_gather_objects` would send every
    rank's."""
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def sum_across(x: torch.Tensor, world: World) -> torch.Tensor:
    """The elementwise sum of every rank's ``x`` (a new tensor; ``x`` itself without a group).
    ``x`` lives on the group's device: CPU for gloo, this rank's GPU for NCCL."""
    if not world.distributed:
        return x
    out = x.clone()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@dataclass(frozen=True)
class Shard:
    """This rank's share of a batch of ``total`` items split by :func:`shard` (item ``i`` on
    rank ``i % size``): what code holding a share needs to compute what one process holding the
    whole batch would.

    Tensors here are batched over the items along a dimension whose length is the number of
    items times a block size ``c`` (one row per item, or ``c`` rows per item, item-major: e.g.
    GPS's per-coordinate problems, ``d`` per condition). Alone (one process) every method
    returns its input unchanged, so single-process code stays exactly what it was.
    """

    world: World
    total: int

    @property
    def count(self) -> int:
        """How many of the items this rank holds."""
        return len(range(self.world.rank, self.total, self.world.size))

    def take(self, full: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """This rank's rows of ``full``, batched over all ``total`` items along ``dim``: what a
        random draw made for the whole batch gives this rank's items (so every rank's
        generator stays in step with one process's)."""
        if not self.world.distributed:
            return full
        dim = dim % full.dim()
        c = full.shape[dim] // self.total
        if c * self.total != full.shape[dim]:
            raise ValueError(f"full: got {full.shape[dim]} rows along dim {dim}, allowed: a "
                             f"multiple of the {self.total} items")
        blocks = full.unflatten(dim, (self.total, c))
        idx = [slice(None)] * dim + [slice(self.world.rank, None, self.world.size)]
        return blocks[tuple(idx)].flatten(dim, dim + 1)

    def gather(self, x: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Every rank's share (``x``: this rank's, batched along ``dim``) put back in the
        batch's order, on every rank (a collective: every rank calls it)."""
        if not self.world.distributed:
            return x
        dim = dim % x.dim()
        c = x.shape[dim] // max(self.count, 1)
        pieces = all_gather_objects(x.detach().cpu().unflatten(dim, (self.count, c)), self.world)
        shape = list(pieces[0].shape)
        shape[dim] = self.total
        out = torch.empty(shape, dtype=x.dtype)
        for r, piece in enumerate(pieces):
            idx = [slice(None)] * dim + [slice(r, None, self.world.size)]
            out[tuple(idx)] = piece
        return out.flatten(dim, dim + 1).to(x.device)
