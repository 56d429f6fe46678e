"""study.json's per-condition figures from hand-made results documents whose answers are
known: checkpoints, the spread over seeds, first upturns and win shares."""

from __future__ import annotations

import pytest

from optenv.lab.study_schema import condition_entry


def _method(mean_f: list[float | None], diverged: float, late: float,
            beats: dict[str, float]) -> dict:
    return {"mean_f": mean_f, "mean_f_low": [None if v is None else v - 0.1 for v in mean_f],
            "mean_f_high": [None if v is None else v + 0.1 for v in mean_f],
            "fraction_diverged": diverged, "fraction_late_divergence": late,
            "beats": beats, "beats_by_evals": {k: v / 2 for k, v in beats.items()}}


def _doc(learned: list[float | None], diverged: float, beats: float) -> dict:
    hand = [4.0, 3.0, 2.5, 2.0, 1.8, 1.7]
    return {"horizon": 5, "methods": {
        "gps": _method(learned, diverged, diverged / 2, {"gd": beats}),
        "gd": _method(hand, 0.0, 0.0, {"gps": 1.0 - beats})}}


def test_two_seeds_give_means_ranges_envelopes_and_per_seed_upturns() -> None:
    # seed 0 turns up at iteration 3 (3.5 > 2 + 1% of the 2.0 drop); seed 1 keeps descending
    # and is non-finite at the last iteration
    docs = [_doc([4.0, 3.0, 2.0, 3.5, 3.6, 3.7], 0.25, 0.8),
            _doc([4.0, 2.0, 1.0, 0.9, 0.8, None], 0.75, 0.4)]
    entry = condition_entry(docs, horizon=1, checkpoints=(1, 2, 5, 10))
    gps = entry["gps"]
    assert list(gps["mean_f_at"]) == ["1", "2", "5"]  # 10 > the condition's horizon of 5
    assert gps["mean_f_at"]["1"] == {"mean": 2.5, "seed_min": 2.0, "seed_max": 3.0,
                                     "low": pytest.approx(1.9), "high": pytest.approx(3.1)}
    assert gps["mean_f_at"]["5"] == {"mean": 3.7, "seed_min": 3.7, "seed_max": 3.7,
                                     "low": pytest.approx(3.6), "high": pytest.approx(3.8)}
    assert gps["fraction_diverged"] == {"mean": 0.5, "seed_min": 0.25, "seed_max": 0.75}
    assert gps["fraction_late_divergence"] == {"mean": 0.25, "seed_min": 0.125,
                                               "seed_max": 0.375}
    assert gps["first_upturn"] == [3, 5]
    assert gps["beats"]["gd"] == {"mean": pytest.approx(0.6), "seed_min": 0.4, "seed_max": 0.8}
    assert gps["beats_by_evals"]["gd"]["seed_max"] == 0.4
    # the hand-designed method is the same in both files: no spread, no upturn
    assert entry["gd"]["mean_f_at"]["2"] == {"mean": 2.5, "seed_min": 2.5, "seed_max": 2.5,
                                             "low": 2.4, "high": 2.6}
    assert entry["gd"]["first_upturn"] == [None, None]

