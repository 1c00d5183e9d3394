"""llama.cpp's own server (`llama-server`), built from the sources setup already takes: an engine that batches.

`--backend openai` drives any OpenAI-compatible server; llama-server is the one that runs on the same GGUF files
as the rest of hcp and batches requests (`-np N --cont-batching`). It is not on PyPI, but its sources are: the
llama.cpp tree inside llama-cpp-python's source distribution (`vendor/llama.cpp/tools/server/`), at exactly
the llama.cpp version the installed llama-cpp-python runs. `python -m hcp.export.llama_server` (or
`scripts/setup.sh --llama-server`) builds only that target with CMake, once per version, and keeps the binary in
hcp's cache under `llama-server/<version>/` with a JSON saying what was built, how and how long it took.

The build downloads nothing: the web UI's prebuilt assets (which llama.cpp would fetch from Hugging Face) and its
npm build are off, so the server serves its API without a page, and HTTPS support (OpenSSL) is off — hcp talks
to it on loopback. A CPU build by default, tuned to this machine's CPU (GGML_NATIVE: the binary is for this
machine, as the cache is); a CUDA build where `nvcc` and a GPU are present. The binary is linked statically
against llama.cpp's own libraries, so the cached folder holds one file besides the JSON.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from tempfile import TemporaryDirectory

from hcp.errors import ExportError
from hcp.export.sdist import PACKAGE, SDIST_ENV, extract_vendor, installed_version, source_archive
from hcp.files import atomic_folder, atomic_write_text

BINARY = "llama-server"
MARKER = "hcp_llama_server.json"  # written last: a folder without it is incomplete
SETUP_COMMAND = "python -m hcp.export.llama_server"
DEFAULT_JOBS = 2
# Only the server, and nothing fetched from the network at configure or build time.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_NATIVE=ON", "-DGGML_CCACHE=OFF",
    "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",  # no npm, no download of the web page's assets
    "-DLLAMA_OPENSSL=OFF", "-DFETCHCONTENT_FULLY_DISCONNECTED=ON",
)
TAIL_LINES = 15  # of a failed build's output, in the error
VERSION_TIMEOUT_S = 60


@dataclass
class ServerBuild:
    binary: Path
    seconds: float  # 0 when it was already built
    cuda: bool
    built_now: bool


def server_dir(version: str | None = None) -> Path:
    from hcp.train.base_model import cache_dir

    return cache_dir() / "llama-server" / (version or installed_version())


def find_server() -> Path:
    """The built llama-server of the installed llama-cpp-python version; an error saying how to build it if absent."""
    folder = server_dir()
    if not (folder / MARKER).is_file() or not (folder / BINARY).is_file():
        raise ExportError(f"llama-server for {PACKAGE} {folder.name} is not built in {folder} — run "
                          f"'scripts/setup.sh --llama-server' (or '{SETUP_COMMAND}') once: 10-20 minutes on two cores")
    return folder / BINARY


def build_info(folder: Path | None = None) -> dict[str, object]:
    """What the cached build says of itself (its JSON)."""
    return json.loads(((folder or server_dir()) / MARKER).read_text())


def cuda_available() -> bool:
    """A CUDA toolkit to compile with and a GPU to run on."""
    if not shutil.which("nvcc") or not shutil.which("nvidia-smi"):
        return False
    try:
        return subprocess.run(["nvidia-smi", "-L"], capture_output=True, timeout=30, check=False).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def build_server(sdist: str | Path | None = None, *, cuda: bool | None = None, jobs: int = DEFAULT_JOBS,
                 work: Path | None = None, quiet: bool = True) -> ServerBuild:
    """Build llama-server from the installed version's sources into hcp's cache (once) and say where it is.

    `sdist`: a local llama_cpp_python-<version>.tar.gz (else $HCP_LLAMA_CPP_SDIST, else `pip download`).
    `cuda`: None builds for CUDA where a GPU and nvcc are present. `work`: a folder to keep the sources and the
    build tree in (an interrupted build continues there); by default a temporary one.
    """
    version = installed_version()
    dest = server_dir(version)
    if (dest / MARKER).is_file() and (dest / BINARY).is_file():
        info = build_info(dest)
        return ServerBuild(dest / BINARY, 0.0, bool(info.get("cuda")), built_now=False)
    if shutil.which("cmake") is None:
        raise ExportError("cmake is not installed — install it (apt-get install cmake, or pip install cmake) and a "
                          "C++ compiler, then run this again")
    cuda = cuda_available() if cuda is None else cuda
    flags = [*CMAKE_FLAGS, f"-DGGML_CUDA={'ON' if cuda else 'OFF'}"]
    with TemporaryDirectory(prefix="hcp-llama-server-") as temporary:
        root = Path(work) if work else Path(temporary)
        source, build = root / "llama.cpp", root / "build"
        started = time.perf_counter()
        with source_archive(version, sdist, quiet=quiet, retry=SETUP_COMMAND) as archive:
            if not (source / "tools" / "server" / "CMakeLists.txt").is_file():
                extract_vendor(archive, version, source, lambda path: True, "tools/server/CMakeLists.txt")
            _cmake(["-S", str(source), "-B", str(build), *flags], "configure", quiet)
            _cmake(["--build", str(build), "--target", BINARY, "--config", "Release", "-j", str(jobs)], "build",
                   quiet)
            sdist_name = archive.name
        seconds = round(time.perf_counter() - started, 1)
        built = build / "bin" / BINARY
        if not built.is_file():
            raise ExportError(f"the build of {BINARY} finished but left no {built}")
        llama_version = _binary_version(built)
        with atomic_folder(dest) as folder:  # an interrupted copy leaves nothing half-written
            shutil.copy2(built, folder / BINARY)
            os.chmod(folder / BINARY, 0o755)
            atomic_write_text(folder / MARKER, json.dumps({
                "package": PACKAGE, "version": version, "llama_cpp": llama_version, "sdist": sdist_name,
                "cuda": cuda, "cmake_flags": flags, "jobs": jobs, "build_seconds": seconds,
                "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            }, indent=2))
    return ServerBuild(dest / BINARY, seconds, cuda, built_now=True)


def _cmake(args: list[str], step: str, quiet: bool) -> None:
    done = subprocess.run(["cmake", *args], capture_output=quiet, text=True, check=False)
    if done.returncode != 0:
        tail = [line for line in (done.stdout or "").splitlines() + (done.stderr or "").splitlines() if line.strip()]
        shown = " | ".join(tail[-TAIL_LINES:]) if quiet else "see the output above"
        raise ExportError(f"cmake could not {step} {BINARY} (exit {done.returncode}): {shown}")


def _binary_version(binary: Path) -> str:
    """What the binary says it is ('version: 1 (abc123)' ...): it also proves that it runs on this machine."""
    try:
        done = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=VERSION_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportError(f"the built {binary} does not run ({type(exc).__name__})") from None
    lines = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip().startswith("version")]
    if done.returncode != 0 or not lines:
        raise ExportError(f"the built {binary} does not run (exit {done.returncode})")
    return lines[0].removeprefix("version:").strip()


def main(argv: list[str] | None = None) -> int:
    """`python -m hcp.export.llama_server`: build llama-server from the installed llama-cpp-python's sources."""
    import argparse

    parser = argparse.ArgumentParser(prog=SETUP_COMMAND, description=main.__doc__)
    parser.add_argument("--sdist", type=Path, help=f"a local llama_cpp_python-<version>.tar.gz (else ${SDIST_ENV}, "
                                                   "else pip download)")
    parser.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help="compile jobs (default 2)")
    device = parser.add_mutually_exclusive_group()
    device.add_argument("--cuda", action="store_true", default=None, help="build for CUDA (default: where a GPU is)")
    device.add_argument("--cpu", dest="cuda", action="store_false", help="build for the CPU only")
    parser.add_argument("--work", type=Path, help="keep the sources and build tree here (a rerun continues them)")
    parser.add_argument("--path", action="store_true", help="only print the built binary's path (an error if none)")
    args = parser.parse_args(argv)
    if args.path:
        try:
            print(find_server())  # noqa: T201
        except ExportError as exc:
            print(f"error: {exc}", file=sys.stderr)  # noqa: T201
            return 1
        return 0
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        if not (server_dir() / MARKER).is_file():
            print(f"building {BINARY} from the sources of {PACKAGE} {installed_version()} (once; 10-20 minutes on "  # noqa: T201 - a setup command's output
                  "two cores)", flush=True)
        build = build_server(args.sdist, cuda=args.cuda, jobs=args.jobs, work=args.work, quiet=False)
    except ExportError as exc:
        print(f"error: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    kind = "CUDA" if build.cuda else "CPU"
    if build.built_now:
        print(f"{BINARY} ({kind}) built in {build.seconds:.0f} s: {build.binary}")  # noqa: T201
    else:
        print(f"{BINARY} ({kind}) was already built: {build.binary}")  # noqa: T201
    return 0


if __name__ == "__main__":
    sys.exit(main())
