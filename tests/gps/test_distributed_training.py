"""GPS training across processes: ``torchrun --nproc-per-node 2 -m optenv train gps`` (gloo, on
this CPU) against one process, a rank killed mid-run, and resuming its checkpoint.

Tolerance of the one-vs-two-process comparison: the two runs make the same random draws and
take the same steps, but sum in another order: the policy's float32 gradient is summed per rank
and then across ranks by DDP's all-reduce (one process sums the minibatch at once), and the
weights' mean, the mean precision and the input scale are per-rank sums added up. Rounding
differs in the last bits (measured: parameters apart by <= 1e-8 on values ~0.1 after three
iterations), so the test allows 1e-5 relative + 1e-6 absolute, far below any real difference
(a wrong shard, draw or weighting moves them by 1e-2 and more). Two runs with the same number of
processes sum in the same order: a resumed one is compared bit for bit.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from gps.train import make_config, train
from optenv.checkpoint import load_tagged
from optenv.runs import CHECKPOINT_FORMAT

pytestmark = pytest.mark.usefixtures("one_thread")

ENV = "optenv/LogisticRegression-v0"
TINY = {"conditions": 5, "samples": 4, "horizon": 5, "iterations": 3, "lqr_history": 2,
        "inner_iterations": 2, "policy_steps": 20, "policy_batch": 16, "gmm_iters": 5,
        "lqr_max_iter": 10, "momentum_lr_grid": (0.1, 1.0), "momentum_grid": (0.5, 0.9),
        "gmm_min_samples": 2, "gmm_clusters": 3}
FLAGS = ["--quiet"] + [x for k, v in TINY.items() for x in
                       (f"--{k.replace('_', '-')}",
                        ",".join(map(str, v)) if isinstance(v, tuple) else str(v))]
REPO = Path(__file__).resolve().parents[2]

#: A rank that dies: rank 1 kills itself (SIGKILL, no clean-up) as it starts iteration 3.
KILLER = """
import os, signal, sys
from gps.agent import GPSAgent
from optenv.lab.cli import main
original = GPSAgent.iteration
def iteration(self):
    if self.shard.world.rank == 1 and self.iteration_count == 2:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self)
GPSAgent.iteration = iteration
sys.exit(main())
"""


def _torchrun(args: list[str], timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """``python -m torch.distributed.run --nproc-per-node 2 ARGS`` on a free port (gloo), the
    collectives' timeout short so that a rank left waiting fails fast."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "OPTENV_DIST_TIMEOUT": "60", "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node",
                           "2", "--master-addr", "127.0.0.1", "--master-port", str(port),
                           *args], capture_output=True, text=True, timeout=timeout, env=env,
                          cwd=REPO)


def _policy(run: Path) -> dict[str, torch.Tensor]:
    return load_tagged(run / "checkpoint.pt", CHECKPOINT_FORMAT, "a checkpoint")["state"]["policy"]


