"""Benchmarks of the batched GPS numerics against the per-condition numpy loop.

From the repository root (``benchmarks`` is not an installed package)::

    python -m benchmarks.gps_bench lqr [--quick] [--device cpu|cuda] [--dtype float64|float32]
    python -m benchmarks.gps_bench dynamics [--quick] [...]

Each line of output is one JSON object naming the device. For every configuration (B conditions,
T steps, dX, dU) ``lqr`` reports the time of a full :func:`gps.lqr.kl_constrained_lqr` call (eta
search included) and of one backward pass, for the batched version and for the per-condition
numpy loop of :mod:`benchmarks.reference`, the FLOP count of one backward pass
(B*T*(2 dX^2 n + 2 n^2 dX + 2 dX^2 dU), n = dX + dU) and the fraction of the device's peak.
The full solve is timed ``--repeats`` times (on CUDA after an untimed warm-up call; on the CPU
the first call is the first repeat):
``batched_full_median_s`` (with ``batched_full_s``, the best, and ``batched_full_max_s``, the
spread); ``speedup_full_median`` is the loop's time over that median. ``iterations_mean`` /
``iterations_max`` are the dual iterations per condition (the lock-step batch runs until the
slowest condition is done). ``--compare-general`` (dU = 1) also times the general passes
(``gps.lqr.DU1_FAST_PATH`` off: the code before the dU = 1 passes existed), alternating with
the dU = 1 passes in one process, so both see the same load on a shared machine
(``speedup_du1_over_general_median``). ``--no-backward`` skips the separate backward-pass
timing (large B).
The loop is linear in B, so it is timed on at most ``--loop-conditions`` conditions or
``--loop-seconds`` and scaled to B (``loop_extrapolated``). Configurations whose inputs would not
fit in ``--max-gib`` of memory or whose estimated time exceeds ``--max-seconds`` are reported as
skipped, not run. ``dynamics`` reports the same for the GMM prior (EM with a fixed iteration
budget, from the same initialisation) and the per-step fit.

The problem generators (:func:`random_lqr_problem`, :func:`random_linear_gaussian_data`) are also
the tests' inputs. Only the public API of :mod:`gps` is used: the backward pass is timed alone on
a problem prepared once (:func:`gps.lqr.prepare_lqr`, then :func:`gps.lqr.lqr_backward`).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import fields
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from benchmarks import reference
from gps import lqr as lqr_module
from gps.controller import LinearGaussianController
from gps.cost import QuadraticCost
from gps.dynamics import LinearGaussianDynamics, fit_linear_gaussian
from gps.gmm import GMM, fit_gmm, n_clusters_for
from gps.lqr import kl_constrained_lqr, lqr_backward, prepare_lqr
from gps.prior import GMMPrior

LQR_GRID = [(B, T, dX, dU) for (dX, dU) in ((20, 2), (100, 10), (233, 4))
            for T in (40, 100) for B in (1, 64, 256, 1024)]
LQR_QUICK = [(1, 40, 20, 2), (64, 40, 20, 2), (16, 40, 100, 10)]
DYN_GRID = [(B, 20, T, dX, dU) for (dX, dU) in ((20, 2), (100, 10))
            for T in (40, 100) for B in (1, 64, 256)]
DYN_QUICK = [(1, 20, 40, 20, 2), (16, 20, 40, 20, 2)]

# published dense peaks (FLOP/s) of data-centre GPUs: FP64 (tensor core) and FP32
_GPU_PEAKS = {
    "H100": {torch.float64: 67e12, torch.float32: 67e12},
    "H200": {torch.float64: 67e12, torch.float32: 67e12},
    "A100": {torch.float64: 19.5e12, torch.float32: 19.5e12},
}


class LQRInputs(NamedTuple):
    """The three containers :func:`gps.lqr.kl_constrained_lqr` takes, as one value:
    ``kl_constrained_lqr(*inputs, kl_step)``; with the conversions the bench and the tests need."""

    dyn: LinearGaussianDynamics
    cost: QuadraticCost
    prev: LinearGaussianController

    def map(self, fn: Callable[[Tensor], Tensor]) -> LQRInputs:
        """``fn`` applied to every tensor: ``lambda x: x.cuda()``, ``lambda x: x[3:]``..."""
        def each(obj: object) -> object:
            return type(obj)(**{f.name: fn(getattr(obj, f.name)) for f in fields(obj)})

        return LQRInputs(*(each(part) for part in self))  # type: ignore[arg-type]

    def numpy(self, b: int) -> list[np.ndarray]:
        """Condition b in the argument order of :func:`benchmarks.reference.kl_constrained_lqr_np`:
        Fm, fv, dyn_covar, x0mu, x0sigma, Cm, cv, K_prev, k_prev, pol_covar_prev (float64, CPU)."""
        d, c, p = self.dyn, self.cost, self.prev
        xs = (d.Fm, d.fv, d.dyn_covar, d.x0mu, d.x0sigma, c.Cm, c.cv, p.K, p.k, p.covar)
        return [x[b].double().cpu().numpy() for x in xs]


def random_lqr_problem(B: int, T: int, dX: int, dU: int, *, seed: int = 0,
                       dtype: torch.dtype = torch.float64,
                       device: str | torch.device = "cpu") -> LQRInputs:
    """A well-conditioned random batch for :func:`gps.lqr.kl_constrained_lqr`.

    Stable dynamics (spectral radius about 0.95), PD costs (c0 = 0), a random previous
    controller; with kl_step = 0.5 the eta search typically converges in 3 to 10 iterations.
    Drawn on ``device`` from a generator of that device (so a seed gives another problem on a GPU
    than on the CPU): at B=256, T=100, dX=100 a CPU draw took longer than the solves it feeds.
    """
    g = torch.Generator(device=device).manual_seed(seed)
    n = dX + dU
    dev = g.device

    def r(*s: int) -> Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64, device=dev)

    def spd(*s: int, scale: float, floor: float) -> Tensor:
        A = r(*s)
        return scale * A @ A.mT / s[-1] + floor * torch.eye(s[-1], dtype=torch.float64,
                                                          device=dev)

    Fx = 0.9 * torch.eye(dX, dtype=torch.float64, device=dev) + 0.05 * r(B, T, dX, dX) / \
        math.sqrt(dX)
    Fu = 0.3 * r(B, T, dX, dU) / math.sqrt(dU)
    # drawn in this order (the stream, hence every problem, is what it was as a keyword dict)
    dyn = LinearGaussianDynamics(
        Fm=torch.cat([Fx, Fu], -1), fv=0.1 * r(B, T, dX),
        dyn_covar=spd(B, T, dX, dX, scale=0.01, floor=1e-3),
        x0mu=r(B, dX), x0sigma=spd(B, dX, dX, scale=0.1, floor=0.01))
    Cm, cv = spd(B, T, n, n, scale=1.0, floor=0.1), r(B, T, n)
    cost = QuadraticCost(Cm, cv, torch.zeros(B, T, dtype=torch.float64, device=dev))
    prev = LinearGaussianController(
        K=0.1 * r(B, T, dU, dX) / math.sqrt(dX), k=0.1 * r(B, T, dU),
        covar=spd(B, T, dU, dU, scale=1.0, floor=0.5))
    return LQRInputs(dyn, cost, prev).map(lambda x: x.to(device=device, dtype=dtype))


def random_linear_gaussian_data(B: int, N: int, T: int, dX: int, dU: int, *, seed: int = 0,
                                noise: float = 0.05, dtype: torch.dtype = torch.float64,
                                device: str | torch.device = "cpu",
                                ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Samples X [B,N,T,dX], U [B,N,T,dU] of a known time-invariant linear-Gaussian system per
    condition; returns X, U, Fm_true [B,dX,dX+dU], fv_true [B,dX]. Drawn on ``device`` (see
    :func:`random_lqr_problem`)."""
    g = torch.Generator(device=device).manual_seed(seed)
    dev = g.device

    def r(*s: int) -> Tensor:
        return torch.randn(*s, generator=g, dtype=torch.float64, device=dev)

    A = 0.9 * torch.eye(dX, dtype=torch.float64, device=dev) + 0.05 * r(B, dX, dX) / \
        math.sqrt(dX)
    Bu = 0.3 * r(B, dX, dU) / math.sqrt(dU)
    c = 0.1 * r(B, dX)
    X = torch.empty(B, N, T, dX, dtype=torch.float64, device=dev)
    U = r(B, N, T, dU)
    X[:, :, 0] = r(B, N, dX)
    for t in range(T - 1):
        X[:, :, t + 1] = (X[:, :, t] @ A.mT + U[:, :, t] @ Bu.mT + c[:, None]
                          + noise * r(B, N, dX))
    conv = {"dtype": dtype, "device": device}
    return X.to(**conv), U.to(**conv), torch.cat([A, Bu], -1).to(**conv), c.to(**conv)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timeit(fn: Callable[[], object], device: torch.device, min_time: float = 0.2,
            max_reps: int = 20) -> float:
    """Best-of time of fn (seconds): repeats until min_time has elapsed or max_reps runs."""
    best = math.inf
    total, reps = 0.0, 0
    while reps < max_reps and (reps == 0 or total < min_time):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        dt = time.perf_counter() - t0
        best, total, reps = min(best, dt), total + dt, reps + 1
    return best


