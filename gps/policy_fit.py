"""The neural policy's side of GPS: its local linearisation and its precision-weighted training.

* :func:`linearise_policy` fits, for every condition and step at once, the linear-Gaussian
  ``pi(u|z) ≈ N(K z + k, S)`` that BADMM's KL-to-policy term and mirror-descent GPS's KL anchor
  need. As the reference code's ``PolicyPriorGMM``: a GMM over all of a condition's
  [z, pi(z)] points gives a normal-inverse-Wishart prior for the per-step Gaussian fit (N samples
  per step would not determine it alone); S adds the policy's own variance to the residual.
  Batched as :mod:`gps.dynamics` (the authors' code spends 44% of an iteration here, one
  condition and one step at a time).
* :func:`train_policy` regresses the policy's mean on the controllers' (BADMM: dual-adjusted)
  mean actions with the precision-weighted loss (u − μ)ᵀ P (u − μ), Adam, minibatches drawn
  from a seeded generator, and sets the policy's variance to the inverse of the mean precision
  (the closed-form optimum of the Gaussian's covariance, as the reference code).
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from gps.controller import LinearGaussianController
from gps.dynamics import condition_joint_gaussian
from gps.gmm import GMM, fit_gmm, n_clusters_for
from gps.prior import GMMPrior
from optenv.cuda_graphs import capture, warm_up
from optenv.distributed import Shard, all_gather_objects, sum_across
from optenv.policy import GaussianMLPPolicy

__all__ = ["linearise_policy", "policy_means", "train_policy"]


@torch.no_grad()
def policy_means(policy: GaussianMLPPolicy, obs: Tensor, chunk: int = 65536) -> Tensor:
    """The policy's mean actions at observations obs [..., obs_dim], in obs's dtype."""
    flat = obs.reshape(-1, obs.shape[-1])
    out = torch.cat([policy(flat[i:i + chunk]) for i in range(0, flat.shape[0], chunk)])
    return out.to(obs.dtype).reshape(*obs.shape[:-1], -1)


def linearise_policy(Z: Tensor, Upol: Tensor, pol_var: Tensor, *, prior: bool = True,
                     max_clusters: int = 20, min_samples_per_cluster: int = 20,
                     strength: float = 1.0, gmm_iters: int = 100, reg: float = 1e-6,
                     generator: torch.Generator | None = None, init: GMM | None = None,
                     shard: Shard | None = None
                     ) -> tuple[LinearGaussianController, GMM | None]:
    """pi(u|z) ≈ N(K_t z + k_t, S_t) per condition and step from Z [M,N,T,dX] and the policy's
    mean actions Upol [M,N,T,dU]; pol_var [dU] is the policy's own (diagonal) variance.

    Returns the linearisation and the prior's mixture (None without a prior); ``init``
    warm-starts that mixture's EM from a previous fit, as the reference code does. ``shard``:
    the M conditions are this rank's share of a run split across processes
    (:func:`gps.gmm.fit_gmm`)."""
    M, N, T, dX = Z.shape
    dU = Upol.shape[-1]
    pts = torch.cat([Z, Upol], -1).transpose(1, 2)  # [M,T,N,D]
    gmm = gmm_prior = None
    if prior:
        K = n_clusters_for(N * T, max_clusters, min_samples_per_cluster)
        gmm = fit_gmm(pts.reshape(M, T * N, -1), K, generator=generator, max_iter=gmm_iters,
                      init=init, shard=shard)
        gmm_prior = GMMPrior(gmm, dX, dU, strength)
    Kt, kt, S = condition_joint_gaussian(pts, dX, gmm_prior, reg)
    S = S + torch.diag_embed(pol_var.to(Z).expand(M, T, dU))
    return LinearGaussianController(Kt, kt, S), gmm


def train_policy(policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer, obs: Tensor,
                 target: Tensor, prec: Tensor, weight: Tensor, *, steps: int, batch_size: int,
                 generator: torch.Generator, cuda_graph: bool | None = None,
                 shard: Shard | None = None) -> float:
    """Fit the policy mean to ``target`` with the precision-weighted loss; returns the mean loss
    of the last tenth of the steps.

    obs [R,obs_dim], target [R,dU], prec [R,dU,dU], weight [R] (>= 0; rows with weight 0 are
    ignored). Weights are normalised to mean 1 over the used rows and capped at twice their
    median (the reference code's guard against a few huge BADMM weights). Precisions are divided
    by their mean trace / dU in the loss, so weight decay means the same whatever the
    controllers' scale; the policy's variance is set to 1 / diag(mean precision).

    The minibatch rows of all ``steps`` are drawn at once from ``generator`` (the same stream as
    one draw per step). ``cuda_graph`` (default: on CUDA when the optimizer is capturable)
    captures :data:`GRAPH_CHUNK` Adam steps as one CUDA graph and replays it: thousands of
    steps of a small MLP are otherwise bound by kernel launches, not arithmetic (measured on an
    H100 at the authors' settings: 30 of an iteration's 41 s). A failed capture warns and trains
    eagerly.

    ``shard`` (a run across processes, :class:`optenv.distributed.Shard` of the conditions):
    the rows are ``shard.count`` equal blocks, one per condition of this rank, and the policy
    is fitted to every rank's rows as one process holding them all would
    (:func:`_train_across_ranks`).
    """
    if shard is not None and shard.world.distributed:
        return _train_across_ranks(policy, optimizer, obs, target, prec, weight, steps=steps,
                                   batch_size=batch_size, generator=generator, shard=shard)
    use = weight > 0
    if not bool(use.any()):
        return math.nan
    dev = policy.mean_net[0].weight.device
    graphed = _use_cuda_graph(cuda_graph, optimizer, dev)
    mean_prec = prec[use].mean(0)
    adam_step = _precision_weighted_step(policy, optimizer, obs[use], target[use], prec[use],
                                         _capped_weights(weight[use]), mean_prec)
    R = int(use.sum())
    rows = torch.randint(0, R, (steps, min(batch_size, R)), generator=generator).to(dev)
    losses = _run_steps(policy, adam_step, rows, graphed)
    return _finish(policy, mean_prec, losses, steps)


def _train_across_ranks(policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer,
                        obs: Tensor, target: Tensor, prec: Tensor, weight: Tensor, *, steps: int,
                        batch_size: int, generator: torch.Generator, shard: Shard) -> float:
    """:func:`train_policy` on the union of every rank's rows, each rank holding its own.

    The objective is the single process's, term by term: the used rows are numbered as one
    process would (conditions in the batch's order, each condition's used rows in order), the
    weights' median, mean and the mean precision are taken over all ranks' rows, and every rank
    draws the same minibatch numbers from its copy of ``generator`` (in step on every rank). A
    rank computes the loss of the minibatch rows it holds, divided by the whole minibatch's
    size; ``DistributedDataParallel`` averages the ranks' gradients, so each rank back-propagates
    ``size`` times its share and the averaged gradient is the whole minibatch's. Every rank's
    Adam then takes the same step. What differs from one process is the order of the sums
    (per rank, then across ranks), so the result agrees to rounding, not bit for bit.

    Why DDP fits here: every rank runs the same number of steps, each a forward and backward
    pass of the same module; a rank whose share of a minibatch is empty back-propagates a zero
    loss and still joins the all-reduce. ``log_std`` takes no part in the loss, hence
    ``find_unused_parameters`` (DDP then leaves its gradient unset, as one process does). The
    steps run eagerly: a CUDA graph would have to capture DDP's all-reduce."""
    from torch.nn.parallel import DistributedDataParallel

    world = shard.world
    use = weight > 0
    used_local = use.reshape(shard.count, -1).sum(1)  # used rows per condition of this rank
    used = shard.gather(used_local).to(weight.device)  # ... per condition of the batch
    R = int(used.sum())
    if R == 0:
        return math.nan
    dev = policy.mean_net[0].weight.device
    mean_prec = sum_across(prec[use].sum(0), world) / R
    w = _capped_weights(weight[use], shard)
    B = min(batch_size, R)
    rows = torch.randint(0, R, (steps, B), generator=generator).to(weight.device)
    # a global row number -> (its condition, its place among that condition's used rows)
    ends = used.cumsum(0)
    cond = torch.searchsorted(ends, rows, right=True)
    place = rows - (ends - used)[cond]
    mine = cond % world.size == world.rank
    first = (used_local.cumsum(0) - used_local).to(weight.device)  # this rank's, per condition
    local = first[(cond // world.size).clamp(max=shard.count - 1)] + place  # valid where mine
    local_rows = [local[i][mine[i]].to(dev) for i in range(steps)]
    model = DistributedDataParallel(policy, find_unused_parameters=True, **_ddp_options(dev))
    adam_step = _precision_weighted_step(policy, optimizer, obs[use], target[use], prec[use], w,
                                         mean_prec, model=model, total_rows=B,
                                         ranks=world.size)
    losses = sum_across(_run_steps(policy, adam_step, local_rows, False), world)
    return _finish(policy, mean_prec, losses, steps)


def _finish(policy: GaussianMLPPolicy, mean_prec: Tensor, losses: Tensor, steps: int) -> float:
    """Set the Gaussian's covariance at its closed-form optimum (the inverse mean precision);
    return the mean loss of the last tenth of the steps."""
    var = 1.0 / torch.diagonal(mean_prec).clamp_min(1e-12)
    with torch.no_grad():
        policy.log_std.copy_(0.5 * torch.log(var).to(policy.log_std))
    return float(losses[steps - max(1, steps // 10):].mean())


def _ddp_options(device: torch.device) -> dict[str, Any]:
    """DDP's options for the policy: its device, and no buffer broadcast before each forward
    pass (the policy's only buffer, its input scale, is the same on every rank); the option's
    name changed in torch 2.13 (``forward_sync_buffers``, ``broadcast_buffers`` before)."""
    from torch.nn.parallel import DistributedDataParallel

    params = inspect.signature(DistributedDataParallel.__init__).parameters
    sync = "forward_sync_buffers" if "forward_sync_buffers" in params else "broadcast_buffers"
    return {sync: False, **({"device_ids": [device]} if device.type == "cuda" else {})}


def _median_across(x: Tensor, shard: Shard) -> Tensor:
    """``torch.median`` (the lower median) of the concatenation of every rank's ``x`` [n],
    exactly: each rank sends its distinct values with their counts (a weight per condition and
    step repeats over samples, so few values), and the merged, sorted values are walked to the
    middle count."""
    values, counts = torch.unique(x, return_counts=True)
    pieces = all_gather_objects((values.cpu(), counts.cpu()), shard.world)
    vals = torch.cat([v for v, _c in pieces])
    cnts = torch.cat([c for _v, c in pieces])
    order = torch.argsort(vals, stable=True)
    cum = cnts[order].cumsum(0)
    middle = (int(cum[-1]) - 1) // 2
    return vals[order][int(torch.searchsorted(cum, middle, right=True))].to(x)


def _use_cuda_graph(cuda_graph: bool | None, optimizer: torch.optim.Optimizer,
                    device: torch.device) -> bool:
    """The ``cuda_graph`` option resolved: by default on CUDA with a capturable optimizer (a
    captured Adam step needs its step counters on the device)."""
    if cuda_graph is None:
        return device.type == "cuda" and all(
            g.get("capturable", False) for g in optimizer.param_groups)
    if cuda_graph and device.type != "cuda":
        raise ValueError(f"cuda_graph: got True with the policy on {device}, allowed: True only "
                         "for a policy on a CUDA device")
    return bool(cuda_graph)


def _capped_weights(weight: Tensor, shard: Shard | None = None) -> Tensor:
    """Weights capped at twice their median, then normalised to mean 1 (the reference code's
    guard against a few huge BADMM weights dominating the loss); with a ``shard``, median and
    mean are those of every rank's weights together."""
    med = weight.median() if shard is None else _median_across(weight, shard)
    weight = weight.clamp(max=2.0 * float(med)) if float(med) > 0 else weight
    if shard is None:
        return weight / weight.mean()
    world = shard.world
    total = sum_across(torch.tensor(float(weight.numel()), dtype=weight.dtype,
                                    device=weight.device), world)
    return weight / (sum_across(weight.sum(), world) / total)


def _precision_weighted_step(policy: GaussianMLPPolicy, optimizer: torch.optim.Optimizer,
                             obs: Tensor, target: Tensor, prec: Tensor, weight: Tensor,
                             mean_prec: Tensor, *, model: torch.nn.Module | None = None,
                             total_rows: int = 0, ranks: int = 1) -> Callable[[Tensor], Tensor]:
    """One Adam step on the rows ``r`` (a minibatch index) of the loss
    mean_r weight_r (mu(obs_r) - target_r)^T P_r (mu(obs_r) - target_r), returning the loss.

    P is the precision divided by its mean trace / dU, so weight decay means the same whatever
    the controllers' scale. The data move to the policy's device and dtype once, here: a
    captured CUDA graph reads them at fixed addresses.

    Across processes (``model``: ``policy`` wrapped in ``DistributedDataParallel``): ``r`` is
    this rank's part of a minibatch of ``total_rows`` rows, the returned loss its share
    (sum / total_rows), and the backward pass is on ``ranks`` times that share (DDP averages)."""
    scale = torch.diagonal(mean_prec).mean().clamp_min(1e-12)
    w = policy.mean_net[0].weight
    dev, dt = w.device, w.dtype
    obs = obs.to(device=dev, dtype=dt)
    target = target.to(device=dev, dtype=dt)
    prec_n = (prec / scale).to(device=dev, dtype=dt)
    weight = weight.to(device=dev, dtype=dt)

    forward = policy if model is None else model

    def adam_step(r: Tensor) -> Tensor:
        err = forward(obs[r]) - target[r]
        quad = (err[:, None, :] @ prec_n[r] @ err[:, :, None]).reshape(-1)
        if model is None:
            loss = (weight[r] * quad).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        else:
            loss = (weight[r] * quad).sum() / total_rows
            optimizer.zero_grad(set_to_none=True)
            (loss * ranks).backward()
        optimizer.step()
        return loss.detach()

    return adam_step


def _run_steps(policy: GaussianMLPPolicy, adam_step: Callable[[Tensor], Tensor],
               rows: Tensor | list[Tensor], graphed: bool) -> Tensor:
    """One Adam step per row of ``rows`` [steps, batch] (or a list of index tensors, one per
    step) in train mode, through CUDA graphs where asked (:func:`_graphed_steps`) and eagerly
    for the rest; returns the losses [steps]."""
    steps = len(rows)
    w = policy.mean_net[0].weight
    policy.train()
    losses = torch.zeros(steps, device=w.device, dtype=w.dtype)
    done = _graphed_steps(adam_step, rows, losses) if graphed else 0
    for i in range(done, steps):
        losses[i] = adam_step(rows[i])
    policy.eval()
    return losses


GRAPH_CHUNK = 25
"""Adam steps captured in one CUDA graph by :func:`train_policy`."""


def _graphed_steps(adam_step: Callable[[Tensor], Tensor], rows: Tensor, losses: Tensor) -> int:
    """Run the first steps of ``rows`` [steps, batch] through a CUDA graph of GRAPH_CHUNK steps
    (after three eager warm-up steps on a side stream, which the capture needs); write each
    step's loss into ``losses``; return how many steps ran (the rest run eagerly)."""
    steps = rows.shape[0]
    warm = min(3, steps)

    def warm_steps() -> None:
        for i in range(warm):
            losses[i] = adam_step(rows[i])

    warm_up(warm_steps, rows.device)
    chunks = (steps - warm) // GRAPH_CHUNK
    if chunks == 0:
        return warm
    static_rows = rows[:GRAPH_CHUNK].clone()
    static_loss = losses.new_zeros(GRAPH_CHUNK)

    def chunk() -> None:
        for j in range(GRAPH_CHUNK):
            static_loss[j] = adam_step(static_rows[j])

    graph = capture(chunk, "the policy's Adam steps", "training eagerly", rows.device)
    if graph is None:
        return warm
    for c in range(chunks):
        lo = warm + c * GRAPH_CHUNK
        static_rows.copy_(rows[lo:lo + GRAPH_CHUNK])
        graph.replay()
        losses[lo:lo + GRAPH_CHUNK] = static_loss
    return warm + chunks * GRAPH_CHUNK
