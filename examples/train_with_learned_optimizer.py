"""Train a torch MLP on scikit-learn's digits with a pretrained learned optimiser, Adam and SGD.

The learned optimiser is a ``torch.optim.Optimizer`` (``optenv.LearnedOptimizer``) driven by a
coordinatewise policy shipped in the package (``optenv.pretrained``), so it trains any model
offline. Like ``torch.optim.LBFGS`` it takes a closure: the policy reads the change of the loss
between steps. Each optimiser trains the same 64-32-10 MLP from the same initial weights on
the full training set (1 347 images) for ITERATIONS steps; the script prints the three loss
curves every 25 steps and the test accuracy, and plots the curves to
``runs/examples/learned_optimizer_digits.png`` (or the path given as the first argument).
Under a minute on a CPU.
"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn

import optenv

ITERATIONS = 200
# A coordinatewise BPTT LSTM trained on the 2-2-2 nets of optenv/NeuralNet-v0 (its training
# command and held-out figures: optenv.pretrained.info(PRETRAINED)). Its steps are clipped to the
# training env's max_step (1.0); SCALE multiplies them like a learning rate: 0.3 is the best of
# 1, 0.3 and 0.1 on this script's training loss (final 0.063, 0.031 and 0.079).
PRETRAINED = sys.argv[2] if len(sys.argv) > 2 else "bptt-neuralnet-psi"
SCALE = 0.3

torch.manual_seed(0)
X, y = load_digits(return_X_y=True)
X_train, X_test, y_train, y_test = train_test_split(X / 16.0, y, test_size=0.25, random_state=0)
X_train, X_test = (torch.tensor(a, dtype=torch.float32) for a in (X_train, X_test))
y_train, y_test = torch.tensor(y_train), torch.tensor(y_test)
initial = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).state_dict()


def train(make_optimizer) -> tuple[list[float], float]:
    """The training loss at each step and the final test accuracy."""
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))
    model.load_state_dict(initial)
    opt = make_optimizer(model.parameters())

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(X_train), y_train)
        loss.backward()
        return loss

    losses = [float(opt.step(closure).detach()) for _ in range(ITERATIONS)]
    with torch.no_grad():
        accuracy = float((model(X_test).argmax(1) == y_test).float().mean())
    return losses, accuracy


optimizers = {
    f"learned ({PRETRAINED})": lambda p: optenv.LearnedOptimizer(p, PRETRAINED, scale=SCALE),
    "Adam (lr 1e-2)": lambda p: torch.optim.Adam(p, lr=1e-2),
    "SGD (lr 0.5)": lambda p: torch.optim.SGD(p, lr=0.5),
}
results = {name: train(make) for name, make in optimizers.items()}

print(f"training loss (cross-entropy) of a 64-32-10 MLP on digits, {ITERATIONS} full-batch steps")
print("step  " + "  ".join(f"{name:>28}" for name in results))
for t in [*range(0, ITERATIONS, 25), ITERATIONS - 1]:
    print(f"{t:4d}  " + "  ".join(f"{losses[t]:28.4f}" for losses, _ in results.values()))
for name, (losses, accuracy) in results.items():
    print(f"{name}: final loss {losses[-1]:.4f}, test accuracy {accuracy:.3f}")

out = Path(sys.argv[1] if len(sys.argv) > 1 else "runs/examples/learned_optimizer_digits.png")
out.parent.mkdir(parents=True, exist_ok=True)
fig, ax = plt.subplots(figsize=(6, 4))
for name, (losses, _) in results.items():
    ax.plot(losses, label=name)
ax.set(xlabel="step", ylabel="training loss", yscale="log", title="digits, 64-32-10 MLP")
ax.legend()
fig.tight_layout()
fig.savefig(out, dpi=100)
print(f"wrote {out}")
