"""Atomic writes: complete or absent, never half; the folder swap and its crash recovery; provenance."""

import json
import os

import pytest

from qkcopy.io import (atomic_dir, atomic_path, atomic_write, atomic_write_json, files_fingerprint, git_commit,
                       recover_dir)


def test_atomic_write_bytes_text_callable_and_json(tmp_path):
    atomic_write(tmp_path / "a" / "b.bin", b"\x00\x01")
    atomic_write(tmp_path / "t.txt", "héllo")
    atomic_write(tmp_path / "c.txt", lambda p: p.write_text("via callable"))
    atomic_write_json(tmp_path / "j.json", {"x": [1, 2]})
    assert (tmp_path / "a" / "b.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    assert (tmp_path / "c.txt").read_text() == "via callable"
    assert json.loads((tmp_path / "j.json").read_text()) == {"x": [1, 2]}
    assert oct((tmp_path / "t.txt").stat().st_mode & 0o777) == oct(0o644)


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "keep.txt"
    target.write_text("old")

    def half(path):
        path.write_text("half of the new")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.txt"]
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("interrupted")
        raise KeyboardInterrupt
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


def test_atomic_dir_replaces_a_folder_as_a_whole(tmp_path):
    out = tmp_path / "index"
    with atomic_dir(out) as tmp:
        (tmp / "a").write_text("1")
    with atomic_dir(out) as tmp:
        (tmp / "b").write_text("2")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "c").write_text("3")
        raise ValueError("failed half-way")
    assert sorted(p.name for p in out.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_recover_dir_undoes_a_crash_between_the_two_renames(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "state.json").write_text("{}")
    os.replace(out, tmp_path / f".ckpt.old-{12345}")  # as if killed after the first rename
    assert not out.exists()
    recover_dir(out)
    assert (out / "state.json").read_text() == "{}"
    recover_dir(out)  # a no-op when the folder is there
    assert out.is_dir()


def test_provenance(tmp_path):
    a, b = tmp_path / "a.jpg", tmp_path / "b.jpg"
    a.write_bytes(b"1")
    b.write_bytes(b"22")
    fp = files_fingerprint([a, b])
    assert len(fp) == 16 and fp != files_fingerprint([a])
    b.write_bytes(b"333")
    assert files_fingerprint([a, b]) != fp
    commit = git_commit()
    assert commit == "unknown" or len(commit) == 40
