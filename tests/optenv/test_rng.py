"""Counter-based random numbers: determinism, disjoint splits, distribution moments."""

from __future__ import annotations

import math

import pytest
import torch

from optenv.rng import (
    SPLITS,
    KeyedRNG,
    _as_int32,
    _hash32_bits,
    _unit_interval,
    hash32,
    instance_keys,
    split_index,
)


def test_hash32_is_a_deterministic_32_bit_bijection_on_a_sample():
    x = torch.arange(0, 1 << 16, dtype=torch.int64) * 65537 + 12345
    h = hash32(x)
    assert torch.equal(h, hash32(x.clone()))
    assert ((h >= 0) & (h < 2**32)).all()
    assert torch.unique(h).numel() == x.numel()
    # Only the low 32 bits matter.
    assert torch.equal(hash32(x + (7 << 32)), h)


def _lowbias32_int64(x: torch.Tensor) -> torch.Tensor:
    """Wellons' lowbias32 written plainly on int64 values: the reference the hash is held to."""
    m = 0xFFFFFFFF
    x = x & m
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & m
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_hash32_is_lowbias32_on_the_low_32_bits():
    x = torch.tensor([0, 1, 2, 0x12345678, 2**31, 2**32 - 1, 2**40 + 5], dtype=torch.int64)
    torch.testing.assert_close(hash32(x), _lowbias32_int64(x), rtol=0, atol=0)
    assert int(hash32(torch.tensor([1]))[0]) == 0x688990C0  # pinned: every draw rests on it


def test_the_int32_hash_of_a_draws_words_gives_the_same_bits_as_hash32():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randint(0, 2**32, (1 << 16,), generator=g, dtype=torch.int64),
                   torch.tensor([0, 1, 2**31 - 1, 2**31, 2**32 - 1])])
    bits = _hash32_bits(_as_int32(x))
    assert bits.dtype == torch.int32
    assert torch.equal(bits.to(torch.int64) & 0xFFFFFFFF, hash32(x))
    assert torch.equal(hash32(x), _lowbias32_int64(x))
    # the words' unit-interval values are those of the unsigned words
    want = (hash32(x).to(torch.float64) + 0.5) / 2**32
    assert torch.equal(_unit_interval(bits), want)


def test_instance_keys_are_deterministic_and_broadcast():
    a = instance_keys([1, 2, 3], [0, 0, 5], "train")
    b = instance_keys(torch.tensor([1, 2, 3]), torch.tensor([0, 0, 5]), "train")
    assert a.dtype == torch.int64 and a.shape == (3,)
    assert torch.equal(a, b)
    c = instance_keys(7, [0, 1, 2, 3])
    assert c.shape == (4,)
    assert torch.equal(c[2:3], instance_keys([7], [2]))


def test_split_is_the_top_key_bit_so_train_and_test_never_share_a_key():
    seeds = torch.arange(0, 20000, dtype=torch.int64)
    train = instance_keys(seeds, 0, "train")
    test = instance_keys(seeds, 0, "test")
    assert (train >= 0).all(), "train keys have the top bit clear"
    assert (test < 0).all(), "test keys have the top bit set"
    big = torch.tensor([2**62, 2**63 - 1, 2**32, 2**32 + 1], dtype=torch.int64)
    assert (instance_keys(big, 10**12, "train") >= 0).all()
    assert (instance_keys(big, 10**12, "test") < 0).all()


def test_distinct_seed_episode_pairs_get_distinct_keys():
    seeds = torch.arange(200, dtype=torch.int64).repeat_interleave(100)
    episodes = torch.arange(100, dtype=torch.int64).repeat(200)
    keys = torch.cat([instance_keys(seeds, episodes, s) for s in SPLITS])
    assert torch.unique(keys).numel() == keys.numel()
    # High seed bits matter too.
    hi = instance_keys(torch.tensor([5, 5 + (1 << 32), 5 + (1 << 40)]), 0)
    assert torch.unique(hi).numel() == 3


