"""Shared helpers for the optenv test suite."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import optenv

#: The only warnings the env checkers may emit: Gymnasium's (and SB3's) notes that the
#: observation Box is unbounded, which it is by design (gradients and steps are unbounded).
INFINITE_BOUND_WARNING = re.compile(
    r"(minimum value is -infinity|maximum value is infinity|infinite.*bound|bound.*infinit)",
    re.IGNORECASE,
)


@contextmanager
def only_infinite_bound_warnings() -> Iterator[list[warnings.WarningMessage]]:
    """Record every warning in the block; fail on any that is not an infinite-bound note."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught
    unexpected = [str(w.message) for w in caught if not INFINITE_BOUND_WARNING.search(
        str(w.message))]
    assert not unexpected, f"unexpected warnings: {unexpected}"


@pytest.fixture
def no_unexpected_warnings():
    """The context manager :func:`only_infinite_bound_warnings`, for tests to use."""
    return only_infinite_bound_warnings


@pytest.fixture(params=optenv.BUILTIN_IDS, ids=lambda i: i.split("/")[1])
def env_id(request: pytest.FixtureRequest) -> str:
    """Every registered built-in id."""
    return request.param


@pytest.fixture(autouse=True, scope="session")
def sb3_logs_in_the_session_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """SB3's default logger makes an ``SB3-<timestamp>`` folder in the system temp dir on every
    ``learn`` call of a model without a logger of its own (the tests that use SB3 directly, as a
    user would); ``SB3_LOGDIR`` sends them to pytest's temp dir instead."""
    patch = pytest.MonkeyPatch()
    patch.setenv("SB3_LOGDIR", str(tmp_path_factory.mktemp("sb3-logs")))
    yield
    patch.undo()


class _TouchOnUnpickle:
    """Unpickling this creates ``marker`` (its pickle calls ``open(marker, "w")``): what a
    crafted file does to whoever unpickles it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.marker), "w")


@pytest.fixture
def armed(tmp_path: Path) -> tuple[Path, object]:
    """``(marker, obj)``: ``obj`` pickled into a file would create ``marker`` when unpickled;
    a test that reads such a file proves it never was by the marker's absence."""
    marker = tmp_path / "unpickled-marker"
    return marker, _TouchOnUnpickle(marker)
