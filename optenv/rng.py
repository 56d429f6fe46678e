"""Counter-based random numbers keyed per problem instance.

Why not a sequential ``torch.Generator``: the vector env resets an arbitrary, data-dependent subset
of its N environments inside ``step`` (autoreset), and env ``i`` must get exactly the instance the
single env gets for the same seed and episode. A sequential stream cannot be split that way without
a per-env Python loop or host synchronisation. Here every number is a pure function of
``(instance key, stream, index)``, computed with 32-bit integer hashes held in int64 tensors, so a
batch of instances is drawn with a handful of vectorised ops, on any device, bit-for-bit the same
whether an instance is drawn alone or inside a batch.

The hash is Chris Wellons' ``lowbias32`` (a bijection on 32-bit words). Products may wrap in
int64; only the low 32 bits are kept, which two's-complement wrapping leaves exact. The bulk of a
draw (the [B, count] words) is hashed on int32 bit patterns instead: the same bits, with half the
memory traffic and native 32-bit multiplies, since an autoreset of N envs draws every word of N
instances.

Keys are 64-bit: ``instance_keys(seeds, episodes, split)`` mixes a user seed, the episode counter of
that env, and the data split. The split goes into a separate hash lane so that the TRAIN and TEST
streams are disjoint by construction, not merely unlikely to collide: the two splits map a
``(seed, episode)`` pair into different halves of the key space (the top bit of the key).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["SPLITS", "KeyedRNG", "hash32", "instance_keys", "split_index"]

_MASK32 = 0xFFFFFFFF
_GOLDEN = 0x9E3779B9
SPLITS: tuple[str, ...] = ("train", "test")


def split_index(split: str) -> int:
    """Map a split name to its lane (0 = train, 1 = test); ValueError names the allowed ones."""
    if split not in SPLITS:
        raise ValueError(f"split: got {split!r}, allowed: {', '.join(map(repr, SPLITS))}")
    return SPLITS.index(split)


def hash32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on the low 32 bits of an int64 tensor; returns values in [0, 2**32)."""
    return _hash32_bits(_as_int32(x & _MASK32)).to(torch.int64) & _MASK32


def instance_keys(
    seeds: torch.Tensor | Sequence[int] | int,
    episodes: torch.Tensor | Sequence[int] | int = 0,
    split: str = "train",
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """64-bit keys of problem instances (int64, the broadcast shape of seeds and episodes).

    ``seeds`` are non-negative integers below 2**63 (e.g. the seed given to ``env.reset``);
    ``episodes`` counts resets since that seed. The top bit of each key is the split, so the train
    and test streams never share an instance.
    """
    lane = split_index(split)
    s = torch.as_tensor(seeds, dtype=torch.int64, device=device)
    e = torch.as_tensor(episodes, dtype=torch.int64, device=s.device)
    s, e = torch.broadcast_tensors(s, e)
    s_lo, s_hi = s & _MASK32, (s >> 32) & _MASK32
    e_lo, e_hi = e & _MASK32, (e >> 32) & _MASK32
    a = hash32(s_lo ^ hash32(e_lo + _GOLDEN * (lane + 1)))
    b = hash32(s_hi ^ hash32(e_hi ^ a) ^ (0x85EBCA6B * (lane + 1)))
    a = hash32(a ^ b)
    hi = (b & 0x7FFFFFFF) | (lane << 31)
    # hi < 2**32, so (hi << 32) wraps into the sign bit for the test split: keys are bit patterns.
    return (hi << 32) | a


def _as_int32(x: torch.Tensor) -> torch.Tensor:
    """int64 values in [0, 2**32) as int32 bit patterns."""
    return torch.where(x >= 2**31, x - 2**32, x).to(torch.int32)


def _hash32_bits(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 on int32 bit patterns, the one implementation of the hash (logical shifts by
    masking; int32 products wrap mod 2**32, which is the hash's arithmetic)."""
    x = x ^ ((x >> 16) & 0xFFFF)
    x = x * 0x7FEB352D
    x = x ^ ((x >> 15) & 0x1FFFF)
    x = x * (0x846CA68B - 2**32)
    return x ^ ((x >> 16) & 0xFFFF)


def _unit_interval(bits: torch.Tensor) -> torch.Tensor:
    """(w + 0.5) / 2**32 in float64 for the unsigned 32-bit words w held as int32 bits: a
    negative pattern gives that value minus 1, which the remainder restores exactly."""
    u = (bits.to(torch.float64) + 0.5) * (1.0 / 4294967296.0)
    return torch.remainder(u, 1.0)


class KeyedRNG:
    """Draws numbers for a batch of instances; each draw call opens a fresh stream.

    Families call ``normal``/``uniform``/``bernoulli`` in a fixed order when they build an
    instance; the k-th call uses stream k, so an instance's numbers depend only on its key and
    on the family's code, never on which other instances share the batch.
    """

    def __init__(self, keys: torch.Tensor, dtype: torch.dtype = torch.float64) -> None:
        if keys.dtype != torch.int64 or keys.dim() != 1:
            raise ValueError(f"keys: got {keys.dtype} of shape {tuple(keys.shape)}, "
                             "allowed: a 1-D int64 tensor")
        self.keys = keys
        self.dtype = dtype
        self._lo = keys & _MASK32
        self._hi = (keys >> 32) & _MASK32
        self._stream = 0

    @property
    def batch_size(self) -> int:
        return int(self.keys.shape[0])

    def _words(self, count: int) -> torch.Tensor:
        """[B, count] independent 32-bit words from the next stream, as int32 bit patterns."""
        stream = self._stream
        self._stream += 1
        k = hash32(self._hi ^ hash32(self._lo ^ hash32(torch.full_like(self._lo, stream))))
        idx = torch.arange(count, dtype=torch.int64, device=self.keys.device)
        j = hash32(idx * _GOLDEN + 0x632BE5AB)
        return _hash32_bits(_as_int32(k)[:, None] ^ _as_int32(j))

    def uniform(self, *shape: int) -> torch.Tensor:
        """[B, *shape] uniform on the open interval (0, 1), 32 bits of resolution."""
        n = math.prod(shape)
        u = _unit_interval(self._words(n))
        return u.reshape(self.batch_size, *shape).to(self.dtype)

    def normal(self, *shape: int) -> torch.Tensor:
        """[B, *shape] standard normal (Box–Muller on two uniforms per number, in float64)."""
        n = math.prod(shape)
        w = _unit_interval(self._words(2 * n))
        u1, u2 = w[:, :n], w[:, n:]
        z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
        return z.reshape(self.batch_size, *shape).to(self.dtype)

    def bernoulli(self, p: float, *shape: int) -> torch.Tensor:
        """[B, *shape] booleans, True with probability p."""
        return self.uniform(*shape) < p
