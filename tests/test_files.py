"""Atomic, synced writes with the right permissions from the first byte (hcp/files.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hcp.errors import DataError
from hcp.files import atomic_path, atomic_write_text, decode_text, read_text_file


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_private_files_are_the_owners_alone_and_others_follow_the_umask(tmp_path):
    private = atomic_write_text(tmp_path / "ratings.jsonl", "{}\n", private=True)
    public = atomic_write_text(tmp_path / "metrics.json", "{}\n")
    umask = os.umask(0o022)  # this test owns the process; restored below
    os.umask(umask)
    assert mode(private) == 0o600
    assert mode(public) == 0o666 & ~umask


def test_replacing_a_wider_file_makes_it_private(tmp_path):
    path = tmp_path / "split.jsonl"
    path.write_text("old")
    path.chmod(0o644)
    atomic_write_text(path, "new", private=True)
    assert path.read_text() == "new" and mode(path) == 0o600


def test_an_error_leaves_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("crash in the middle of writing")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_reader_never_sees_a_half_written_file(tmp_path):
    path = atomic_write_text(tmp_path / "big.txt", "a" * 1_000_000)
    seen: set[int] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            seen.add(len(path.read_text()))

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(20):
        atomic_write_text(path, ("b" if n % 2 else "a") * 1_000_000)
    stop.set()
    reader.join()
    assert seen == {1_000_000}


def test_writes_do_not_touch_the_umask(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(os, "umask", lambda *a: calls.append(a) or 0o022)
    atomic_write_text(tmp_path / "x", "x", private=True)
    atomic_write_text(tmp_path / "y", "y")
    assert calls == []


@pytest.mark.parametrize(("raw", "message", "reason"), [
    (b"a\x00b", "t.txt: looks like a binary file", "looks like a binary file — expected UTF-8 text"),
    (b"ok\n\xff", "t.txt:2: invalid UTF-8 at byte 3", "invalid UTF-8 at byte 3 (line 2) — save it as UTF-8"),
])
def test_decode_errors_carry_the_reason_without_the_place(raw, message, reason):
    with pytest.raises(DataError) as caught:
        decode_text(raw, "t.txt")
    assert str(caught.value).startswith(message) and caught.value.reason == reason


def test_reading_a_folder_or_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(DataError, match="is a folder — give a file"):
        read_text_file(tmp_path, "give a file")
    with pytest.raises(DataError) as caught:
        read_text_file(tmp_path / "missing.txt")
    assert caught.value.reason == "file not found"
