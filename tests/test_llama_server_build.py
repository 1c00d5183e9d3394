"""`python -m hcp.export.llama_server`: the build of llama-server from llama-cpp-python's source archive, run with
real CMake and the real compiler on a stand-in archive whose llama.cpp tree is a one-file C program named
llama-server (the real build takes 10-20 minutes; tests/test_llama_server.py runs what it builds)."""

from __future__ import annotations

import importlib.metadata
import json
import shutil

import pytest

from hcp.errors import ExportError
from tests.fakes import fake_sdist

VENDOR = "vendor/llama.cpp/"
# The stand-in tree: llama-server, which says its version and whether the options that would make llama.cpp's
# build fetch from the network reached CMake switched off.
CMAKE = """cmake_minimum_required(VERSION 3.14)
project(standin C)
add_executable(llama-server main.c)
target_compile_definitions(llama-server PRIVATE UI="${LLAMA_USE_PREBUILT_UI}" SSL="${LLAMA_OPENSSL}"
                           CUDA="${GGML_CUDA}")
set_target_properties(llama-server PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/bin)
"""
MAIN = """#include <stdio.h>
int main(void) { printf("version: 1 (standin) ui=%s ssl=%s cuda=%s\\n", UI, SSL, CUDA); return 0; }
"""


@pytest.mark.skipif(shutil.which("cmake") is None or shutil.which("cc") is None, reason="needs cmake and a C compiler")
def test_builds_the_server_target_from_the_installed_versions_source_once(tmp_path, monkeypatch, capsys):
    from hcp.export.llama_server import BINARY, MARKER, find_server, main

    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path / "cache"))
    version = importlib.metadata.version("llama-cpp-python")
    archive = fake_sdist(tmp_path / "sdist.tar.gz", version, {
        VENDOR + "CMakeLists.txt": CMAKE, VENDOR + "main.c": MAIN, VENDOR + "tools/server/CMakeLists.txt": "",
        "llama_cpp/llama.py": "# bindings"})
    with pytest.raises(ExportError, match=r"not built in .* run 'scripts/setup.sh --llama-server'"):
        find_server()
    assert main(["--path"]) == 1 and "scripts/setup.sh --llama-server" in capsys.readouterr().err
    assert main(["--sdist", str(archive), "--cpu", "--jobs", "1"]) == 0
    printed = capsys.readouterr().out
    folder = tmp_path / "cache" / "llama-server" / version
    assert f"{BINARY} (CPU) built in" in printed and str(folder / BINARY) in printed
    assert find_server() == folder / BINARY
    assert sorted(p.name for p in folder.iterdir()) == [MARKER, BINARY]  # the binary alone, no build tree
    info = json.loads((folder / MARKER).read_text())
    assert info["version"] == version and info["cuda"] is False and info["build_seconds"] > 0
    # What the binary said: it runs, and the build had the web UI download, OpenSSL and CUDA off
    assert info["llama_cpp"] == "1 (standin) ui=OFF ssl=OFF cuda=OFF"
    assert "-DLLAMA_BUILD_SERVER=ON" in info["cmake_flags"] and "-DBUILD_SHARED_LIBS=OFF" in info["cmake_flags"]
    assert main(["--path"]) == 0 and capsys.readouterr().out == f"{folder / BINARY}\n"  # for a shell: $(...)
    # Once per version: a second run builds nothing (no archive needed)
    assert main(["--sdist", str(tmp_path / "missing.tar.gz")]) == 0
    assert "was already built" in capsys.readouterr().out


def test_a_build_that_fails_leaves_nothing_in_the_cache(tmp_path, monkeypatch, capsys):
    from hcp.export.llama_server import main

    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path / "cache"))
    version = importlib.metadata.version("llama-cpp-python")
    broken = fake_sdist(tmp_path / "broken.tar.gz", version, {
        VENDOR + "CMakeLists.txt": "this is not cmake(", VENDOR + "tools/server/CMakeLists.txt": ""})
    assert main(["--sdist", str(broken), "--cpu", "--jobs", "1"]) == 1
    assert "error: cmake could not configure llama-server" in capsys.readouterr().err
    other = fake_sdist(tmp_path / "other.tar.gz", "0.0.1", {VENDOR + "tools/server/CMakeLists.txt": ""})
    assert main(["--sdist", str(other), "--cpu"]) == 1
    assert f"not the source distribution of llama-cpp-python {version}" in capsys.readouterr().err
    assert not (tmp_path / "cache" / "llama-server" / version).exists()


def test_the_tests_fail_instead_of_skipping_where_ci_requires_the_server(tmp_path, monkeypatch):
    from tests.llama_server import REQUIRE_VARIABLE, llama_server_binary

    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="scripts/setup.sh --llama-server"):
        llama_server_binary()
    monkeypatch.setenv(REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="scripts/setup.sh --llama-server"):
        llama_server_binary()
