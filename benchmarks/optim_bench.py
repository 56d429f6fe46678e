"""The step time of :class:`optenv.LearnedOptimizer` against ``torch.optim.Adam`` (issue 17).

From the repository root::

    python -m benchmarks.optim_bench [--params 1000000] [--device cpu|cuda] [--threads N]
        [--rounds R]

The model is an MLP ``n_in``-``n_in``-1 with about ``--params`` parameters (a 1000-1000-1 net
for 10^6: 1 002 001 parameters, two weight matrices and two biases), trained on a fixed batch
of ``--batch`` random inputs with the squared error. Each optimiser takes ``--warmup`` untimed
steps, then ``--steps`` timed ones; the closure's time (forward, backward) is measured inside
each step and subtracted, so ``step_s`` is the optimiser's own work: for Adam its update, for a
learned optimiser the observation's update, the rows, the ONE batched policy call over all
coordinates and the update. ``iteration_s`` is closure + step, what a training loop pays.
``--rounds R`` runs Adam and every learned optimiser R times in turn (on a shared machine the
load then falls on all of them alike); medians over all timed steps; ``step_over_adam`` and
``iteration_over_adam`` are the ratios to Adam's medians (issue 17's target:
``step_over_adam`` <= 3 on the CPU). ``step_cpu_s`` is the step's CPU time (the process's, all
threads; on the CPU): on a machine shared with other jobs the wall time also counts the time
the scheduler gave to them, the CPU time much less so, and ``step_cpu_over_adam`` is its ratio.

Learned optimisers timed (``--policies``, comma-separated): the shipped pretrained names, and
``psi-mlp`` (Ψ features, k = 3, MLP with one hidden layer of 50), ``psi-mlp8`` (the same
with 8 hidden units), ``psi-lstm`` (Ψ, LSTM of 20
cells), ``2016-mlp`` (the 2016 row, H = 25, k = 76, MLP 50) — fresh policies of the shapes the
trainers make, since the time depends on the architecture, not the weights.

One JSON object per line: first the device, then one per optimiser.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

import optenv
from optenv.policy import CoordinatewisePolicy

#: The fresh policies (name → constructor), the shapes the trainers build by default.
FRESH: dict[str, Callable[[], CoordinatewisePolicy]] = {
    "psi-mlp": lambda: CoordinatewisePolicy(3, features="li-malik-2017-psi", hidden=(50,)),
    "psi-mlp8": lambda: CoordinatewisePolicy(3, features="li-malik-2017-psi", hidden=(8,)),
    "psi-lstm": lambda: CoordinatewisePolicy(3, features="li-malik-2017-psi", hidden=(20,),
                                             cell="lstm"),
    "2016-mlp": lambda: CoordinatewisePolicy(76, features="li-malik-2016", hidden=(50,)),
}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _model(params: int, device: torch.device) -> tuple[nn.Module, int]:
    """An n-n-1 MLP with about ``params`` parameters (n² + 2n + 1 of them)."""
    n = max(1, int((params ** 0.5) - 1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(n, n), nn.ReLU(), nn.Linear(n, 1)).to(device)
    return model, n


def time_optimizer(make: Callable[[Any], torch.optim.Optimizer], params: int, batch: int,
                   warmup: int, steps: int, device: torch.device) -> dict[str, Any]:
    """Median step and iteration times of one optimiser on a fresh model (module docstring)."""
    model, n = _model(params, device)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, n, generator=g).to(device)
    y = torch.randn(batch, 1, generator=g).to(device)
    opt = make(model.parameters())
    spent = [0.0, 0.0]  # the closure's wall and CPU seconds in this iteration

    def closure() -> torch.Tensor:
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        opt.zero_grad()
        loss = (model(x) - y).square().mean()
        loss.backward()
        _sync(device)
        spent[0] += time.perf_counter() - t0
        spent[1] += time.process_time() - c0
        return loss

    step_s, iter_s, cpu_s = [], [], []
    for i in range(warmup + steps):
        spent[0] = spent[1] = 0.0
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        if isinstance(opt, optenv.LearnedOptimizer):
            loss = opt.step(closure)
        else:
            loss = closure()
            opt.step()
        _sync(device)
        total, cpu = time.perf_counter() - t0, time.process_time() - c0
        if i >= warmup:
            step_s.append(total - spent[0])
            iter_s.append(total)
            cpu_s.append(cpu - spent[1])
    return {"params": sum(p.numel() for p in model.parameters()), "step_times": step_s,
            "iteration_times": iter_s, "cpu_times": cpu_s, "final_loss": float(loss.detach())}


def _merged(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians (and extremes) over every timed step of every round."""
    step_s = [t for r in rounds for t in r["step_times"]]
    iter_s = [t for r in rounds for t in r["iteration_times"]]
    cpu_s = [t for r in rounds for t in r["cpu_times"]]
    return {"params": rounds[0]["params"], "step_s": statistics.median(step_s),
            "step_cpu_s": statistics.median(cpu_s),
            "iteration_s": statistics.median(iter_s), "step_min_s": min(step_s),
            "step_max_s": max(step_s), "final_loss": rounds[-1]["final_loss"],
            "steps": len(step_s), "rounds": len(rounds)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_bench",
                                 description=__doc__.split("\n")[0])
    ap.add_argument("--params", type=int, default=1_000_000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=1,
                    help="repeat Adam and every learned optimiser this many times, "
                         "interleaved; medians over all rounds' steps")
    ap.add_argument("--policies", default=None,
                    help="comma-separated: pretrained names and " + ", ".join(FRESH)
                         + " (default: all of them)")
    args = ap.parse_args(argv)
    names = args.policies.split(",") if args.policies else [*optenv.pretrained.names(), *FRESH]
    try:
        device = torch.device(args.device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError("--device: got cuda, but CUDA is not available here")
        unknown = [n for n in names if n not in FRESH and n not in optenv.pretrained.names()]
        if unknown:
            raise ValueError(f"--policies: got {unknown}, allowed: "
                             + ", ".join([*optenv.pretrained.names(), *FRESH]))
        if args.params < 4 or args.steps < 1 or args.warmup < 0 or args.rounds < 1:
            raise ValueError(f"--params >= 4, --steps >= 1, --warmup >= 0, --rounds >= 1; got "
                             f"{args.params}, {args.steps}, {args.warmup}, {args.rounds}")
    except (ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    print(json.dumps({"bench": "device", "device": str(device),
                      "name": torch.cuda.get_device_name(device) if device.type == "cuda"
                      else platform.processor() or platform.machine(),
                      "threads": torch.get_num_threads(), "torch": torch.__version__,
                      "loadavg": os.getloadavg()[0]}),
          flush=True)
    common = (args.params, args.batch, args.warmup, args.steps, device)
    makers: dict[str, Callable[[Any], torch.optim.Optimizer]] = {
        "adam": lambda p: torch.optim.Adam(p, lr=1e-3)}
    for name in names:
        policy = FRESH[name]() if name in FRESH else name
        makers[name] = lambda p, pol=policy: optenv.LearnedOptimizer(p, pol)
    records: dict[str, list[dict[str, Any]]] = {name: [] for name in makers}
    for _round in range(args.rounds):  # interleaved: a shared machine's load hits all alike
        for name, make in makers.items():
            records[name].append(time_optimizer(make, *common))
    adam = _merged(records["adam"])
    print(json.dumps({"bench": "optim", "optimizer": "adam", **adam}), flush=True)
    for name in names:
        rec = _merged(records[name])
        print(json.dumps({"bench": "optim", "optimizer": name, **rec,
                          "step_over_adam": rec["step_s"] / adam["step_s"],
                          "iteration_over_adam": rec["iteration_s"] / adam["iteration_s"],
                          "step_cpu_over_adam": rec["step_cpu_s"] / adam["step_cpu_s"],
                          "loadavg_end": os.getloadavg()[0]}),
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