def _assert_policies_close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run through the real command line."""
    out = tmp_path_factory.mktemp("dist") / "two"
    done = _torchrun(["-m", "optenv", "train", "gps", "--env", ENV, "--out", str(out), *FLAGS])
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def one_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist") / "one"
    before = torch.get_num_threads()
    try:
        train(ENV, out, make_config(**TINY), quiet=True, threads=1)
    finally:
        torch.set_num_threads(before)
    return out


def test_two_processes_train_the_policy_one_process_trains(two_process_run: Path,
                                                           one_process_run: Path) -> None:
    _assert_policies_close(_policy(two_process_run), _policy(one_process_run))
    saved = (two_process_run / "config.json").read_text()
    assert '"processes": 2' in saved
    assert not list(two_process_run.glob(".*.tmp"))  # rank 0 alone wrote, atomically
    two = (two_process_run / "log.csv").read_text().splitlines()
    one = (one_process_run / "log.csv").read_text().splitlines()
    assert len(two) == len(one) == 4  # header + 3 iterations, one writer


def test_a_killed_rank_ends_the_run_and_its_checkpoint_resumes_exactly(
        two_process_run: Path, one_process_run: Path, tmp_path: Path) -> None:
    killer = tmp_path / "killer.py"
    killer.write_text(KILLER)
    out = tmp_path / "killed"
    died = _torchrun([str(killer), "train", "gps", "--env", ENV, "--out", str(out), *FLAGS])
    assert died.returncode != 0  # ended (no hang: _torchrun's timeout), and said why:
    assert "SIGKILL" in died.stderr or "Signal 9" in died.stderr, died.stderr[-3000:]
    state = load_tagged(out / "checkpoint.pt", CHECKPOINT_FORMAT, "a checkpoint")["state"]
    assert 1 <= state["iteration"] <= 2
    copy = tmp_path / "reshard"
    shutil.copytree(out, copy)

    resumed = _torchrun(["-m", "optenv", "train", "gps", "--env", ENV, "--out", str(out),
                         "--resume", *FLAGS])
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    want, got = _policy(two_process_run), _policy(out)
    for k in want:  # the same processes sum in the same order: bit for bit
        assert torch.equal(want[k], got[k]), k
    assert (out / "log.csv").read_text().splitlines()[1:] and \
        len((out / "log.csv").read_text().splitlines()) == 4

    # the same checkpoint on ONE process: re-sharded, it continues the one-process run
    train(ENV, copy, make_config(**TINY), quiet=True, resume=True)
    _assert_policies_close(_policy(copy), _policy(one_process_run))
    assert '"processes"' in (copy / "config.json").read_text().split('"resumed"')[1]


def test_rank_0_alone_takes_the_folder_and_its_refusal_reaches_every_rank(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rank 0 opens the folder (its lock, its checks) and sends the outcome; the other ranks
    never touch the folder and raise rank 0's error, so none waits for the others. (The
    broadcast is replaced by its effect here: the real one runs in the tests above.)"""
    from gps import train as gps_train
    from gps.agent import GPSAgent
    from optenv import distributed
    from optenv.distributed import World
    from optenv.families import make_family
    from optenv.locks import FolderLock

    family, config = make_family("LogisticRegression"), make_config(**TINY)
    out = tmp_path / "busy"
    out.mkdir()
    rank0, rank1 = World(0, 2, 0), World(1, 2, 1)
    sent: list[dict] = []
    with FolderLock(out):  # a run holds the folder
        agent = GPSAgent(family, config, world=rank1)
        fresh = {"resuming": False, "log": [], "state": None}
        monkeypatch.setattr(distributed, "broadcast_object", lambda obj, world, src=0: fresh)
        assert gps_train._open_run(agent, out, {}, False, rank1) == (None, False, [])
        refused = {"error": "--out: in use"}
        monkeypatch.setattr(distributed, "broadcast_object", lambda obj, world, src=0: refused)
        with pytest.raises(ValueError, match="--out: in use"):
            gps_train._open_run(agent, out, {}, False, rank1)
        monkeypatch.setattr(distributed, "broadcast_object",
                            lambda obj, world, src=0: sent.append(obj) or obj)
        with pytest.raises(ValueError, match="is in use by another optenv run"):
            gps_train._open_run(GPSAgent(family, config, world=rank0), out, {}, False, rank0)
    assert "is in use by another optenv run" in sent[0]["error"]
    assert sorted(p.name for p in out.iterdir()) == []


def test_more_processes_than_conditions_is_refused_naming_both() -> None:
    from gps.agent import GPSAgent
    from optenv.distributed import World
    from optenv.families import make_family

    with pytest.raises(ValueError, match=r"conditions: got 1 .* 2 processes"):
        GPSAgent(make_family("LogisticRegression"), make_config(**{**TINY, "conditions": 1}),
                 world=World(0, 2, 0))


def test_a_lost_peer_is_told_apart_from_other_errors() -> None:
    from optenv.distributed import is_peer_failure

    lost = RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection "
                        "closed by peer [127.0.0.1]:18566")
    assert is_peer_failure(lost)
    assert not is_peer_failure(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
