"""Shared fixtures. Heavy ones (tiny models, the Ollama double) live in their own modules and are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcp.config import load_config
from hcp.rubric import Rubric

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def own_registry(tmp_path_factory, monkeypatch) -> Path:
    """Every test's exports register in a registry of its own, never in the user's (hcp's data folder)."""
    folder = tmp_path_factory.mktemp("registry") / "registry"
    monkeypatch.setenv("HCP_REGISTRY", str(folder))
    return folder


@pytest.fixture(scope="session")
def config():
    return load_config()


@pytest.fixture(scope="session")
def rubric(config) -> Rubric:
    return Rubric.from_config(config)


@pytest.fixture(scope="session")
def sample_transcript() -> str:
    return (ROOT / "data" / "sample_transcript.txt").read_text(encoding="utf-8")


@pytest.fixture(scope="session")
def ollama_double():
    """The Ollama protocol double (tests/ollama_double.py) on 127.0.0.1, serving the embedded default GGUF as
    'smollm2'; a test that turns its knobs calls .reset() after. Imported here lazily: it loads llama.cpp."""
    from hcp.scoring.backends.llama_cpp import default_model_path
    from tests.ollama_double import OllamaDouble

    with OllamaDouble({"smollm2": default_model_path()}, threads=1) as double:
        yield double


# --- tiny models (tests/tiny.py): built once per session, read-only for the tests that share them ----------


@pytest.fixture(scope="session")
def tiny_mistral_dir(tmp_path_factory) -> Path:
    """A random 2-layer Mistral with a SentencePiece BPE tokenizer and Mistral v0.3's chat template."""
    from tests.tiny import build_tiny_mistral

    return build_tiny_mistral(tmp_path_factory.mktemp("tiny_mistral"))


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """A random 2-layer Llama with a byte-level BPE tokenizer and SmolLM2's ChatML chat template."""
    from tests.tiny import build_tiny_llama_bpe

    return build_tiny_llama_bpe(tmp_path_factory.mktemp("tiny_llama"))


@pytest.fixture(scope="session")
def tiny_llama_bias_dir(tmp_path_factory) -> Path:
    """The tiny Llama with random (non-zero) q/k/v/o projection biases. Weights drawn with std 0.1, not 0.02:
    at 0.02 attention barely moves the logits, and a mishandled bias would hide inside the F32 tolerance."""
    from tests.tiny import build_tiny_llama_bpe

    return build_tiny_llama_bpe(tmp_path_factory.mktemp("tiny_llama_bias"), attention_bias=True,
                                initializer_range=0.1)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """tiny_model("qwen2") -> the folder of tests/tiny.py's build_tiny("qwen2"), built once per session."""
    from tests.tiny import build_tiny

    built: dict[str, Path] = {}

    def get(architecture: str) -> Path:
        if architecture not in built:
            built[architecture] = build_tiny(architecture, tmp_path_factory.mktemp(f"tiny_{architecture}"))
        return built[architecture]

    return get