def _repeat(fn: Callable[[], object], device: torch.device, repeats: int) -> list[float]:
    """Wall times (seconds) of ``repeats`` calls of fn (none for repeats <= 0)."""
    out = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        out.append(time.perf_counter() - t0)
    return out


def device_info(device: torch.device, dtype: torch.dtype) -> dict[str, object]:
    """Name of the device and its peak FLOP/s: published for known GPUs, else a measured
    matmul (so 'fraction of peak' on a CPU means of its best dense-matmul throughput)."""
    n = 2048 if device.type == "cuda" else 1024
    a = torch.randn(n, n, dtype=dtype, device=device)
    t = _timeit(lambda: a @ a, device, min_time=1.0, max_reps=50)
    measured = 2 * n**3 / t
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = next((v[dtype] for k, v in _GPU_PEAKS.items() if k in name), None)
    else:
        threads = torch.get_num_threads()
        name = f"{platform.processor() or platform.machine()} CPU, {threads} torch threads"
        try:
            with open("/proc/cpuinfo") as fh:
                model = next((ln.split(":", 1)[1].strip() for ln in fh if "model name" in ln), "")
            if model:
                name = f"{model}, {threads} torch threads"
        except OSError:
            pass
        peak = None
    return {
        "device": name,
        "peak_flops": peak if peak is not None else measured,
        "peak_source": "published" if peak is not None else "measured matmul",
        "matmul_flops_measured": measured,
    }


