"""optenv.checkpoint: file modes, checksums, and files that are never unpickled."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from optenv.checkpoint import (
    UnsafeFileError,
    atomic_write,
    content_digest,
    load_tagged,
    read_json_object,
    read_payload,
    save_tagged,
)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_atomically_written_files_get_the_users_umask_not_0600(tmp_path, mask) -> None:
    before = os.umask(mask)
    try:
        text = atomic_write(tmp_path / "a.json", lambda fh: fh.write("{}"))
        binary = save_tagged(tmp_path / "b.pt", "fmt/1", {"x": torch.ones(2)})
    finally:
        os.umask(before)
    for path in (text, binary):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json", "b.pt"]  # no temp left


def test_a_saved_payload_round_trips_and_a_flipped_bit_fails_its_checksum(tmp_path) -> None:
    path = tmp_path / "c.pt"
    weights = torch.arange(64, dtype=torch.float64) * 1.25
    save_tagged(path, "fmt/1", {"w": weights, "log": "[1, 2]", "n": 3})
    payload = load_tagged(path, "fmt/1", "a test file")
    torch.testing.assert_close(payload["w"], weights, rtol=0, atol=0)
    assert (payload["log"], payload["n"]) == ("[1, 2]", 3)

    raw = bytearray(path.read_bytes())
    at = bytes(raw).find(weights.numpy().tobytes())
    assert at > 0  # the tensor's bytes are stored as they are
    raw[at + 8 * 17 + 3] ^= 0x10  # one bit of one weight
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="fails its checksum"):
        load_tagged(path, "fmt/1", "a test file")
    with pytest.raises(ValueError, match="cannot read a test file"):
        path.write_bytes(bytes(raw[: len(raw) // 2]))  # truncated
        load_tagged(path, "fmt/1", "a test file")


def test_content_digest_sees_values_dtypes_shapes_and_structure() -> None:
    base = {"a": torch.zeros(2, 3), "b": [1, 2.0, "x", None, b"y"]}
    digests = {content_digest(base),
               content_digest({"a": torch.zeros(3, 2), "b": base["b"]}),
               content_digest({"a": torch.zeros(2, 3, dtype=torch.float64), "b": base["b"]}),
               content_digest({"a": torch.zeros(2, 3), "b": (1, 2.0, "x", None, b"y")}),
               content_digest({"a": torch.zeros(2, 3), "b": [1, 2, "x", None, b"y"]}),
               content_digest({"b": base["b"], "a": torch.zeros(2, 3)})}
    assert len(digests) == 6
    assert content_digest(base) == content_digest({"a": torch.zeros(2, 3),
                                                   "b": [1, 2.0, "x", None, b"y"]})
    with pytest.raises(TypeError, match="cannot checksum a set"):
        content_digest({"s": {1}})


def test_a_crafted_torch_file_is_refused_without_being_unpickled(tmp_path, armed) -> None:
    marker, bomb = armed
    path = tmp_path / "policy.pt"
    torch.save({"format": "fmt/1", "state_dict": bomb}, path)
    with pytest.raises(UnsafeFileError, match="only unpickling could rebuild"):
        read_payload(path, "a policy")
    with pytest.raises(ValueError, match="only unpickling"):
        load_tagged(path, "fmt/1", "a policy")
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is armed: a plain unpickle runs it
    assert marker.exists()


@pytest.mark.parametrize(("text", "match"), [
    (None, "cannot read"),
    ("{bad", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, allowed: a JSON object"),
])
def test_read_json_object_names_the_file_and_what_is_wrong(tmp_path, text, match) -> None:
    path = tmp_path / "config.json"
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=match) as err:
        read_json_object(path, "--resume")
    assert str(err.value).startswith("--resume: ") and str(path) in str(err.value)
