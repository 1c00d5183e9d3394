"""llama-cpp-python's source distribution: where hcp takes llama.cpp's own tools from, at the installed version.

llama.cpp ships no package of its converter or its server, but llama-cpp-python's source archive on PyPI (a
76 MB `llama_cpp_python-<version>.tar.gz`) carries the whole llama.cpp tree it was built from under
`vendor/llama.cpp/`. Two setup steps take from it: the converter (`reference.py`) and the server
(`llama_server.py`, built from those sources). Both get the archive here: a local copy the user gives (else
$HCP_LLAMA_CPP_SDIST), else `pip download` of exactly the installed version; neither keeps the archive.
"""

from __future__ import annotations

import importlib.metadata
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from tempfile import TemporaryDirectory

from hcp.errors import ExportError

PACKAGE = "llama-cpp-python"
VENDOR = "vendor/llama.cpp/"
SDIST_ENV = "HCP_LLAMA_CPP_SDIST"  # a local copy of the source distribution, for machines without PyPI


def installed_version() -> str:
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise ExportError(f"{PACKAGE} is not installed — run scripts/setup.sh (or pip install hcp)") from None


@contextmanager
def source_archive(version: str, sdist: str | Path | None, *, quiet: bool, retry: str) -> Iterator[Path]:
    """The source distribution of `version`: `sdist`, else $HCP_LLAMA_CPP_SDIST, else downloaded with pip into a
    temporary folder removed on exit. `retry`: the command that takes a local copy (`... --sdist FILE`)."""
    given = sdist or os.environ.get(SDIST_ENV)
    if given:
        yield Path(given)
        return
    with TemporaryDirectory(prefix="hcp-sdist-") as folder:
        yield _download(version, Path(folder), quiet, retry)


def _download(version: str, folder: Path, quiet: bool, retry: str) -> Path:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "--dest", str(folder),
               f"{PACKAGE}=={version}"]
    done = subprocess.run(command, capture_output=quiet, text=True, check=False)
    archives = sorted(folder.glob("*.tar.gz"))
    if done.returncode != 0 or not archives:
        raise ExportError(f"could not download the source of {PACKAGE} {version} with pip (exit {done.returncode}) "
                          f"— download llama_cpp_python-{version}.tar.gz where PyPI is reachable and run "
                          f"'{retry} --sdist FILE'")
    return archives[0]


def extract_vendor(archive: Path, version: str, dest: Path, wanted: Callable[[str], bool], required: str) -> None:
    """The members of the archive's llama.cpp tree that `wanted` takes (by their path inside vendor/llama.cpp/),
    extracted into `dest` under that path; checked to stay inside `dest` (no links, no absolute or '..' paths).
    `required`: a file the tree must have, else this is not the archive of `version`."""
    prefix = f"llama_cpp_python-{version}/{VENDOR}"
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = []
            for member in tar.getmembers():
                if not member.name.startswith(prefix):
                    continue
                relative = member.name[len(prefix):]
                if not relative or not wanted(relative) or not (member.isfile() or member.isdir()):
                    continue
                if relative.startswith("/") or ".." in Path(relative).parts:
                    raise ExportError(f"{archive}: unsafe path {member.name} in the archive")
                member.name = relative
                members.append(member)
            if not any(m.name == required for m in members):
                raise ExportError(f"{archive}: not the source distribution of {PACKAGE} {version} (no "
                                  f"{prefix}{required}) — give llama_cpp_python-{version}.tar.gz")
            tar.extractall(dest, members=members, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise ExportError(f"{archive}: cannot read the archive ({exc})") from None

