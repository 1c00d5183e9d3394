"""Scoring backends behind one small interface.

A backend turns a chat (system + user message) and a JSON schema into one schema-constrained answer, and
counts the tokens of a chat before it is sent, so that a transcript that does not fit is refused rather than
silently truncated. `ollama` talks to the local daemon; `llama-cpp` runs a GGUF in this process; `openai` talks
to any OpenAI-compatible server (vLLM, SGLang, llama-server), the way to scale past one machine.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp.errors import BackendError

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
BACKENDS = ("auto", "ollama", "llama-cpp", "openai")


# Every HTTP client that carries transcripts or a model connects directly, never through a proxy named in the
# environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY): httpx would send even 127.0.0.1's traffic there, and the proxy
# would read every transcript. hcp supports no proxy; a remote server is reached directly or not at all.
DIRECT: dict[str, Any] = {"trust_env": False}
SEED_LIMIT = 2**32 - 1  # the engines' seeds are unsigned 32-bit: a larger one wraps round (or, -1, means random)
MAX_RETRIES = 2  # attempts after the first, each with the next seed


def max_seed(extra_seeds: int = 0) -> int:
    """The largest seed a user may give: its retries (and `extra_seeds` later seeds, evaluate's further runs)
    all stay within 0..2^32-1, so that no attempt's seed wraps round onto another's."""
    return SEED_LIMIT - MAX_RETRIES - extra_seeds


@dataclass(frozen=True)
class GenerateOptions:
    temperature: float
    seed: int
    num_ctx: int  # context window to run with: prompt + answer must fit
    num_predict: int  # most output tokens: the answer budget (model.answer_tokens)
    repeat_penalty: float = 1.1  # Ollama's default; the embedded engine gets the same


@dataclass(frozen=True)
class Generation:
    text: str
    done_reason: str  # "stop", or "length" when the answer was cut off at num_predict / the context
    prompt_tokens: int  # as reported by the engine after the call
    output_tokens: int
    seconds: float
    # Per score field, the probability of each allowed score where it was written (hcp/scoring/confidence.py);
    # None where the engine gives no log-probabilities (an Ollama before 0.12.11, a server without them).
    score_distribution: dict[str, dict[int, float]] | None = None
    output_ids: list[int] | None = None  # the answer's token ids, where the engine gives them (llama.cpp)


class Backend(ABC):
    """One model behind one engine. `name` is the backend's name, `model` what the user asked for."""

    name: str
    model: str

    @abstractmethod
    def count_prompt_tokens(self, messages: Messages) -> int:
        """Tokens of the chat as the engine will render it, before anything is generated (an upper bound
        where the engine gives no exact count)."""

    @abstractmethod
    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        """One answer constrained to `schema`."""

    def context_length(self) -> int | None:
        """The longest context the model was trained for, if known."""
        return None

    def model_digest(self) -> str | None:
        """Which exact model `model` names, where the engine can tell cheaply (a GGUF file's size and time, the
        daemon's digest): results record it, so ratings of a changed model are never mixed with the old."""
        return None

    def server(self) -> str | None:
        """The address of the server that rates, where a server does (the openai backend); results record it."""
        return None

    def model_note(self) -> str | None:
        """One line to show beside every rating this model makes, where it is not a rater to trust (the embedded
        default, a test model); None for any other."""
        return None

    def parallel(self, slots: int, context: int) -> ParallelGenerator:
        """An engine that generates up to `slots` answers together, each with room for `context` tokens (prompt
        and answer). Only the embedded backend has one: the servers batch parallel requests themselves."""
        raise BackendError(f"the {self.name} backend generates one answer per request — send requests in "
                           "parallel instead")

    def close(self) -> None:  # noqa: B027 - optional: a backend holding nothing has nothing to release
        """Release the model (the embedded backend frees memory; the daemon keeps its own)."""


class ParallelGenerator(ABC):
    """Several answers generated together in one engine, each in a slot of its own: `start` puts a chat in a free
    slot, `step` advances every busy slot at once (one engine call) and gives back the answers that ended."""

    slots: int

    @abstractmethod
    def start(self, slot: int, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> None:
        """Begin one answer constrained to `schema` in `slot`, which must be free."""

    @abstractmethod
    def step(self) -> list[tuple[int, Generation]]:
        """One step of every busy slot; the (slot, answer) of those that ended, their slots free again."""

    def close(self) -> None:  # noqa: B027 - optional
        """Release the engine's memory."""


def default_threads() -> int:
    """llama.cpp threads spin while they wait: one thread per core, never more (docs/architecture.md)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS
        return max(1, os.cpu_count() or 1)


DEFAULT_OLLAMA_MODEL = "hcp-rater"  # the name `hcp export-ollama` registers by default


def looks_like_gguf_path(model: str) -> bool:
    return model.lower().endswith(".gguf") or Path(model).is_file()


def open_backend(
    name: str = "auto",
    model: str | None = None,
    *,
    host: str | None = None,
    timeout: float | None = None,
    threads: int | None = None,
    num_ctx: int = 8192,
    base_url: str | None = None,
    api_key: str | None = None,
    tokenizer: str | None = None,
    allow_remote: bool = False,
) -> Backend:
    """The backend a user asked for. `auto`: a GGUF path runs embedded; otherwise Ollama when the daemon
    answers and has the model (default `hcp-rater`); with no model named, else the embedded default GGUF.
    `openai`: the server at `base_url` (its only model, or `model`). Whenever Ollama is to be used, the address
    (`host`, else $OLLAMA_HOST) is checked first: a malformed one is an error, and one off this machine is
    refused unless `allow_remote` — before anything is sent to it."""
    if name not in BACKENDS:
        raise BackendError(f"unknown backend {name!r} — use one of {', '.join(BACKENDS)}")
    if (base_url is not None) != (name == "openai"):
        raise BackendError("--base-url goes with --backend openai: give both (the server's address, e.g. "
                           "http://127.0.0.1:8000/v1), or neither")
    if name == "openai":
        from hcp.scoring.backends.openai import OpenAIBackend

        return OpenAIBackend(model, base_url=base_url, api_key=api_key, timeout=timeout, tokenizer=tokenizer,
                             allow_remote=allow_remote)
    if name == "llama-cpp" or (name == "auto" and model is not None and looks_like_gguf_path(model)):
        from hcp.scoring.backends.llama_cpp import LlamaCppBackend

        return LlamaCppBackend(model, num_ctx=num_ctx, threads=threads)
    from hcp.scoring.backends.ollama import (
        INSTEAD_OF_REMOTE,
        SENDS_TRANSCRIPTS,
        OllamaBackend,
        check_remote,
        host_source,
        resolve_host,
    )

    url = resolve_host(host)
    check_remote(url, allow_remote, source=host_source(host), sends=SENDS_TRANSCRIPTS, instead=INSTEAD_OF_REMOTE)
    if name == "ollama" or model is not None:
        # A model named by the user is used where it is, never silently swapped for another.
        return OllamaBackend(model or DEFAULT_OLLAMA_MODEL, host=url, timeout=timeout, allow_remote=allow_remote)
    if OllamaBackend.probe(url, DEFAULT_OLLAMA_MODEL, timeout=2.0):
        log.info("auto: using Ollama model %s", DEFAULT_OLLAMA_MODEL)
        return OllamaBackend(DEFAULT_OLLAMA_MODEL, host=url, timeout=timeout, allow_remote=allow_remote)
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend

    log.info("auto: no Ollama model %s answering; using the embedded default model", DEFAULT_OLLAMA_MODEL)
    return LlamaCppBackend(None, num_ctx=num_ctx, threads=threads)