def _time_loop(fn: Callable[[int], object], B: int, max_conditions: int,
               max_seconds: float) -> tuple[int, float]:
    """Time fn(b) for b = 0, 1, ... until B, max_conditions or max_seconds is reached; returns
    (conditions timed, time scaled to all B conditions: the loop is linear in B)."""
    total, nl = 0.0, 0
    while nl < min(B, max_conditions) and (nl == 0 or total < max_seconds):
        t0 = time.perf_counter()
        fn(nl)
        total += time.perf_counter() - t0
        nl += 1
    return nl, total * B / nl


def backward_flops(B: int, T: int, dX: int, dU: int) -> float:
    """FLOPs of one backward pass: per step and condition 2 dX^2 n + 2 n^2 dX + 2 dX^2 dU."""
    n = dX + dU
    return float(B * T * (2 * dX * dX * n + 2 * n * n * dX + 2 * dX * dX * dU))


def _lqr_bytes(B: int, T: int, dX: int, dU: int, itemsize: int, copies: float = 2.0) -> float:
    """Peak bytes: the inputs (Fm, Cm, dyn_covar and the controllers) plus ``copies`` times
    them: the problem generator's temporaries (about one more set), or the CUDA graphs' static
    copies of the problem (one per graph, each max_batch/B of it), whichever is larger."""
    n = dX + dU
    return (1.0 + copies) * itemsize * B * T * (dX * n + n * n + dX * dX + 4 * dU * n)


