"""Training a multilayer perceptron on a real data set: Li & Malik 2017's objective family.

"Learning to Optimize Neural Nets" (Li & Malik, arXiv:1703.00441, §4) meta-trains an optimiser
on ONE objective — training "a two-layer neural net with 48 input units, 48 hidden units and 10
output units on a randomly projected and normalized version of the MNIST training set with
dimensionality 48 and unit variance in each dimension", "a time horizon of 400 iterations and a
mini-batch size of 64" — and meta-tests it with 100 inputs and 200 hidden units, minibatches of
10, 800 iterations, and on other data sets (TFD, CIFAR-10, CIFAR-100). This family is that
objective, for B instances at once; the defaults are the paper's, on scikit-learn's bundled
digits (MNIST cannot be downloaded here; ``dataset="mnist"`` reads its files where a user has
them). The paper names no activation or weight decay: ReLU and none are the defaults.

An **instance** is (the data set's TRAIN part, initial weights, minibatch stream), the last two
drawn from the instance's key: TRAIN and TEST instances (``split``) differ in their starting
weights and minibatches, never in the data. Its problem data are two small fields: ``key``, the
instance's 64-bit key as four 16-bit words (exact in float32 and float64, so they live in the
vector env's float buffers), and ``iteration``, the index of the minibatch the next evaluation
uses. The core rewinds ``iteration`` when a run starts and advances it by one before each new
iterate is evaluated (:meth:`rewind`, :meth:`advance`, in place): so every caller that keeps its
problem dict across steps — the envs, evaluation, GPS sampling, BPTT's differentiable unrolls —
sees the same minibatch at the same iteration, and two methods compared on one instance see the
same minibatches. Minibatch t of an instance: ``batch_size`` TRAIN examples drawn uniformly with
replacement by a counter-based hash of (key, t) (:func:`minibatch_index`), no sequential RNG, so
any subset of envs can reset at any step.

f is the minibatch's mean softmax cross-entropy plus (l2/2)·Σ‖W‖² (weights, not biases): the
noisy f̂ and ∇f̂ the agent sees, as in the paper. :meth:`full_objective` is the same loss on the
whole TRAIN part, the "true objective value" the paper plots: ``info["f_full"]`` of the envs and
what :func:`optenv.evaluate` reports for this family. ``batch_size=None`` trains on the whole
TRAIN part (f exact). f and ∇f are closed form (one batched forward and backward pass, matmuls
over B nets), differentiable with respect to x (BPTT).

x packs the layers in order, each weight matrix [out, in] row-major then its bias [out]; the
coordinate groups are those matrices and vectors (``W1``, ``b1``, ``W2``, ...); x(0) is PyTorch's
default ``nn.Linear`` initialisation (weights and biases uniform on ±1/√fan_in) drawn from the
key.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from optenv.datasets import check_dataset, dataset_files, load_dataset
from optenv.families.base import ObjectiveFamily, ProblemData
from optenv.families.groups import CoordinateGroup, groups_from_sizes
from optenv.rng import KeyedRNG, hash32
from optenv.validation import check_choice, check_int, check_number

__all__ = ["ACTIVATIONS", "MLPClassifier", "minibatch_index"]

ACTIVATIONS = ("relu", "sigmoid", "tanh")
#: Largest d whose exact Hessian :meth:`MLPClassifier.hessian` builds (B·d² entries); above it,
#: use :meth:`~optenv.families.base.ObjectiveFamily.hessian_vector_product`.
HESSIAN_MAX_D = 4096
#: Elements of one activation tensor [B, examples, width] the full-data passes keep at once
#: (they go through the TRAIN part in chunks of examples below this).
CHUNK_ELEMENTS = 2**17
_MASK16, _GOLDEN = 0xFFFF, 0x9E3779B9
#: Salts of the minibatch hash (distinct from optenv.rng's stream constants).
_SALT_T, _SALT_J = 0x2545F491, 0x27D4EB2F


def _parse_hidden(value: Any) -> tuple[int, ...]:
    """``hidden`` as a tuple of widths: an int, a sequence of ints, or a string like
    ``"100-200"`` (what ``--env-kwargs hidden=100-200`` gives); every width >= 1."""
    allowed = "an int >= 1, a sequence of them, or a string like '100-200' (one width a layer)"
    items: Any = value
    if isinstance(value, str):
        try:
            items = [int(v) for v in value.split("-")]
        except ValueError:
            raise ValueError(f"hidden: got {value!r}, allowed: {allowed}") from None
    elif isinstance(value, int) and not isinstance(value, bool):
        items = [value]
    try:
        widths = tuple(items)
    except TypeError:
        raise ValueError(f"hidden: got {value!r}, allowed: {allowed}") from None
    ok = len(widths) > 0 and all(
        isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths)
    if not ok:
        raise ValueError(f"hidden: got {value!r}, allowed: {allowed}")
    return tuple(int(w) for w in widths)


def minibatch_index(data: Mapping[str, torch.Tensor], batch_size: int, n: int) -> torch.Tensor:
    """The TRAIN example indices [B, batch_size] of each instance's current minibatch: uniform
    on [0, n) with replacement, a pure function of (key, iteration, position) through
    :func:`optenv.rng.hash32` (the same on every device and in either dtype)."""
    w = data["key"].to(torch.int64) & _MASK16
    lo = w[:, 0] | (w[:, 1] << 16)
    hi = w[:, 2] | (w[:, 3] << 16)
    t = data["iteration"].to(torch.int64)
    lane = hash32(hi ^ hash32(lo ^ hash32(t * _GOLDEN + _SALT_T)))
    pos = torch.arange(batch_size, dtype=torch.int64, device=lane.device)
    words = hash32(lane.unsqueeze(1) ^ hash32(pos * _GOLDEN + _SALT_J).unsqueeze(0))
    return (words * n) >> 32  # words < 2**32 and n < 2**31: exact in int64


def _affine(a: torch.Tensor, W: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a Wᵀ + b for B nets, the bias fused into the GEMM (addmm/baddbmm: no second pass over
    the activations): a [B, n, in] (one GEMM per net) or shared [n, in] (ONE GEMM against all B
    matrices side by side, rather than B copies of a); W [B, out, in], b [B, out] →
    [B, n, out]."""
    if a.dim() == 3:
        return torch.baddbmm(b.unsqueeze(1), a, W.transpose(1, 2))
    bsz, out, inp = W.shape
    z = torch.addmm(b.reshape(1, bsz * out), a, W.reshape(bsz * out, inp).T)
    return z.view(a.shape[0], bsz, out).transpose(0, 1)


