"""Benchmarks and test oracles that are not part of the installed packages.

* :mod:`benchmarks.reference`: the slow per-condition numpy implementation of GPS's numerics (the
  test oracle that :mod:`gps.lqr`, :mod:`gps.dynamics` and :mod:`gps.gmm` are checked against,
  and the "loop" the bench times them against).
* :mod:`benchmarks.gps_bench`: ``python -m benchmarks.gps_bench lqr|dynamics`` times the batched
  torch code against that loop (JSON lines, each naming its device); its problem generators are
  also the tests' inputs.

Run from the repository root (the folder is not installed: the wheel ships no test oracle); the
tests import it through pytest's ``pythonpath = ["."]``.
"""
