"""llama.cpp's own converter (`convert_hf_to_gguf.py`), the reference for every architecture llama.cpp runs.

It is not a package: it ships inside llama-cpp-python's source distribution on PyPI, under `vendor/llama.cpp/`
(the script, its `conversion/` package and the matching `gguf-py`), at exactly the llama.cpp version that the
installed llama-cpp-python runs. hcp takes it from the source distribution of the *installed* version, once
(`python -m hcp.export.reference`, which scripts/setup.sh runs), and keeps only those files in its cache under
`llama.cpp/<version>/`; exporting never needs the network after that. Its code is third-party (MIT, its
LICENSE kept beside it) and is never imported into hcp's process: it runs in a child process through
`reference_driver.py`, with its own gguf-py first on the path (the installed `gguf` may be another version).

The driver adds what hcp guarantees on top of the reference's output: the chat template the model was trained
with, `hcp.*` provenance, and the tokenizer settings that make llama.cpp tokenize like the HF tokenizer used
in training (see convert.py: `tokenizer_overrides`).
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp.errors import ExportError
from hcp.export.sdist import PACKAGE, SDIST_ENV, extract_vendor, installed_version, source_archive
from hcp.files import atomic_folder, atomic_path, atomic_write_text

# What the converter needs from the source distribution (a 76 MB archive): the script, its model classes, the
# gguf-py it was written against, and the license.
MEMBERS = ("convert_hf_to_gguf.py", "conversion/", "gguf-py/gguf/", "LICENSE")
MARKER = "hcp_reference.json"  # written last: a folder without it is incomplete
SETUP_COMMAND = "python -m hcp.export.reference"
DRIVER = Path(__file__).with_name("reference_driver.py")
TAIL_LINES = 8  # of the converter's output, in an error


def reference_dir(version: str | None = None) -> Path:
    from hcp.train.base_model import cache_dir

    return cache_dir() / "llama.cpp" / (version or installed_version())


def find_reference() -> Path:
    """The cached converter of the installed llama-cpp-python version; an error saying how to get it if absent."""
    folder = reference_dir()
    if not (folder / MARKER).is_file():
        raise ExportError(f"llama.cpp's converter for {PACKAGE} {folder.name} is not set up in {folder} — run "
                          "'python -m hcp.export.reference' once (scripts/setup.sh does), or with --sdist FILE "
                          f"on a machine without PyPI")
    return folder


def install_reference(sdist: str | Path | None = None, *, quiet: bool = True) -> Path:
    """Put the installed version's converter into hcp's cache (once) and return its folder.

    `sdist`: a local llama_cpp_python-<version>.tar.gz (else $HCP_LLAMA_CPP_SDIST, else `pip download`).
    """
    from hcp.train.base_model import sha256_file

    version = installed_version()
    dest = reference_dir(version)
    if (dest / MARKER).is_file():
        return dest
    with source_archive(version, sdist, quiet=quiet, retry=SETUP_COMMAND) as archive, \
            atomic_folder(dest) as work:  # an interrupted run leaves nothing half-written
        extract_vendor(archive, version, work, lambda path: path.startswith(MEMBERS), "convert_hf_to_gguf.py")
        atomic_write_text(work / MARKER, json.dumps({
            "package": PACKAGE, "version": version, "sdist": archive.name,
            "sdist_sha256": sha256_file(archive), "installed": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }, indent=2))
    return dest


# --- running it -------------------------------------------------------------------------------------------


@dataclass
class ReferenceRun:
    path: Path
    seconds: float
    architecture: str  # the HF architecture the converter used
    gguf_architecture: str


def run_reference(model_dir: Path, out_path: Path, *, outtype: str, name: str, overrides: dict[str, Any],
                  timeout: float | None = None) -> ReferenceRun:
    """Convert `model_dir` with llama.cpp's converter in a child process, `overrides` applied on top (see
    reference_driver.py for their form), into `out_path` (written atomically)."""
    converter = find_reference()
    started = time.perf_counter()
    with atomic_path(out_path, private=True) as tmp, tempfile.TemporaryDirectory(prefix="hcp-reference-") as work:
        request = Path(work) / "request.json"
        report = Path(work) / "report.json"
        request.write_text(json.dumps({
            "converter": str(converter), "model_dir": str(model_dir), "out": str(tmp), "outtype": outtype,
            "name": name, "report": str(report), **overrides,
        }))
        try:
            done = subprocess.run([sys.executable, str(DRIVER), str(request)], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except subprocess.TimeoutExpired:
            raise ExportError(f"llama.cpp's converter did not finish {model_dir} within {timeout:.0f} s") from None
        result = json.loads(report.read_text()) if report.is_file() else {}
        if result.get("unknown_architecture"):
            raise ExportError(f"{model_dir}: architecture {result['unknown_architecture']} is not one llama.cpp's "
                              f"converter ({PACKAGE} {converter.name}) knows, so llama.cpp cannot run it either")
        if done.returncode != 0 or not result.get("ok"):
            reason = result.get("error") or _tail(done.stderr or done.stdout)
            raise ExportError(f"llama.cpp's converter ({PACKAGE} {converter.name}) could not convert {model_dir}: "
                              f"{reason}")
    return ReferenceRun(out_path, round(time.perf_counter() - started, 2), result["architecture"],
                        result["gguf_architecture"])


def _tail(output: str) -> str:
    lines = [line for line in output.strip().splitlines() if line.strip()]
    return " | ".join(lines[-TAIL_LINES:]) or "no output"


def main(argv: list[str] | None = None) -> int:
    """`python -m hcp.export.reference [--sdist FILE]`: set up the converter of the installed version."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m hcp.export.reference", description=main.__doc__)
    parser.add_argument("--sdist", type=Path, help=f"a local llama_cpp_python-<version>.tar.gz (else ${SDIST_ENV}, "
                                                   "else pip download)")
    args = parser.parse_args(argv)
    try:
        folder = install_reference(args.sdist, quiet=False)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201 - a setup command's only output
        return 1
    print(f"llama.cpp's converter for {PACKAGE} {folder.name}: {folder}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
