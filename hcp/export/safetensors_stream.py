"""Reading and writing safetensors files one tensor at a time.

The `safetensors` library writes a file from a dict of tensors held in memory at once; merging a 7B model on
a 16 GB laptop cannot afford that. The format is simple (8-byte header length, a JSON header with each
tensor's dtype, shape and byte range, then the raw bytes in order), so when every tensor's dtype and shape are
known up front the header can be written first and the tensors streamed after it.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterable
from pathlib import Path

import torch

from hcp.errors import ExportError
from hcp.files import atomic_path

DTYPES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16", torch.int64: "I64",
          torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8", torch.bool: "BOOL",
          torch.float64: "F64"}
SIZES = {"F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1, "F64": 8}


def write_streaming(
    path: Path,
    layout: list[tuple[str, str, tuple[int, ...]]],
    tensors: Iterable[tuple[str, torch.Tensor]],
    metadata: dict[str, str] | None = None,
    private: bool = False,
) -> int:
    """Write `tensors` (yielded in `layout` order: name, safetensors dtype, shape) to `path`, atomically (and
    readable by its owner only when `private`: trained weights). Returns the bytes written. Peak memory: the
    tensor being written."""
    header: dict[str, object] = {"__metadata__": metadata or {}}
    offset = 0
    for name, dtype, shape in layout:
        size = math.prod(shape) * SIZES[dtype]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)  # the data starts 8-byte aligned
    with atomic_path(path, private) as tmp, tmp.open("wb") as out:
        out.write(struct.pack("<Q", len(blob)))
        out.write(blob)
        expected = iter(layout)
        for name, tensor in tensors:
            want = next(expected)
            got = (name, DTYPES[tensor.dtype], tuple(tensor.shape))
            if got != want:
                raise ValueError(f"tensor {got} does not match the announced layout {want}")
            out.write(tensor.contiguous().view(torch.uint8).reshape(-1).numpy().data)
        if next(expected, None) is not None:
            raise ValueError("fewer tensors than announced")
    return 8 + len(blob) + offset


TORCH_DTYPES = {name: dtype for dtype, name in DTYPES.items()}


def shard_paths(folder: Path, missing: str) -> list[Path]:
    """A model folder's weight files: those its index names, else every *.safetensors. `missing`: the error
    (after the folder's name) when there are none."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return [folder / n for n in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    shards = sorted(folder.glob("*.safetensors"))
    if not shards:
        raise ExportError(f"{folder}: {missing}")
    return shards


class ShardReader:
    """Reads one tensor of a safetensors file at a time with plain file reads.

    safetensors' `safe_open` maps the whole file: every tensor read stays in the process's resident memory
    until the kernel reclaims it, so a streaming merge would still show a whole shard (5 GB for Mistral-7B)
    in its RSS. Reading each tensor's byte range into a fresh buffer keeps resident memory to the tensors
    alive at the moment."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with self.path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(size))
        self.data_start = 8 + size
        self.metadata = header.pop("__metadata__", {}) or {}
        self.entries: dict[str, dict] = header

    def keys(self) -> list[str]:
        # In file order, as the tensors lie on disk.
        return sorted(self.entries, key=lambda name: self.entries[name]["data_offsets"][0])

    def dtype(self, name: str) -> str:
        return self.entries[name]["dtype"]

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def get(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        start, end = entry["data_offsets"]
        buffer = bytearray(end - start)
        with self.path.open("rb", buffering=0) as f:
            f.seek(self.data_start + start)
            view = memoryview(buffer)
            while view:
                read = f.readinto(view)
                if not read:
                    raise ValueError(f"{self.path}: truncated safetensors file at {name}")
                view = view[read:]
        if not buffer:
            return torch.empty(self.shape(name), dtype=TORCH_DTYPES[entry["dtype"]])
        return torch.frombuffer(buffer, dtype=TORCH_DTYPES[entry["dtype"]]).reshape(self.shape(name))
