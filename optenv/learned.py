"""A trained coordinatewise optimiser with what acting needs to know about its training.

A :class:`~optenv.policy.CoordinatewisePolicy` alone does not say how large a step its outputs
are clipped to (the training env's ``max_step``), which history its rows assume, or which group
kinds it actually met in training (its one-hot input has a slot for every kind, but a policy
trained on a quadratic only ever saw ``"other"``). :class:`LearnedPolicy` carries those with the
policy, so that :class:`optenv.optim.LearnedOptimizer`, :mod:`optenv.pretrained` and
``optenv compare --methods pretrained:NAME`` read them in one way.

:func:`load_run` reads a run folder of ``optenv train gps`` (``policy.pt``) or ``optenv train
bptt`` (``optimizer.pt``), or either file, with the env library's own loader
(:func:`optenv.policy.load_coordinatewise_policy`, ``weights_only``): this layer imports neither
``gps`` nor ``baselines``, and the files say in their metadata what they are.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from optenv.checkpoint import load_tagged
from optenv.families.groups import GROUP_KINDS
from optenv.features import FeatureSet, check_features
from optenv.policy import (
    POLICY_FORMAT,
    CoordinatewiseEnvPolicy,
    CoordinatewisePolicy,
    load_coordinatewise_policy,
)

__all__ = ["RUN_FILES", "LearnedPolicy", "learned_from_file", "load_run"]

#: The optimiser file of each trainer's run folder: GPS's, then BPTT's.
RUN_FILES = ("policy.pt", "optimizer.pt")
#: Where each trainer records its training family's groups in the file's metadata, and the
#: position of the kind in each entry: GPS [name, size, kind], BPTT [name, kind, size].
_GROUP_KEYS = {"groups": 2, "train_groups": 1}


@dataclass(frozen=True)
class LearnedPolicy:
    """A coordinatewise policy and the facts of its training that acting depends on.

    Attributes:
        policy: the trained :class:`~optenv.policy.CoordinatewisePolicy`.
        max_step: the training env's ``max_step``: the largest step per coordinate the policy's
            mean was clipped to in training (1.0 when unknown).
        history: the H its rows were computed with (the 2016 set's width fixes it; the 2017
            sets read at most their minimum history), None when unknown.
        trained_kinds: the group kinds the training family had (None: unknown, taken as all
            of the policy's kinds).
        source: where it came from, for messages (a name, a path, ``"policy object"``).
        metadata: everything its file recorded (training env, run settings, provenance).
    """

    policy: CoordinatewisePolicy
    max_step: float = 1.0
    history: int | None = None
    trained_kinds: tuple[str, ...] | None = None
    source: str = "policy object"
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.policy, CoordinatewisePolicy):
            raise TypeError(f"policy: got {type(self.policy).__name__}, allowed: a "
                            "CoordinatewisePolicy (a flat policy is tied to one d)")

    @property
    def feature_set(self) -> FeatureSet:
        """The policy's feature set; ValueError if this optenv does not know it."""
        try:
            return check_features(self.policy.features)
        except ValueError as err:
            raise ValueError(f"policy: {self.source} reads feature set "
                             f"{self.policy.features!r}, which this optenv cannot compute "
                             f"({err})") from err

    def row_history(self) -> int:
        """The shortest history from which the policy's rows can be computed: H = (k − 1)/3 for
        the 2016 set (k = 3H + 1), the set's minimum for the others. ValueError when the
        policy's width is not a width of its feature set, or contradicts ``history``."""
        fs, k = self.feature_set, self.policy.width
        h = (k - 1) // 3 if fs.name == "li-malik-2016" else fs.min_history
        if h < fs.min_history or fs.width(h) != k:
            raise ValueError(f"policy: {self.source} has rows of width {k}, which feature set "
                             f"{fs.name!r} never gives; allowed: a policy built for that set "
                             f"(e.g. width {fs.width(fs.default_history)})")
        if fs.name == "li-malik-2016" and self.history is not None and self.history != h:
            raise ValueError(f"policy: {self.source} records history {self.history}, its rows "
                             f"of width {k} need history {h}")
        return h

    def env_history_error(self, history: int) -> str | None:
        """Why an env of this ``history`` cannot give the policy's rows (None if it can)."""
        fs = self.feature_set
        if history < fs.min_history or fs.width(history) != self.policy.width:
            return (f"its rows ({fs.name!r}, width {self.policy.width}) need history "
                    f"{self.row_history() if fs.name == 'li-malik-2016' else fs.min_history}"
                    f"{'' if fs.name == 'li-malik-2016' else ' or more'}, the env has {history}")
        return None

    def default_kind(self, ndim: int) -> str:
        """The kind of a tensor of ``ndim`` dimensions when its parameter group names none: a
        matrix (or any tensor of 2 or more dimensions) is a weight, a vector or scalar a bias,
        as in the families' groups; when the policy never met that kind in training but met
        ``"other"`` (a quadratic's single group), ``"other"``."""
        kind = "weight" if ndim >= 2 else "bias"
        trained = self.trained_kinds or self.policy.kinds
        if kind not in trained and "other" in trained:
            return "other"
        return kind

    def env_policy(self, family: Any, context: Mapping[str, Any], what: str
                   ) -> CoordinatewiseEnvPolicy:
        """The policy acting in an env of ``family`` (``optenv compare``'s loader context:
        ``history``, ``max_step``, ``observation``, ``features``): on the env's rows when it
        emits the policy's feature set, else on flat observations from which it computes its
        rows; ValueError naming ``what`` when the env can give neither.

        The one binding of a coordinatewise optimiser to an env: ``pretrained:NAME``,
        ``gps:DIR`` and ``bptt:DIR`` all load through it, so one history rule holds for all
        (:meth:`env_history_error`: the 2016 set's width fixes H; the 2017 sets need at least
        their minimum)."""
        history = int(context["history"])
        try:
            why = self.env_history_error(history)
        except ValueError as err:  # a feature set this optenv does not know
            raise ValueError(f"--methods: {what}: {err}") from err
        if context.get("observation", "flat") == "coordinatewise":
            if context.get("features") != self.policy.features:
                why = (f"it reads feature set {self.policy.features!r}, the env emits "
                       f"{context.get('features')!r}")
            layout = None
        else:
            from optenv.core import StateLayout

            layout = StateLayout(int(family.d), history)
        if why is not None:
            raise ValueError(f"--methods: {what}: {why}; allowed: an env with the policy's "
                             "feature set and history (e.g. --env-kwargs history=...)")
        return self.policy.as_env_policy(float(context["max_step"]),
                                         family.coordinate_groups(), layout)


def _trained_kinds(extra: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The group kinds a trainer recorded for its training family (None if it recorded none)."""
    for key, at in _GROUP_KEYS.items():
        groups = extra.get(key)
        if isinstance(groups, list) and groups:
            kinds = {str(g[at]) for g in groups if isinstance(g, list | tuple) and len(g) > at}
            if kinds and kinds <= set(GROUP_KINDS):
                return tuple(k for k in GROUP_KINDS if k in kinds)
    return None


def learned_from_file(path: str | os.PathLike[str], source: str,
                      extra_metadata: Mapping[str, Any] | None = None) -> LearnedPolicy:
    """The :class:`LearnedPolicy` in a saved coordinatewise policy file (ValueError naming
    ``source`` for another kind of file: a flat policy, Andrychowicz's LSTM)."""
    try:
        policy, extra = load_coordinatewise_policy(str(path))
    except ValueError as err:
        try:
            load_tagged(path, POLICY_FORMAT, "a flat policy")
            kind = "a flat policy (tied to the d it was trained on)"
        except ValueError:
            kind = "not a coordinatewise policy"
        raise ValueError(f"policy: {source} holds {kind}; allowed: the run of a "
                         "coordinatewise optimiser (optenv train gps --policy coordinatewise, "
                         "optenv train bptt --arch coordinatewise-mlp|coordinatewise-lstm)"
                         ) from err
    policy.eval().requires_grad_(False)
    meta = {**extra, **(extra_metadata or {})}
    history = meta.get("history")
    return LearnedPolicy(policy, float(meta.get("max_step", 1.0)),
                         int(history) if isinstance(history, int) else None,
                         _trained_kinds(meta), source, meta)


def load_run(path: str | os.PathLike[str]) -> LearnedPolicy:
    """The optimiser of a run folder of ``optenv train gps --policy coordinatewise`` or
    ``optenv train bptt --arch coordinatewise-*`` (or its ``policy.pt`` / ``optimizer.pt``);
    ValueError naming ``path`` otherwise."""
    p = Path(path)
    file = next((p / name for name in RUN_FILES if (p / name).is_file()), None) \
        if p.is_dir() else p
    if file is None or not file.is_file():
        raise ValueError(f"policy: got {str(path)!r}, which is neither a file nor a run folder "
                         f"holding {' or '.join(RUN_FILES)}; allowed: a pretrained name, a run "
                         "folder of optenv train gps|bptt, or a CoordinatewisePolicy")
    return learned_from_file(file, repr(str(path)))

