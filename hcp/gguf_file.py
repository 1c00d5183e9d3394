"""Recognising a GGUF file and reading scalar metadata from its header, fast.

gguf-py's GGUFReader parses every field and tensor into numpy arrays (seconds on a 49k-token vocabulary);
hcp often needs one or two scalars (context length, architecture) before deciding how to load a model, so
this walks the key-value section and skips arrays without decoding them.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path
from typing import Any, BinaryIO

GGUF_MAGIC = b"GGUF"  # the first four bytes of every GGUF file
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


def _read(f: BinaryIO, fmt: str) -> Any:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise ValueError("truncated GGUF header")
    return struct.unpack(fmt, data)[0]


def _length(f: BinaryIO, item_size: int = 1) -> int:
    """A length read from the header, checked against the bytes left in the file: a corrupt or forged header
    would otherwise ask for exabytes (MemoryError, OverflowError) instead of being refused as not a GGUF."""
    count = _read(f, "<Q")
    position = f.tell()
    left = os.fstat(f.fileno()).st_size - position
    if count * item_size > left:
        raise ValueError(f"corrupt GGUF header: a length of {count} at byte {position} runs past the end of the file")
    return count


def _string(f: BinaryIO) -> str:
    return f.read(_length(f)).decode("utf-8", errors="replace")


def _skip(f: BinaryIO, kind: int) -> None:
    if kind == _STRING:
        f.seek(_length(f), 1)
    elif kind == _ARRAY:
        item = _read(f, "<I")
        if item in _SCALARS:
            f.seek(struct.calcsize(_SCALARS[item]) * _length(f, struct.calcsize(_SCALARS[item])), 1)
        elif item in (_STRING, _ARRAY):
            for _ in range(_length(f, 8)):  # each item holds at least a u64 length
                _skip(f, item)
        else:
            raise ValueError(f"corrupt GGUF header: unknown array item type {item}")
    elif kind in _SCALARS:
        f.seek(struct.calcsize(_SCALARS[kind]), 1)
    else:
        raise ValueError(f"corrupt GGUF header: unknown value type {kind}")


def is_gguf(path: str | Path) -> bool:
    """Whether the file starts with the GGUF magic (a name ending in .gguf proves nothing)."""
    with open(path, "rb") as f:
        return f.read(4) == GGUF_MAGIC


def read_scalars(path: str | Path, keys: set[str] | None = None) -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file (only `keys`, if given). Raises ValueError if not a GGUF."""
    with open(path, "rb", buffering=1 << 16) as f:
        if f.read(4) != GGUF_MAGIC:
            raise ValueError(f"{path}: not a GGUF file")
        version = _read(f, "<I")
        if version < 2:
            raise ValueError(f"{path}: GGUF version {version} is too old")
        _read(f, "<Q")  # tensor count
        found: dict[str, Any] = {}
        for _ in range(_length(f, 12)):  # each key-value pair takes at least 12 bytes (u64 length, u32 type)
            key, kind = _string(f), _read(f, "<I")
            wanted = keys is None or key in keys
            if wanted and kind == _STRING:
                found[key] = _string(f)
            elif wanted and kind in _SCALARS:
                found[key] = _read(f, _SCALARS[kind])
            else:
                _skip(f, kind)
            if keys is not None and keys <= found.keys():
                break
        return found


def context_length(path: str | Path) -> int | None:
    """`<architecture>.context_length`: the longest context the model was trained for."""
    meta = read_scalars(path)
    arch = meta.get("general.architecture")
    value = meta.get(f"{arch}.context_length")
    return int(value) if value is not None else None


def file_identity(path: Path) -> str:
    """Which file a GGUF is, cheaply: its size and modification time. A re-export, a copy or a touch gives a
    new identity (and so a rating again, the safe side); hashing a 4 GB file would take seconds on every run."""
    info = Path(path).stat()
    return f"size {info.st_size}, mtime_ns {info.st_mtime_ns}"
