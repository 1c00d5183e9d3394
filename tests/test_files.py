"""Atomic, synced writes with the right permissions from the first byte (hcp/files.py)."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from hcp.errors import DataError
from hcp.files import atomic_path, atomic_write_text, decode_text, open_for_append, read_text_file, state_dir


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


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # the usual umask, under which files are made readable by all unless private
    yield
    os.umask(old)


def test_a_file_opened_for_appending_is_created_private_and_its_folder_synced(tmp_path, monkeypatch, umask_022):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    path = tmp_path / "ratings.jsonl"
    file, created = open_for_append(path, private=True)
    with file:
        file.write(b"a\n")
    assert created and mode(path) == 0o600
    assert synced == ["folder"]  # the new name survives a power cut once a record is synced
    synced.clear()
    file, created = open_for_append(path, private=True)
    with file:
        file.write(b"b\n")
    assert not created and synced == [] and path.read_bytes() == b"a\nb\n"


def test_an_existing_file_opened_for_appending_keeps_its_mode(tmp_path, umask_022):
    path = tmp_path / "shared.jsonl"
    path.write_text("")
    path.chmod(0o640)  # widened on purpose by its owner
    open_for_append(path, private=True)[0].close()
    assert mode(path) == 0o640


def test_the_state_folder_is_the_users_alone(tmp_path, monkeypatch, umask_022):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    assert state_dir() == tmp_path / "state" / "hcp" and mode(state_dir()) == 0o700
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert state_dir() == tmp_path / "home" / ".local" / "state" / "hcp" and mode(state_dir()) == 0o700


def test_a_folder_is_built_aside_and_replaces_the_old_only_when_complete(tmp_path):
    from hcp.files import atomic_folder

    dest = tmp_path / "cache" / "entry"
    with pytest.raises(RuntimeError), atomic_folder(dest) as work:
        (work / "half.bin").write_text("x")
        raise RuntimeError("interrupted")
    assert not dest.exists() and list((tmp_path / "cache").iterdir()) == []
    dest.mkdir()
    (dest / "stale").write_text("from a half-built run")
    with atomic_folder(dest) as work:
        (work / "done").write_text("complete")
    assert sorted(p.name for p in dest.iterdir()) == ["done"]
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["entry"]
