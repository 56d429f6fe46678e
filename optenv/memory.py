"""How much memory an env needs, worked out before it allocates any, and a refusal when it
cannot fit.

Why: the state grows as 2·H·d and some families' data as d² (a Quadratic's matrix), so a
mistyped ``dim=10**7`` used to allocate until the operating system's OOM killer ended the
process, with no message at all. The envs call :func:`check_fits` in their constructors, after
every argument is checked and before the first buffer exists; the refusal is a ValueError
saying how much the configuration needs and how much the device has free.

The estimate counts what an env holds at its peak: its buffers (state, problem data,
observation, and the vector env's final observation), the new state a step builds before it is
copied into place, and a reset's draw of a whole batch of instances, as the family estimates it
(:meth:`~optenv.families.ObjectiveFamily.draw_numel`: the data and the random numbers it is
made from). The families' objective intermediates (a [B, n_points] margin vector, say) are
smaller than their data and not counted.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import torch

from optenv.core import StateLayout
from optenv.families.base import ObjectiveFamily

__all__ = ["available_bytes", "check_fits", "estimate_env_bytes", "format_bytes"]

#: Scalars held per env besides the big buffers (f, f0, t, flags, seeds, ... and their copies).
_SCALARS_PER_ENV = 32


def estimate_env_bytes(
    family: ObjectiveFamily,
    layout: StateLayout,
    num_envs: int,
    dtype: torch.dtype,
    observation_shape: Sequence[int],
) -> int:
    """Bytes ``num_envs`` runs of ``family`` need at their peak (see the module docs).

    Works from shapes only (the built-in families state their data shapes), so it costs
    nothing even for a configuration far too large to allocate.
    """
    item = torch.empty(0, dtype=dtype).element_size()
    data = sum(math.prod(shape) for shape in family.problem_shapes().values())
    per_env = (
        2 * layout.state_dim * item  # the state, and the new state a step builds
        + (data + family.draw_numel()) * item  # the problem data, and a reset's fresh draw
        + 3 * math.prod(observation_shape) * 4  # observation, final observation, returned copy
        + 2 * layout.d * 8  # the actions as float64, and the step they become
        + _SCALARS_PER_ENV * 8
    )
    return num_envs * per_env


def _cgroup_free() -> int | None:
    """Free bytes under this process's cgroup (v2) memory limit, if it has one."""
    try:
        with open("/sys/fs/cgroup/memory.max") as fh:
            limit = fh.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current") as fh:
            used = int(fh.read().strip())
        return max(int(limit) - used, 0)
    except (OSError, ValueError):
        return None


def _host_free() -> int | None:
    """MemAvailable from /proc/meminfo (Linux), else free physical pages; None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def available_bytes(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device`` now, or None where that cannot be known.

    CPU: the smaller of the host's available memory and what the cgroup limit leaves. CUDA:
    the free memory the driver reports. Other devices: None (no check).
    """
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    if device.type == "cpu":
        known = [b for b in (_host_free(), _cgroup_free()) if b is not None]
        return min(known) if known else None
    return None


def format_bytes(n: float) -> str:
    """A byte count for people: 1.5 GiB, 320.0 MiB, 12.0 KiB, 100 B."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} B"


def check_fits(needed: int, device: torch.device, what: str,
               smaller: str = "dim, history or num_envs") -> None:
    """ValueError when ``needed`` bytes cannot fit in what ``device`` has free (``what`` names
    the configuration in the message, ``smaller`` the arguments to lower); nothing when they
    can or when the free memory is unknown."""
    free = available_bytes(device)
    if free is not None and needed > free:
        raise ValueError(
            f"{what} needs about {format_bytes(needed)} of memory, but {device} has "
            f"{format_bytes(free)} free: allowed is a configuration that fits (smaller "
            f"{smaller})")
