"""A finite-difference check of meta-gradients, shared by the BPTT test files."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import pytest
import torch


def assert_grads_match_finite_differences(params: Sequence[torch.Tensor],
                                          loss_fn: Callable[[], torch.Tensor], *,
                                          n_checks: int = 6, abs_tol: float = 1e-8) -> None:
    """Autograd's gradient of ``loss_fn()`` equals central differences at ``n_checks``
    randomly drawn parameter entries (eps 1e-6, rel 1e-5)."""
    params = list(params)
    grads = torch.autograd.grad(loss_fn(), params)
    gen = torch.Generator().manual_seed(1)
    eps = 1e-6
    for _ in range(n_checks):
        k = int(torch.randint(len(params), (1,), generator=gen))
        idx = int(torch.randint(params[k].numel(), (1,), generator=gen))
        flat = params[k].data.view(-1)
        orig = float(flat[idx])
        with torch.no_grad():
            flat[idx] = orig + eps
            up = float(loss_fn())
            flat[idx] = orig - eps
            down = float(loss_fn())
            flat[idx] = orig
        fd = (up - down) / (2 * eps)
        assert grads[k].view(-1)[idx].item() == pytest.approx(fd, rel=1e-5, abs=abs_tol)
