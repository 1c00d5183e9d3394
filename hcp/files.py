"""Reading the files users give, and writing files so that no reader ever sees one half-written.

Every stage writes through `atomic_path` (or `atomic_write_text` on top of it): the content goes to a
temporary file beside the target, is synced to disk, renamed over the target, and the folder is synced, so
that after a crash or a power cut the target holds the old content or the new, never a mix. Files that hold
transcripts or model answers are created `private` (readable by their owner only) from the first byte; the
others get the usual permissions of the process's umask. The umask itself is never changed: another thread
may be creating a file at the same moment. An append-only file (the batch results) is opened with
`open_for_append`, which creates it the same way and syncs its folder; its writer syncs each record.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from hcp.errors import DataError

PRIVATE_MODE = 0o600  # transcripts and model answers: the owner's alone
PRIVATE_DIR_MODE = 0o700
PUBLIC_MODE = 0o666  # anything else, narrowed by the umask as any program's files are


# --- reading ----------------------------------------------------------------------------------------------


def read_file_bytes(path: Path, folder_hint: str = "expected a file") -> bytes:
    """A file's bytes, or a DataError that says what is wrong with the path."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        reason = "file not found"
    except IsADirectoryError:
        reason = f"is a folder — {folder_hint}"
    except OSError as exc:
        reason = f"cannot read the file ({exc.strerror})"
    raise DataError(f"{path}: {reason}", reason=reason)


def decode_text(raw: bytes, source: str) -> str:
    """UTF-8 text (a byte-order mark is dropped), or a DataError naming the line of the first bad byte."""
    if b"\x00" in raw[:8192]:
        reason = "looks like a binary file — expected UTF-8 text"
        raise DataError(f"{source}: {reason}", reason=reason)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        reason = f"invalid UTF-8 at byte {exc.start} (line {line}) — save it as UTF-8"
        raise DataError(f"{source}:{line}: invalid UTF-8 at byte {exc.start} — save it as UTF-8",
                        reason=reason) from None


def read_text_file(path: Path, folder_hint: str = "expected a file") -> str:
    """A user's UTF-8 text file, with one-line errors for every way it can be wrong."""
    return decode_text(read_file_bytes(path, folder_hint), str(path))


# --- writing ----------------------------------------------------------------------------------------------


def create_file(path: Path, private: bool, exclusive: bool = True) -> int:
    """Open a new file for writing with the right permissions from the first byte; returns the descriptor."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags, PRIVATE_MODE if private else PUBLIC_MODE)
    if private:
        os.fchmod(fd, PRIVATE_MODE)  # an existing file (exclusive=False) keeps its mode otherwise
    return fd


def make_folder(folder: Path, private: bool = False) -> Path:
    """Create an output folder (and its parents), or say in one line why it cannot be. `private`: a folder
    created now is its owner's alone (0700, whatever the umask); one that exists keeps the mode its owner gave it."""
    try:
        if private:
            folder.parent.mkdir(parents=True, exist_ok=True)
            try:
                folder.mkdir(mode=PRIVATE_DIR_MODE)
                os.chmod(folder, PRIVATE_DIR_MODE)
            except FileExistsError:
                if not folder.is_dir():
                    raise
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise DataError(f"{folder}: a file is in the way of the output folder — choose another output location") \
            from None
    except OSError as exc:
        raise DataError(f"{folder}: cannot create the output folder ({exc.strerror}) — choose a location you can "
                        "write to") from None
    return folder


def _cannot_write(path: Path, exc: OSError) -> DataError:
    return DataError(f"{path}: cannot write the file ({exc.strerror}) — choose a location you can write to")


def open_for_append(path: Path, private: bool) -> tuple[BinaryIO, bool]:
    """A file open for reading and appending, and whether it was created now. A new file gets the right
    permissions from the first byte and its folder is synced, so that once a record appended to it is synced,
    the file itself survives a power cut; an existing file keeps the mode its owner gave it."""
    flags = os.O_RDWR | os.O_APPEND | getattr(os, "O_CLOEXEC", 0)
    make_folder(path.parent)
    try:
        fd = os.open(path, flags | os.O_CREAT | os.O_EXCL, PRIVATE_MODE if private else PUBLIC_MODE)
    except FileExistsError:
        try:
            return os.fdopen(os.open(path, flags), "a+b"), False
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    if private:
        os.fchmod(fd, PRIVATE_MODE)  # exact, whatever the umask
    file = os.fdopen(fd, "a+b")
    fsync_path(path.parent)
    return file, True


def state_dir() -> Path:
    """hcp's per-user folder for what it keeps between runs for the user alone (saved invalid answers of
    `hcp score`): $XDG_STATE_HOME/hcp, else ~/.local/state/hcp; created readable by its owner only."""
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    folder = Path(base) / "hcp"
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        folder.mkdir(mode=PRIVATE_DIR_MODE)
        os.chmod(folder, PRIVATE_DIR_MODE)  # exact, whatever the umask
    except FileExistsError:
        pass
    return folder


def fsync_path(path: Path) -> None:
    """Flush a file (or a folder's entries) to disk."""
    flags = os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if path.is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: Path, private: bool = False) -> Iterator[Path]:
    """A temporary path beside `path` to write to (by hand or by a library that takes a file name); on a clean
    exit it is synced and renamed over `path`, and the folder synced; on an error it is removed.

        with atomic_path(out / "model.gguf") as tmp:
            writer = GGUFWriter(tmp, arch)
            ...
    """
    path = Path(path)
    make_folder(path.parent)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.partial")
    try:
        os.close(create_file(tmp, private))
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        yield tmp
        fsync_path(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_path(path.parent)


@contextmanager
def atomic_folder(dest: Path) -> Iterator[Path]:
    """A temporary folder beside `dest` to build in; on a clean exit it replaces `dest` (a half-built one, or
    one a concurrent run finished first), on an error it is removed: a later command never takes a half-built
    folder (a cache entry) as complete."""
    import shutil
    import tempfile

    make_folder(dest.parent)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name[:16]}.", dir=dest.parent))
    try:
        yield work
        if dest.exists():
            shutil.rmtree(dest, ignore_errors=True)
        os.replace(work, dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def atomic_write_bytes(path: Path, data: bytes, private: bool = False) -> Path:
    """Write a whole file atomically (see `atomic_path`)."""
    with atomic_path(path, private) as tmp, tmp.open("wb") as out:
        out.write(data)
    return path


def copy_private(source: Path, target: Path) -> Path:
    """Copy a small file (a tokenizer, a licence) atomically into a file readable by its owner only: beside trained
    weights, what `shutil.copy2` would carry over is the source's mode, often readable by all."""
    return atomic_write_bytes(target, source.read_bytes(), private=True)


def atomic_write_text(path: Path, text: str, private: bool = False) -> Path:
    """Write a whole UTF-8 text file atomically (see `atomic_path`); newlines are written as given."""
    return atomic_write_bytes(path, text.encode("utf-8"), private)
