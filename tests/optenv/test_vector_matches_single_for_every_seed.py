"""The README's promise, bit for bit and by construction: after ``reset(seed=s)``, env i of the
vector env runs exactly what the single env runs after ``reset(seed=s + i)``.

Why it holds: instance data come from counter-based hashes (optenv.rng), and every family's f and
∇f give an instance the same bits whatever batch it sits in. The second part used to fail by
chance: ``torch.sigmoid`` and ``softplus`` round differently in the SIMD body and the scalar tail
of a CPU kernel, so LogisticRegression's f and ∇f depended on an instance's position in the
flattened batch (7 of 60 seeds differed by one ulp at N = 3). The tests below sweep every
position of every batch size up to a few SIMD widths, and many seeds through the envs, so a
position-dependent kernel cannot pass by the luck of the seeds.
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import optenv
from optenv.families import make_family
from optenv.families.batch_invariant import sigmoid, softplus

FAMILIES = ["Quadratic", "LogisticRegression", "RobustRegression", "NeuralNet"]


@pytest.mark.parametrize("fn,reference", [(sigmoid, torch.sigmoid), (softplus, F.softplus)],
                         ids=["sigmoid", "softplus"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
def test_batch_invariant_functions_give_every_element_the_same_bits_at_any_position(
        fn, reference, dtype):
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(200, generator=gen, dtype=torch.float64).to(dtype) * 8
    whole = fn(z)
    for length in range(1, 70):  # beyond 2 x 16 lanes (AVX-512, float32): every tail length
        for start in (0, 1, 5, 17, 64):
            np.testing.assert_array_equal(fn(z[start:start + length]).numpy(),
                                          whole[start:start + length].numpy())
    eps = torch.finfo(dtype).eps
    torch.testing.assert_close(whole, reference(z), rtol=4 * eps, atol=0.0)


def _sigmoid_derivatives(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """σ'(z) = e / (1 + e)² and σ''(z) = σ'(z) · sign(z) · (e − 1) / (1 + e), e = exp(−|z|):
    the forms without cancellation."""
    e = torch.exp(-z.abs())
    first = e / (1 + e) ** 2
    return first, first * torch.sign(z) * (e - 1) / (1 + e)


@pytest.mark.parametrize("fn", [sigmoid, softplus], ids=["sigmoid", "softplus"])
def test_batch_invariant_functions_have_finite_exact_derivatives_from_minus_to_plus_1000(fn):
    """BPTT differentiates through ∇f (sigmoid) and GPS's cost takes f's Hessian (softplus):
    the derivatives must be right at 0 and finite where exp(−z) overflows."""
    z = torch.tensor([-1000.0, -40.0, -1.0, 0.0, 0.5, 20.0, 21.0, 1000.0],
                     dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(fn(z).sum(), z, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), z)
    d1, d2 = _sigmoid_derivatives(z.detach())
    want = (d1, d2) if fn is sigmoid else (torch.sigmoid(z.detach()), d1)
    if fn is softplus:  # z itself above the threshold, as torch's softplus: slope 1, no curvature
        above = z.detach() > 20
        want = (torch.where(above, 1.0, want[0]), torch.where(above, 0.0, want[1]))
    torch.testing.assert_close(g.detach(), want[0], rtol=1e-12, atol=1e-300)
    # autograd's second derivative of log1p(exp(z)) cancels near z = 20: 1e-16 absolute
    torch.testing.assert_close(h, want[1], rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("name", FAMILIES)
def test_every_instance_gets_the_same_f_and_gradient_alone_and_at_every_batch_position(
        name, dtype):
    fam = make_family(name)
    n = 40
    data, x0 = fam.sample(list(range(n)), dtype=dtype)
    gen = torch.Generator().manual_seed(1)
    x = x0 + torch.randn(x0.shape, generator=gen, dtype=torch.float64).to(dtype)
    alone = [fam.value_and_grad(x[i:i + 1], {k: v[i:i + 1] for k, v in data.items()})
             for i in range(n)]
    for size in (2, 3, 5, 8, 13, 17, 33, 40):
        for start in range(0, n - size + 1, max(1, (n - size) // 3)):
            sl = slice(start, start + size)
            f, g = fam.value_and_grad(x[sl], {k: v[sl] for k, v in data.items()})
            for j in range(size):
                f1, g1 = alone[start + j]
                assert torch.equal(f[j:j + 1], f1) and torch.equal(g[j:j + 1], g1), (
                    size, start, j)


@pytest.mark.parametrize("env_id", optenv.BUILTIN_IDS, ids=lambda i: i.split("/")[1])
def test_env_i_equals_the_single_env_of_seed_s_plus_i_bit_for_bit_for_64_seeds(env_id):
    """64 envs (64 seeds) over two episodes of 4 steps with NEXT_STEP autoresets: observations,
    rewards, flags and f equal the single envs' exactly."""
    n, horizon = 64, 4
    venv = gym.make_vec(env_id, num_envs=n, vectorization_mode="vector_entry_point",
                        max_episode_steps=horizon)
    singles = [gym.make(env_id, max_episode_steps=horizon) for _ in range(n)]
    obs, infos = venv.reset(seed=1000)
    outs = [env.reset(seed=1000 + i) for i, env in enumerate(singles)]
    np.testing.assert_array_equal(obs.numpy(), np.stack([o for o, _ in outs]))
    _assert_same(infos["f"], [i["f"] for _, i in outs])
    rng = np.random.default_rng(0)
    for step in range(2 * horizon + 1):
        actions = rng.uniform(-1.2, 1.2, (n, venv.family.d))
        obs, rew, term, trunc, infos = venv.step(torch.as_tensor(actions))
        if step == horizon:  # NEXT_STEP: the envs that ended restart, ignoring the action
            outs = [env.reset() for env in singles]
            s_obs = np.stack([o for o, _ in outs])
            s_f = [i["f"] for _, i in outs]
            assert not rew.any() and not term.any() and not trunc.any()
        else:
            steps = [env.step(a) for env, a in zip(singles, actions, strict=True)]
            s_obs = np.stack([s[0] for s in steps])
            s_f = [s[4]["f"] for s in steps]
            _assert_same(rew, [s[1] for s in steps])
            assert term.tolist() == [s[2] for s in steps]
            assert trunc.tolist() == [s[3] for s in steps]
        np.testing.assert_array_equal(obs.numpy(), s_obs)
        _assert_same(infos["f"], s_f)


def _assert_same(batched: torch.Tensor, singles: list) -> None:
    """The vector env's values equal the single envs', in the vector env's dtype (its rewards
    may be float32 where the single env returns Python floats)."""
    got = batched.numpy()
    np.testing.assert_array_equal(got, np.asarray(singles, dtype=np.float64).astype(got.dtype))
