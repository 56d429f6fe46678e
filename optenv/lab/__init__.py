"""The application layer: the ``optenv`` command line and the jobs it runs.

Everything here *uses* the three packages — the env library (:mod:`optenv`), the GPS agent
(:mod:`gps`) and the baselines (:mod:`baselines`) — and nothing below imports it back: the
import-linter contracts in ``pyproject.toml`` (run by CI) hold the env library to importing
neither ``gps`` nor ``baselines``, ``baselines`` to not importing ``gps``, and this package to
being imported only by ``python -m optenv``. The modules:

* :mod:`optenv.lab.cli` — the ``optenv`` entry point and its sub-commands;
* :mod:`optenv.lab.methods` — method names and ``PREFIX:DIR`` specs resolved to optimiser objects;
* :mod:`optenv.lab.compare` — ``optenv compare``: tune on TRAIN objectives, evaluate on TEST;
* :mod:`optenv.lab.results` — the results document (``results.json``) and its figures;
* :mod:`optenv.lab.train` — ``optenv train ALGO``: dispatches to each trainer's own parser;
* :mod:`optenv.lab.bench` — ``optenv bench``: env throughput, one JSON line per measurement;
* :mod:`optenv.lab.demo` — ``optenv demo``: a first look at an env.
"""
