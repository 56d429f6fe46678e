"""Coordinate groups: the named blocks of x that a coordinatewise optimiser treats alike.

Li & Malik (2017, "Learning to Optimize Neural Nets", §3) make a learned optimiser scale to any
d by sharing its parameters across the coordinates of a group — one group per weight matrix and
one per bias vector of a network — so that the optimiser is permutation-invariant inside a group
and applies to a model with other group sizes. Every family names its groups; each group also
says its ``kind`` (``"weight"``, ``"bias"`` or ``"other"``), which is what lets a policy trained
on one model (say logistic regression: ``w`` weight, ``b`` bias) act on another with a different
number of groups (a two-layer net: ``W``, ``b``, ``U``, ``c``).

The groups of a family always partition ``range(d)``: every coordinate in exactly one group.
:func:`check_groups` enforces it for user-given groups.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = ["GROUP_KINDS", "CoordinateGroup", "check_groups", "groups_from_sizes"]

#: What a group is, as a coordinatewise policy that meets a new model needs to know it.
GROUP_KINDS = ("weight", "bias", "other")


@dataclass(frozen=True, eq=False)
class CoordinateGroup:
    """One group: its ``name``, the int64 ``index`` of its coordinates in x (ascending), and
    its ``kind`` (one of :data:`GROUP_KINDS`)."""

    name: str
    index: torch.Tensor
    kind: str = "other"

    @property
    def size(self) -> int:
        """The number of coordinates in the group."""
        return int(self.index.numel())

    def as_slice(self) -> slice | None:
        """The group as a slice of x when its coordinates are contiguous (views, no copies)."""
        if self.size == 0:
            return None
        lo, hi = int(self.index[0]), int(self.index[-1]) + 1
        return slice(lo, hi) if hi - lo == self.size else None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, CoordinateGroup) and self.name == other.name
                and self.kind == other.kind and torch.equal(self.index, other.index))

    def __hash__(self) -> int:
        return hash((self.name, self.kind, tuple(self.index.tolist())))

    def __repr__(self) -> str:
        where = self.as_slice()
        span = f"{where.start}:{where.stop}" if where is not None else f"{self.size} coords"
        return f"CoordinateGroup({self.name!r}, [{span}], kind={self.kind!r})"


def groups_from_sizes(sizes: Iterable[tuple[str, int, str]]) -> tuple[CoordinateGroup, ...]:
    """Contiguous groups laid out in order: ``[(name, size, kind), ...]`` → groups."""
    out, start = [], 0
    for name, n, kind in sizes:
        out.append(CoordinateGroup(name, torch.arange(start, start + n), kind))
        start += n
    return tuple(out)


def check_groups(groups: Any, d: int, owner: str = "groups") -> tuple[CoordinateGroup, ...]:
    """Validate and normalise user-given groups for a family with ``d`` variables.

    Accepts :class:`CoordinateGroup` objects, or a mapping ``name -> indices`` (a slice, a
    sequence of ints or an int tensor; kind ``"other"``), or ``name -> (indices, kind)``.
    Raises ValueError naming ``owner`` unless the groups partition ``range(d)`` with unique,
    non-empty names and known kinds.
    """
    items: list[CoordinateGroup] = []
    if isinstance(groups, Mapping):
        for name, spec in groups.items():
            kind = "other"
            if isinstance(spec, tuple) and len(spec) == 2 and isinstance(spec[1], str):
                spec, kind = spec
            items.append(CoordinateGroup(name, _as_index(spec, d, owner, name), kind))
    elif isinstance(groups, Sequence) and not isinstance(groups, str) and all(
            isinstance(g, CoordinateGroup) for g in groups):
        items = [CoordinateGroup(g.name, _as_index(g.index, d, owner, g.name), g.kind)
                 for g in groups]
    else:
        raise ValueError(f"{owner}: got {type(groups).__name__}, allowed: a dict name -> "
                         "indices (or (indices, kind)), or a sequence of CoordinateGroup")
    names = [g.name for g in items]
    if not items or any(not isinstance(n, str) or not n for n in names) \
            or len(set(names)) != len(names):
        raise ValueError(f"{owner}: got group names {names!r}, allowed: one or more unique, "
                         "non-empty strings")
    for g in items:
        if g.kind not in GROUP_KINDS:
            raise ValueError(f"{owner}: group {g.name!r} has kind {g.kind!r}, allowed: "
                             + ", ".join(GROUP_KINDS))
        if g.size == 0:
            raise ValueError(f"{owner}: group {g.name!r} is empty, allowed: non-empty groups")
    counts = torch.bincount(torch.cat([g.index for g in items]), minlength=d)
    if counts.numel() != d or bool((counts != 1).any()):
        missing = (counts == 0).nonzero().flatten().tolist()[:5]
        repeated = (counts > 1).nonzero().flatten().tolist()[:5]
        raise ValueError(f"{owner}: the groups do not partition the {d} coordinates (missing "
                         f"{missing}, in more than one group {repeated}); allowed: every "
                         f"coordinate 0..{d - 1} in exactly one group")
    return tuple(items)


def _as_index(spec: Any, d: int, owner: str, name: str) -> torch.Tensor:
    """Indices of one group as a sorted int64 tensor within [0, d)."""
    if isinstance(spec, slice):
        return torch.arange(d)[spec]
    try:
        idx = torch.as_tensor(spec)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{owner}: group {name!r} got {spec!r}, allowed: a slice or integer "
                         "indices") from err
    if idx.numel() == 0 and idx.dim() == 1:
        return idx.to(torch.int64)  # [] is float32 to torch; an empty group is reported later
    if idx.dtype == torch.bool or idx.dtype.is_floating_point or idx.dtype.is_complex \
            or idx.dim() != 1:
        raise ValueError(f"{owner}: group {name!r} got indices of dtype {idx.dtype} and shape "
                         f"{tuple(idx.shape)}, allowed: a 1-D sequence of ints")
    idx = idx.to(torch.int64)
    if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= d):
        raise ValueError(f"{owner}: group {name!r} has indices outside 0..{d - 1}")
    return idx.sort().values
