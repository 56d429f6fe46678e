"""Fixtures shared by the GPS tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def one_thread() -> Iterator[None]:
    """The problems are tiny: one torch thread avoids oversubscription on a busy 2-core box
    (and the caller's thread count is restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
