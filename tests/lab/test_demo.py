"""``optenv demo``: it runs, and its frame is written like any other file of the user's."""

from __future__ import annotations

import os
import stat

from optenv.lab.cli import main


def test_demo_writes_its_frame_with_the_users_umask(tmp_path, capsys) -> None:
    before = os.umask(0o027)
    try:
        assert main(["demo", "--n", "2", "--horizon", "3", "--out", str(tmp_path)]) == 0
    finally:
        os.umask(before)
    frame = tmp_path / "gd_run.png"
    assert frame.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert stat.S_IMODE(frame.stat().st_mode) == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["gd_run.png"]
    assert "wrote" in capsys.readouterr().out