def _lqr_record(B: int, T: int, dX: int, dU: int, *, device: torch.device, dtype: torch.dtype,
                loop_conditions: int, max_gib: float, max_seconds: float,
                info: dict[str, object], loop_seconds: float, peak: float, repeats: int = 3,
                backward: bool = True, compare_general: bool = False,
                max_batch: int | None = None) -> dict[str, object]:
    """Time one LQR configuration (batched and loop); a "skipped" record if it cannot fit."""
    rec: dict[str, object] = {"bench": "lqr", "device": info["device"], "B": B, "T": T,
                              "dX": dX, "dU": dU, "dtype": str(dtype).replace("torch.", "")}
    flops = backward_flops(B, T, dX, dU)
    rec["backward_gflop"] = flops / 1e9
    graphs = (2 if compare_general and dU == 1 else 1) if device.type == "cuda" else 0
    copies = max(1.0, graphs * min(B, max_batch or B) / B)
    mem = _lqr_bytes(B, T, dX, dU, torch.finfo(dtype).bits // 8, copies) / 2**30
    est = 20 * 2 * flops / (0.5 * peak)  # ~20 evaluations of backward + forward
    if mem > max_gib or est > max_seconds:
        rec["skipped"] = (f"needs ~{mem:.1f} GiB (limit {max_gib}) / ~{est:.0f} s "
                          f"(limit {max_seconds})")
        return rec
    prob = random_lqr_problem(B, T, dX, dU, seed=B + T + dX, dtype=dtype, device=device)
    kl_step = 0.5

    def full(prob: LQRInputs = prob, kl_step: float = kl_step) -> object:
        return kl_constrained_lqr(*prob, kl_step, max_batch=max_batch)

    rec["max_batch"] = max_batch

    if device.type == "cuda":  # first call captures the CUDA graph: time it separately
        _sync(device)
        t0 = time.perf_counter()
        full()
        _sync(device)
        rec["batched_first_call_s"] = time.perf_counter() - t0
    # CUDA: one untimed warm-up call (besides the graph capture above); the CPU needs none, so
    # there the first call is the first timed repeat (B = 65536 solves take minutes)
    first: list[float] = []
    _sync(device)
    t0 = time.perf_counter()
    res = full()
    _sync(device)
    if device.type == "cpu":
        first.append(time.perf_counter() - t0)
    if compare_general and dU == 1:  # A/B in one process: the load on a shared machine hits both
        times, general = [], []
        if device.type == "cuda":  # the general passes get their own graph: capture it untimed
            lqr_module.DU1_FAST_PATH = False
            try:
                full()
            finally:
                lqr_module.DU1_FAST_PATH = True
        for i in range(max(1, repeats)):
            times += first if i == 0 and first else _repeat(full, device, 1)
            lqr_module.DU1_FAST_PATH = False
            try:
                general += _repeat(full, device, 1)
            finally:
                lqr_module.DU1_FAST_PATH = True
        rec["batched_full_general_median_s"] = statistics.median(general)
        rec["batched_full_general_min_s"] = min(general)
        rec["batched_full_general_max_s"] = max(general)
        rec["speedup_du1_over_general_median"] = statistics.median(general) / statistics.median(
            times)
    else:
        times = first + _repeat(full, device, repeats - len(first))
    rec["batched_full_s"] = min(times)
    rec["batched_full_median_s"] = statistics.median(times)
    rec["batched_full_max_s"] = max(times)
    rec["full_repeats"] = len(times)
    rec["n_evaluations"] = res.n_evaluations
    rec["converged"] = int(res.converged.sum())
    rec["iterations_mean"] = float(res.iterations.double().mean())
    rec["iterations_max"] = int(res.iterations.max())
    rec["used_cuda_graph"] = res.used_cuda_graph
    del res
    tb = math.nan
    if backward:  # the backward pass alone: validation and precomputation outside the clock
        p = prepare_lqr(*prob)
        eta = torch.ones(B, dtype=p.Fm.dtype, device=device)
        tb = _timeit(lambda p=p, eta=eta: lqr_backward(p, eta), device)
        del p
        rec["batched_backward_s"] = tb
        rec["batched_backward_gflops"] = flops / tb / 1e9
        rec["batched_backward_frac_peak"] = flops / tb / peak

    cpu = prob.map(lambda x: x.double().cpu())
    nl, loop_full = _time_loop(
        lambda b: reference.kl_constrained_lqr_np(*cpu.numpy(b), kl_step=kl_step),
        B, loop_conditions, loop_seconds)

    def loop_backward(b: int) -> object:
        Fm, fv, _, _, _, Cm, cv, K_prev, k_prev, pol_covar_prev = cpu.numpy(b)
        return reference.lqr_backward_np(Fm, fv, Cm, cv, K_prev, k_prev, pol_covar_prev, 1.0)

    rec["loop_conditions_timed"] = nl
    rec["loop_extrapolated"] = nl < B
    rec["loop_full_s"] = loop_full
    rec["speedup_full"] = loop_full / float(rec["batched_full_s"])  # type: ignore[arg-type]
    rec["speedup_full_median"] = loop_full / float(rec["batched_full_median_s"])  # type: ignore
    if backward:
        _, loop_bwd = _time_loop(loop_backward, B, loop_conditions, loop_seconds)
        rec["loop_backward_s"] = loop_bwd
        rec["loop_backward_frac_peak"] = flops / loop_bwd / peak
        rec["speedup_backward"] = loop_bwd / tb
    if device.type == "cpu":  # the process's peak so far (problem generation included)
        rec["peak_rss_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return rec


def bench_lqr(configs: Iterable[tuple[int, int, int, int]], device: torch.device,
              dtype: torch.dtype, loop_conditions: int, max_gib: float, max_seconds: float,
              info: dict[str, object], loop_seconds: float = 60.0, repeats: int = 3,
              backward: bool = True, compare_general: bool = False,
              max_batch: int | None = None) -> Iterable[dict[str, object]]:
    """One JSON-able record per configuration (see the module docstring)."""
    peak = float(info["peak_flops"])  # type: ignore[arg-type]
    for cfg in configs:
        yield _lqr_record(*cfg, device=device, dtype=dtype, loop_conditions=loop_conditions,
                          max_gib=max_gib, max_seconds=max_seconds, info=info,
                          loop_seconds=loop_seconds, peak=peak, repeats=repeats,
                          backward=backward, compare_general=compare_general,
                          max_batch=max_batch)


def _dynamics_record(B: int, N: int, T: int, dX: int, dU: int, *, device: torch.device,
                     dtype: torch.dtype, loop_conditions: int, max_gib: float,
                     info: dict[str, object], loop_seconds: float,
                     em_iters: int) -> dict[str, object]:
    """Time one dynamics configuration (GMM EM + per-step fit, batched and loop)."""
    rec: dict[str, object] = {"bench": "dynamics", "device": info["device"], "B": B, "N": N,
                              "T": T, "dX": dX, "dU": dU,
                              "dtype": str(dtype).replace("torch.", "")}
    D = 2 * dX + dU
    K = n_clusters_for(N * (T - 1))
    mem = 3 * (torch.finfo(dtype).bits // 8) * B * (T * D * D + K * N * T * D) / 2**30
    rec["em_iterations"] = em_iters
    rec["clusters"] = K
    if mem > max_gib:
        rec["skipped"] = f"needs ~{mem:.1f} GiB (limit {max_gib})"
        return rec
    X, U, _, _ = random_linear_gaussian_data(B, N, T, dX, dU, seed=B + T, dtype=dtype,
                                             device=device)
    pts = torch.cat([X[:, :, :-1], U[:, :, :-1], X[:, :, 1:]], -1).reshape(B, -1, D)
    # max_iter=0: fit_gmm's own random initialisation, no EM step; both EMs start from it
    init = fit_gmm(pts, K, generator=torch.Generator().manual_seed(0), max_iter=0, reg=1e-6)

    def em(pts: Tensor = pts, K: int = K, init: GMM = init) -> object:
        return fit_gmm(pts, K, init=init, max_iter=em_iters, tol=0.0)

    gmm = em()
    prior = GMMPrior(gmm, dX, dU)  # type: ignore[arg-type]
    rec["batched_gmm_s"] = _timeit(em, device, max_reps=3)
    rec["batched_fit_s"] = _timeit(
        lambda X=X, U=U, prior=prior: fit_linear_gaussian(X, U, prior), device, max_reps=5)
    Xn, Un = X.double().cpu().numpy(), U.double().cpu().numpy()
    pn = pts.double().cpu().numpy()
    gms: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    np_init = [x.double().cpu().numpy() for x in (init.mu, init.sigma, init.logmass)]
    nl, rec["loop_gmm_s"] = _time_loop(
        lambda b: gms.append(reference.gmm_em_np(
            pn[b], np_init[0][b], np_init[1][b], np_init[2][b], max_iter=em_iters, tol=0.0)),
        B, loop_conditions, loop_seconds)
    _, rec["loop_fit_s"] = _time_loop(
        lambda b: reference.fit_linear_gaussian_np(Xn[b], Un[b], 1e-6, gms[b]),
        nl, loop_conditions, loop_seconds)
    rec["loop_fit_s"] *= B / nl  # type: ignore[operator]
    rec["loop_conditions_timed"] = nl
    rec["loop_extrapolated"] = nl < B
    rec["speedup_gmm"] = rec["loop_gmm_s"] / rec["batched_gmm_s"]  # type: ignore[operator]
    rec["speedup_fit"] = rec["loop_fit_s"] / rec["batched_fit_s"]  # type: ignore[operator]
    return rec


def bench_dynamics(configs: Iterable[tuple[int, int, int, int, int]], device: torch.device,
                   dtype: torch.dtype, loop_conditions: int, max_gib: float,
                   info: dict[str, object], loop_seconds: float = 60.0,
                   em_iters: int = 20) -> Iterable[dict[str, object]]:
    """GMM prior (EM, fixed iteration budget) + per-step fit, batched vs per-condition loop."""
    for cfg in configs:
        yield _dynamics_record(*cfg, device=device, dtype=dtype,
                               loop_conditions=loop_conditions, max_gib=max_gib, info=info,
                               loop_seconds=loop_seconds, em_iters=em_iters)


def _parse_configs(text: str | None, width: int) -> list[tuple[int, ...]] | None:
    if not text:
        return None
    out = []
    for item in text.split(";"):
        try:
            vals = tuple(int(v) for v in item.split(","))
        except ValueError:
            vals = ()
        if len(vals) != width or min(vals) < 1:
            raise ValueError(f"--configs: each entry needs {width} comma-separated positive "
                             f"ints; got {item!r}")
        out.append(vals)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.gps_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("which", choices=["lqr", "dynamics"])
    ap.add_argument("--quick", action="store_true", help="small grid (under a minute on a CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float64", choices=["float64", "float32"])
    ap.add_argument("--configs", default=None,
                    help="';'-separated 'B,T,dX,dU' (lqr) or 'B,N,T,dX,dU' (dynamics) entries")
    ap.add_argument("--loop-conditions", type=int, default=64,
                    help="conditions the numpy loop is timed on (then scaled to B)")
    ap.add_argument("--max-gib", type=float, default=16.0)
    ap.add_argument("--max-seconds", type=float, default=120.0)
    ap.add_argument("--loop-seconds", type=float, default=None,
                    help="time budget per configuration for the numpy loop (default 60, quick 8)")
    ap.add_argument("--threads", type=int, default=1,
                    help="CPU threads for torch and numpy's BLAS (default 1: the reference loop "
                         "is single-core, and tiny batched ops only lose from threads)")
    ap.add_argument("--repeats", type=int, default=3,
                    help="lqr: timed full solves per configuration after one warm-up call "
                         "(median, min and max reported)")
    ap.add_argument("--compare-general", action="store_true",
                    help="lqr, dU = 1: also time the general passes (gps.lqr.DU1_FAST_PATH "
                         "off), alternating with the dU = 1 ones, --repeats times each")
    ap.add_argument("--max-batch", type=int, default=None,
                    help="lqr: kl_constrained_lqr's max_batch (solve in chunks of this many "
                         "conditions; bounds the CUDA graph's static copy of the problem)")
    ap.add_argument("--no-backward", action="store_true",
                    help="lqr: skip the separate timing of one backward pass (batched and loop)")
    args = ap.parse_args(argv)
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device cuda requested but CUDA is not available")
        dtype = getattr(torch, args.dtype)
        width = 4 if args.which == "lqr" else 5
        configs = _parse_configs(args.configs, width)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    loop_seconds = args.loop_seconds or (8.0 if args.quick else 60.0)
    torch.set_num_threads(max(1, args.threads))
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(max(1, args.threads))
    except ImportError:  # numpy keeps its default BLAS threads; recorded below
        pass
    info = device_info(device, dtype)
    print(json.dumps({"bench": "device", **info, "torch": torch.__version__,
                      "numpy": np.__version__}), flush=True)
    if args.which == "lqr":
        grid = configs or (LQR_QUICK if args.quick else LQR_GRID)
        records = bench_lqr(grid, device, dtype, args.loop_conditions,  # type: ignore[arg-type]
                            args.max_gib, args.max_seconds, info, loop_seconds,
                            repeats=args.repeats, backward=not args.no_backward,
                            compare_general=args.compare_general, max_batch=args.max_batch)
    else:
        grid = configs or (DYN_QUICK if args.quick else DYN_GRID)
        records = bench_dynamics(grid, device, dtype,  # type: ignore[arg-type]
                                 args.loop_conditions, args.max_gib, info, loop_seconds)
    for rec in records:
        print(json.dumps(rec), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