def test_unknown_split_raises_value_error_listing_the_allowed_ones():
    with pytest.raises(ValueError, match=r"split.*'train'.*'test'"):
        split_index("validation")
    with pytest.raises(ValueError, match="split"):
        instance_keys([0], 0, "eval")


def test_keyed_rng_rejects_keys_that_are_not_1d_int64():
    with pytest.raises(ValueError, match="keys"):
        KeyedRNG(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="keys"):
        KeyedRNG(torch.zeros(2, 2, dtype=torch.int64))


def test_same_keys_give_the_same_numbers_and_each_call_a_new_stream():
    keys = instance_keys([3, 4], 0)
    r1, r2 = KeyedRNG(keys), KeyedRNG(keys.clone())
    a1, b1 = r1.normal(5), r1.normal(5)
    a2, b2 = r2.normal(5), r2.normal(5)
    assert torch.equal(a1, a2) and torch.equal(b1, b2)
    assert not torch.equal(a1, b1)
    assert not torch.equal(a1[0], a1[1])


def test_a_row_depends_only_on_its_own_key():
    keys = instance_keys([10, 11, 12, 13], [0, 1, 2, 3])
    batch = KeyedRNG(keys)
    alone = KeyedRNG(keys[2:3])
    torch.testing.assert_close(batch.uniform(3, 2)[2], alone.uniform(3, 2)[0], rtol=0, atol=0)
    torch.testing.assert_close(batch.normal(7)[2], alone.normal(7)[0], rtol=0, atol=0)


def test_dtype_of_draws_follows_the_rng_dtype():
    rng = KeyedRNG(instance_keys([0], 0), dtype=torch.float32)
    assert rng.normal(2).dtype == torch.float32
    assert rng.uniform(2).dtype == torch.float32
    assert rng.bernoulli(0.5, 2).dtype == torch.bool
    assert rng.normal(3, 4).shape == (1, 3, 4)


N_MOMENT = 200_000


def _many(split: str = "train") -> KeyedRNG:
    return KeyedRNG(instance_keys(torch.arange(N_MOMENT // 100), 0, split))


@pytest.mark.parametrize("split", SPLITS)
def test_uniform_is_in_the_open_unit_interval_with_the_right_moments(split):
    u = _many(split).uniform(100).reshape(-1)
    assert (u > 0).all() and (u < 1).all()
    se = math.sqrt(1 / 12 / u.numel())
    assert abs(float(u.mean()) - 0.5) < 5 * se
    assert abs(float(u.var()) - 1 / 12) < 0.002
    hist = torch.histc(u, bins=10, min=0.0, max=1.0) / u.numel()
    assert (hist - 0.1).abs().max() < 0.005


@pytest.mark.parametrize("split", SPLITS)
def test_normal_has_zero_mean_unit_variance_and_gaussian_tails(split):
    z = _many(split).normal(100).reshape(-1)
    assert torch.isfinite(z).all()
    n = z.numel()
    assert abs(float(z.mean())) < 5 / math.sqrt(n)
    assert abs(float(z.var()) - 1.0) < 0.02
    assert abs(float((z**3).mean())) < 0.05
    assert abs(float((z**4).mean()) - 3.0) < 0.1
    assert abs(float((z.abs() > 1.96).double().mean()) - 0.05) < 0.005


def test_bernoulli_frequency_matches_p():
    rng = _many()
    for p in (0.1, 0.5, 0.9):
        freq = float(rng.bernoulli(p, 100).double().mean())
        assert abs(freq - p) < 5 * math.sqrt(p * (1 - p) / N_MOMENT)


def test_consecutive_streams_and_neighbouring_keys_are_uncorrelated():
    rng = _many()
    a, b = rng.normal(100).reshape(-1), rng.normal(100).reshape(-1)
    corr = float(torch.corrcoef(torch.stack([a, b]))[0, 1])
    assert abs(corr) < 0.02
    rows = _many().normal(100)
    corr_rows = float(torch.corrcoef(torch.stack([rows[:-1].reshape(-1),
                                                  rows[1:].reshape(-1)]))[0, 1])
    assert abs(corr_rows) < 0.02
