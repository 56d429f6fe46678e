"""The shared capture-with-fallback logic (optenv.cuda_graphs), with torch.cuda's graph and stream
calls replaced by fakes so it runs without a GPU; the real captures run in the CUDA-only tests of
the vector env, the LQR and the policy training."""

from __future__ import annotations

import contextlib

import pytest
import torch

from optenv import cuda_graphs


class _FakeStream:
    def __init__(self, log: list[str]) -> None:
        self.log = log

    def wait_stream(self, other: object) -> None:
        self.log.append("wait")


@pytest.fixture
def fake_cuda(monkeypatch):
    log: list[str] = []
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: _FakeStream(log))
    monkeypatch.setattr(torch.cuda, "current_stream", lambda device=None: _FakeStream(log))
    monkeypatch.setattr(torch.cuda, "stream",
                        lambda s: contextlib.nullcontext(log.append("on side stream")))
    monkeypatch.setattr(torch.cuda, "CUDAGraph", lambda: "graph")
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: log.append("sync"))
    return monkeypatch, log


def test_warm_up_runs_the_work_once_on_a_side_stream_between_two_joins(fake_cuda):
    _mp, log = fake_cuda
    cuda_graphs.warm_up(lambda: log.append("work"))
    assert log == ["wait", "on side stream", "work", "wait"]


def test_capture_records_the_work_and_returns_the_graph(fake_cuda):
    mp, log = fake_cuda
    mp.setattr(torch.cuda, "graph", lambda g: contextlib.nullcontext())
    assert cuda_graphs.capture(lambda: log.append("work"), "x", "going on") == "graph"
    assert log == ["work"]


def test_a_failed_capture_warns_synchronises_and_returns_none(fake_cuda):
    mp, log = fake_cuda

    @contextlib.contextmanager
    def failing(g):
        yield
        raise RuntimeError("operation not permitted when stream is capturing")

    mp.setattr(torch.cuda, "graph", failing)
    with pytest.warns(RuntimeWarning, match=r"capture of the step failed .*; stepping eagerly"):
        assert cuda_graphs.capture(lambda: None, "the step", "stepping eagerly") is None
    assert log == ["sync"]