def _outer(dz: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Σ over examples of dz ⊗ a: dz [B, n, out], a [B, n, in] or shared [n, in] (one GEMM)
    → [B, out, in]."""
    if a.dim() == 3:
        return torch.matmul(dz.transpose(1, 2), a)
    bsz, n, out = dz.shape
    return (dz.permute(0, 2, 1).reshape(bsz * out, n) @ a).reshape(bsz, out, a.shape[1])


@dataclass(repr=False)
class MLPClassifier(ObjectiveFamily):
    """Mean softmax cross-entropy of an MLP on minibatches of a data set's TRAIN part.

    Arguments: ``dataset`` (a name of :data:`optenv.datasets.DATASETS`, default ``"digits"``);
    ``hidden`` (hidden widths, default ``(48,)``: the paper's two-layer net); ``inputs`` (the
    features randomly projected to this many dimensions, then standardised, as the paper did
    to MNIST; default 48; None: the data set's own features, standardised); ``activation``
    (relu | sigmoid | tanh); ``l2`` (weight decay on the weight matrices, (l2/2)·Σ‖W‖²);
    ``batch_size`` (default 64; None: the whole TRAIN part, f exact); ``data_dir`` (where the
    file-based data sets are, default ``$OPTENV_DATA``); ``full_loss`` (default True: the
    envs' ``info["f_full"]`` and evaluation compute the loss on the whole TRAIN part at every
    iterate, a forward pass over n_train examples per instance and step — cheap on digits
    (1442), 60 000 on MNIST; False skips it and reports the minibatch f). Module docstring:
    instances, the minibatch stream, x's layout.
    """

    dataset: str = "digits"
    hidden: Any = (48,)
    inputs: int | None = 48
    activation: str = "relu"
    l2: float = 0.0
    batch_size: int | None = 64
    data_dir: str | None = None
    full_loss: bool = True

    name = "MLPClassifier"
    #: an action of ±1 moves a weight by 0.1 (x(0)'s weights are of order 1/√fan_in)
    default_max_step = 0.1

    def __post_init__(self) -> None:
        spec = check_dataset(self.dataset)
        self.hidden = _parse_hidden(self.hidden)
        check_int("inputs", self.inputs, 1, optional=True)
        check_choice("activation", self.activation, ACTIVATIONS)
        check_number("l2", self.l2, strict=False)
        check_int("batch_size", self.batch_size, 1, optional=True)
        if not isinstance(self.full_loss, bool):
            raise ValueError(f"full_loss: got {self.full_loss!r}, allowed: True, False")
        if self.data_dir is not None and not isinstance(self.data_dir, str):
            raise ValueError(f"data_dir: got {self.data_dir!r}, allowed: None or a path string")
        dataset_files(self.dataset, self.data_dir)  # a missing file fails here, not at reset
        if self.batch_size is not None:
            n_train = spec.n_train if spec.n_train is not None else self.n_train
            if self.batch_size > n_train:
                raise ValueError(f"batch_size: got {self.batch_size}, allowed: None or an int "
                                 f"in [1, {n_train}] (the TRAIN part of {self.dataset!r} has "
                                 f"{n_train} examples)")
        widths = (self.inputs or spec.n_features, *self.hidden, spec.n_classes)
        self._shapes = tuple(zip(widths[1:], widths[:-1], strict=True))  # (out, in) per layer

    # ------------------------------------------------------------------ sizes and layout
    @property
    def d(self) -> int:
        return sum(o * i + o for o, i in self._shapes)

    @property
    def n_train(self) -> int:
        """Examples in the data set's TRAIN part (loads a file-based set)."""
        spec = check_dataset(self.dataset)
        if spec.n_train is not None:
            return spec.n_train
        return len(load_dataset(self.dataset, self.data_dir).y_train)

    @property
    def layer_shapes(self) -> tuple[tuple[int, int], ...]:
        """(out, in) of each layer's weight matrix, input layer first."""
        return self._shapes

    def coordinate_groups(self) -> tuple[CoordinateGroup, ...]:
        """``W1``, ``b1``, ``W2``, ``b2``, ...: each weight matrix and bias vector, in x's
        order."""
        sizes = []
        for layer, (o, i) in enumerate(self._shapes, start=1):
            sizes += [(f"W{layer}", o * i, "weight"), (f"b{layer}", o, "bias")]
        return groups_from_sizes(sizes)

    def unpack(self, x: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """[(W [B, out, in], b [B, out]), ...] as views of x [B, d], input layer first."""
        out, start, bsz = [], 0, x.shape[0]
        for o, i in self._shapes:
            w_end = start + o * i
            out.append((x[:, start:w_end].reshape(bsz, o, i), x[:, w_end:w_end + o]))
            start = w_end + o
        return out

    # ------------------------------------------------------------------ instances
    def generate(self, rng: KeyedRNG) -> ProblemData:
        """``key`` [B, 4] (the instance keys' 16-bit words) and ``iteration`` [B] (0)."""
        keys = rng.keys
        words = torch.stack([(keys >> s) & _MASK16 for s in (0, 16, 32, 48)], dim=-1)
        return {"key": words.to(rng.dtype),
                "iteration": torch.zeros(rng.batch_size, dtype=rng.dtype, device=keys.device)}

    def initial_point(self, rng: KeyedRNG) -> torch.Tensor:
        """PyTorch's default nn.Linear initialisation: every weight and bias of a layer uniform
        on ±1/√fan_in."""
        bounds = torch.cat([torch.full((o * i + o,), 1.0 / math.sqrt(i), dtype=torch.float64)
                            for o, i in self._shapes])
        u = rng.uniform(self.d)
        return (2.0 * u - 1.0) * bounds.to(device=u.device, dtype=u.dtype)

    def rewind(self, data: Mapping[str, torch.Tensor]) -> None:
        data["iteration"].zero_()

    def advance(self, data: Mapping[str, torch.Tensor]) -> None:
        data["iteration"].add_(1.0)

    # ------------------------------------------------------------------ data
    def train_tensors(self, device: torch.device, dtype: torch.dtype
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """The network's TRAIN inputs [n, inputs] and labels [n] (int64) on ``device``, cached
        per device and dtype (the data set itself is read once per process)."""
        cache = self.__dict__.setdefault("_tensors", {})
        key = (str(device), dtype)
        if key not in cache:
            ds = load_dataset(self.dataset, self.data_dir)
            train, _ = ds.inputs(self.inputs)
            cache[key] = (torch.as_tensor(train, dtype=dtype, device=device),
                          torch.as_tensor(ds.y_train, dtype=torch.int64, device=device))
        return cache[key]

    def minibatch(self, data: Mapping[str, torch.Tensor], like: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each instance's current minibatch: inputs [B, batch_size, inputs], labels
        [B, batch_size] (the whole TRAIN part, shared [n, ...], when batch_size is None)."""
        X, y = self.train_tensors(like.device, like.dtype)
        if self.batch_size is None:
            return X, y
        idx = minibatch_index(data, self.batch_size, len(y))
        return X[idx], y[idx]

    # ------------------------------------------------------------------ f and ∇f
    def _activate(self, z: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return torch.relu(z)
        return torch.sigmoid(z) if self.activation == "sigmoid" else torch.tanh(z)

    def _activation_slope(self, z: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """σ'(z) from z and a = σ(z)."""
        if self.activation == "relu":
            return (z > 0).to(z.dtype)
        return a * (1.0 - a) if self.activation == "sigmoid" else 1.0 - a * a

    def _summed_loss(self, layers: list[tuple[torch.Tensor, torch.Tensor]], X: torch.Tensor,
                     y: torch.Tensor, grad: bool
                     ) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
        """Σ over the examples of the cross-entropy [B], and its gradient pieces (W1, b1, ...)
        if ``grad``; X [n, k] (shared by the B nets) or [B, n, k], y [n] or [B, n]."""
        acts, pres = [X], []
        a = X
        for index, (W, b) in enumerate(layers):
            z = _affine(a, W, b)
            if index < len(layers) - 1:
                a = self._activate(z)
                pres.append(z)
                acts.append(a)
        # cross-entropy = logsumexp(z) − z[label]: two passes over the logits, where
        # log_softmax and a one-hot product took four (and log_softmax over 10 classes is slow)
        lse = torch.logsumexp(z, dim=-1, keepdim=True)
        labels = (y if y.dim() == z.dim() - 1 else y.expand(z.shape[:-1])).unsqueeze(-1)
        loss = (lse - z.gather(-1, labels)).sum((-1, -2))
        if not grad:
            return loss, None
        classes = torch.arange(z.shape[-1], device=z.device)
        onehot = (labels == classes).to(z.dtype)  # not F.one_hot: vmap-safe
        dz = torch.exp(z - lse) - onehot  # d loss / d logits, per example
        pieces: list[torch.Tensor] = []
        for index in range(len(layers) - 1, -1, -1):
            W = layers[index][0]
            pieces += [dz.sum(1), _outer(dz, acts[index])]
            if index > 0:
                dz = torch.matmul(dz, W) * self._activation_slope(pres[index - 1], acts[index])
        return loss, pieces[::-1]

    def _loss(self, x: torch.Tensor, X: torch.Tensor, y: torch.Tensor, grad: bool
              ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Mean cross-entropy + (l2/2)·Σ‖W‖² (and its gradient [B, d]) of the nets x on the
        examples X, y; shared data go through in chunks of examples (CHUNK_ELEMENTS)."""
        # contiguous weights once per call, not a strided copy in every chunk's GEMM
        layers = [(W.contiguous(), b) for W, b in self.unpack(x)]
        n = y.shape[-1]
        if y.dim() == 1:
            width = max(max(o for o, _ in self._shapes), X.shape[-1])
            step = max(1, CHUNK_ELEMENTS // (x.shape[0] * width))
        else:
            step = n
        loss, pieces = None, None
        for start in range(0, n, step):
            sl = slice(start, start + step)
            part, gparts = self._summed_loss(layers, X[..., sl, :], y[..., sl], grad)
            loss = part if loss is None else loss + part
            if gparts is not None:
                pieces = gparts if pieces is None else [p + q for p, q in
                                                        zip(pieces, gparts, strict=True)]
        assert loss is not None
        weights = [W for W, _ in layers]
        f = loss / n
        if self.l2:
            f = f + 0.5 * self.l2 * sum((W * W).sum((1, 2)) for W in weights)
        if pieces is None:
            return f, None
        bsz = x.shape[0]
        flat = []
        for index, W in enumerate(weights):
            gW = pieces[2 * index] / n
            if self.l2:
                gW = gW + self.l2 * W
            flat += [gW.reshape(bsz, -1), pieces[2 * index + 1] / n]
        return f, torch.cat(flat, dim=-1)

    def objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        X, y = self.minibatch(data, x)
        return self._loss(x, X, y, grad=False)[0]

    def value_and_grad(
        self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        X, y = self.minibatch(data, x)
        f, g = self._loss(x, X, y, grad=True)
        assert g is not None
        return f, g

    def full_batch(self) -> MLPClassifier:
        """This family with ``batch_size=None``: the same instances (data set split, initial
        weights), f the full TRAIN loss."""
        return self if self.batch_size is None else dataclasses.replace(self, batch_size=None)

    def has_full_objective(self) -> bool:
        """True unless f is already the full loss (``batch_size=None``) or ``full_loss`` is
        False."""
        return self.batch_size is not None and self.full_loss

    def full_objective(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]
                       ) -> torch.Tensor | None:
        """The loss on the whole TRAIN part [B] (None when batch_size is None: f is that; or
        when ``full_loss`` is False)."""
        if not self.has_full_objective():
            return None
        X, y = self.train_tensors(x.device, x.dtype)
        return self._loss(x, X, y, grad=False)[0]

    def hessian(self, x: torch.Tensor, data: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """∇²f̂ on each instance's current minibatch, [B, d, d], by ``torch.func`` (d <=
        HESSIAN_MAX_D; larger nets: ``hessian_vector_product``)."""
        if self.d > HESSIAN_MAX_D:
            raise ValueError(f"hessian: d = {self.d} is above {HESSIAN_MAX_D}, allowed: the "
                             "exact Hessian only for smaller nets; use "
                             "hessian_vector_product(x, data, v)")
        X, y = self.minibatch(data, x)
        shared = self.batch_size is None

        def single(xi: torch.Tensor, Xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
            return self._loss(xi.unsqueeze(0), Xi if shared else Xi.unsqueeze(0),
                              yi if shared else yi.unsqueeze(0), grad=False)[0][0]

        dims = (0, None, None) if shared else (0, 0, 0)
        return torch.func.vmap(torch.func.hessian(single), in_dims=dims)(x, X, y)
