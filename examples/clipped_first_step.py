"""What the env's step clip costs at the first iteration, on 100 held-out objectives.

Policies act through the env, whose step is ``max_step * clip(action, -1, 1)`` per coordinate;
hand-designed optimisers in ``optenv compare`` run unclipped. This prints, as JSON, the mean
objective after one gradient step ``-lr * grad`` for the best ``lr`` of a grid, with and without
the clip, next to the unclipped step GD takes with its tuned lr = 2 and to the distance from x0
to the minimiser (found by Newton's method), which is what the clip limits.
"""

import json

import torch

from optenv.families import make_family

family = make_family("LogisticRegression")
max_step = family.default_max_step
data, x0 = family.sample(torch.arange(100), split="test", dtype=torch.float64)
f0, grad = family.value_and_grad(x0, data)


def mean_f_after(step: torch.Tensor) -> float:
    return float(family.objective(x0 + step, data).mean())


grid = [0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 16.0]
clipped = min((mean_f_after((-lr * grad).clamp(-max_step, max_step)), lr) for lr in grid)
unclipped = min((mean_f_after(-lr * grad), lr) for lr in grid)

x = x0.clone()  # Newton's method (convex family) for the distance to the minimiser
for _ in range(100):
    _, g = family.value_and_grad(x, data)
    hess = family.hessian(x, data) + 1e-9 * torch.eye(family.d, dtype=x.dtype)
    x = x - torch.linalg.solve(hess, g[..., None])[..., 0].clamp(-max_step, max_step)
dist = (x - x0).abs().amax(1)

print(json.dumps({
    "env": "optenv/LogisticRegression-v0", "n_test": 100, "max_step": max_step,
    "mean_f_x0": round(float(f0.mean()), 4),
    "gd_lr2_unclipped": round(mean_f_after(-2.0 * grad), 4),
    "best_unclipped": {"mean_f": round(unclipped[0], 4), "lr": unclipped[1]},
    "best_clipped": {"mean_f": round(clipped[0], 4), "lr": clipped[1]},
    "median_max_abs_x_star_minus_x0": round(float(dist.median()), 2),
}))
