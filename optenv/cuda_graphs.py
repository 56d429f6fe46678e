"""Capturing a piece of tensor work as a CUDA graph, with an eager fallback.

The vector env's step, the LQR's dual-search evaluation and the GPS policy's Adam steps are each
hundreds of small kernels whose launches cost more than their arithmetic; all three capture
them once and replay the graph. They share the same two moves, kept here: run the work eagerly
on a side stream first (a capture needs its allocations and lazily built state to exist), then
capture it, and if capture fails, warn and let the caller go on eagerly rather than fail.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

__all__ = ["capture", "warm_up"]


def warm_up(work: Callable[[], object], device: torch.device | None = None) -> None:
    """Run ``work`` eagerly on a side stream of ``device``, then join the current stream."""
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        work()
    torch.cuda.current_stream(device).wait_stream(side)


def capture(work: Callable[[], object], what: str, fallback: str,
            device: torch.device | None = None) -> torch.cuda.CUDAGraph | None:
    """``work`` captured as a CUDA graph (not run: replay it), or None after a RuntimeWarning
    "CUDA-graph capture of {what} failed (...); {fallback}" if the capture fails."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            work()
    except Exception as exc:  # any capture failure: the caller runs eagerly
        warnings.warn(f"CUDA-graph capture of {what} failed ({exc!r}); {fallback}",
                      RuntimeWarning, stacklevel=3)
        torch.cuda.synchronize(device)
        return None
    return graph
