"""Quantizing a GGUF with llama.cpp's own quantizer, through llama-cpp-python's low-level API.

No separate binary: `llama_model_quantize` is the code behind llama.cpp's `llama-quantize`. It copies every
metadata key (vocabulary, chat template, hcp provenance) into the output and updates the file type.
"""

from __future__ import annotations

import ctypes
import time
from dataclasses import dataclass
from pathlib import Path

from hcp.errors import ExportError
from hcp.files import atomic_path
from hcp.scoring.backends import default_threads

# Our names -> llama.cpp's file types. `ollama create --quantize` knows only q8_0, q4_K_S and q4_K_M; hcp makes
# the file itself, so every type here works with any daemon that reads GGUF.
QUANT_TYPES = {
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "q4_k_s": "LLAMA_FTYPE_MOSTLY_Q4_K_S",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "f16": "LLAMA_FTYPE_MOSTLY_F16",
}


@dataclass
class QuantizeResult:
    path: Path
    quant: str
    bytes_in: int
    bytes_out: int
    seconds: float


def quant_label(quant: str) -> str:
    """File-name label, as llama.cpp and Ollama write it: q4_k_m -> Q4_K_M."""
    return quant.upper()


def quantize_gguf(source: str | Path, target: str | Path, quant: str = "q4_k_m",
                  threads: int | None = None) -> QuantizeResult:
    import llama_cpp

    source, target = Path(source), Path(target)
    quant = quant.lower()
    if quant not in QUANT_TYPES:
        raise ExportError(f"quantization {quant!r} is not supported — use one of {', '.join(QUANT_TYPES)}")
    if not source.is_file():
        raise ExportError(f"{source}: GGUF to quantize not found")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_TYPES[quant])
    params.nthread = threads or default_threads()
    started = time.perf_counter()
    from llama_cpp._utils import suppress_stdout_stderr

    with atomic_path(target, private=True) as tmp:  # trained weights: the owner's alone
        with suppress_stdout_stderr(disable=False):  # llama.cpp logs a line per tensor
            status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), ctypes.byref(params))
        if status != 0 or not tmp.is_file():
            raise ExportError(f"{source}: llama.cpp's quantizer failed (status {status}) for {quant}")
    return QuantizeResult(target, quant, source.stat().st_size, target.stat().st_size,
                          round(time.perf_counter() - started, 2))
