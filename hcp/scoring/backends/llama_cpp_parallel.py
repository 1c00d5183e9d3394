"""Several answers decoded together in one llama.cpp context: the embedded backend's `hcp batch --parallel N`.

Each slot is a sequence of its own in one context (llama.cpp's sequence ids, one KV cache stream each), with
its own grammar state and sampler chain. One `llama_decode` per step advances every busy slot: the next token
of each answer being written, and a chunk of each prompt being read, with logits asked for only where a token
is sampled. On a CPU a decode step costs about the same for one sequence as for a few (the weights are read
once a step), so N answers come at little more than the cost of one.

The rubric prompt that every transcript shares is evaluated once, in the first slot, and its KV cache copied to
the others (`llama_memory_seq_cp`); a slot keeps it from one transcript to the next, so only each transcript's
own tokens are evaluated. A slot whose answer ends takes the next transcript at once (continuous batching).

llama.cpp's numbers depend on how tokens are batched together, so an answer decoded beside others may differ
from the one decoded alone: a fixed seed gives a fixed rating only one at a time (`--parallel 1`).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from hcp.errors import BackendError
from hcp.scoring.backends import GenerateOptions, Generation, Messages, ParallelGenerator
from hcp.scoring.backends.sampling import GrammarFirstCheck, SequenceSamplers, _grammar, grammar_text
from hcp.scoring.confidence import score_fields

log = logging.getLogger(__name__)

BATCH_TOKENS = 512  # tokens a decode call takes at most (llama.cpp's n_batch); prompts are read in chunks
CELL_ROUND = 256  # llama.cpp sizes KV cache streams in multiples of this


class EmbeddedModel(Protocol):
    """What the parallel engine takes from the embedded backend (LlamaCppBackend, which opens this engine: typed
    here by what is used, so that this module need not import that one)."""

    threads: int
    _llm: Any  # llama_cpp.Llama

    def prompt_tokens(self, messages: Messages) -> list[int]: ...

    def _shared_prefix(self, messages: Messages) -> list[int]: ...


@dataclass
class _Slot:
    cached: list[int] = field(default_factory=list)  # tokens whose KV the slot's sequence holds, positions 0..
    pending: list[int] = field(default_factory=list)  # tokens to evaluate next
    prompt: list[int] = field(default_factory=list)
    out: list[int] = field(default_factory=list)
    samplers: SequenceSamplers | None = None  # None: the slot is free
    num_predict: int = 0
    started: float = 0.0


def kv_bytes_per_token(model: Any) -> int:
    """Bytes of KV cache one token takes in every layer (f16 keys and values, llama.cpp's default)."""
    import llama_cpp

    n_head = max(1, llama_cpp.llama_model_n_head(model))
    head_dim = llama_cpp.llama_model_n_embd(model) // n_head
    return llama_cpp.llama_model_n_layer(model) * 2 * llama_cpp.llama_model_n_head_kv(model) * head_dim * 2


def available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


class LlamaCppParallel(ParallelGenerator):
    """`slots` sequences in one llama.cpp context over the backend's loaded model, `context` tokens each."""

    def __init__(self, backend: EmbeddedModel, slots: int, context: int, *, unified: bool = False) -> None:
        import llama_cpp
        from llama_cpp import _internals

        self.backend, self.slots = backend, slots
        llm = backend._llm
        limit = llama_cpp.llama_max_parallel_sequences()
        per_slot = -(-context // CELL_ROUND) * CELL_ROUND
        n_ctx = per_slot * slots
        need = n_ctx * kv_bytes_per_token(llm._model.model)
        what = (f"--parallel {slots} needs {slots} sequences of {context} tokens (the longest prompt and the longest "
                f"answer) in one context: {n_ctx} tokens, a {need / 2**20:.0f} MiB KV cache")
        if slots > limit:
            raise BackendError(f"{what}, over llama.cpp's limit of {limit} sequences — lower --parallel")
        free = available_memory()
        if free is not None and need > free:
            raise BackendError(f"{what}, over the {free / 2**20:.0f} MiB of memory available — lower --parallel, "
                               "or rate the longest transcripts apart")
        params = llama_cpp.llama_context_params.from_buffer_copy(llm.context_params)
        params.n_ctx, params.n_seq_max, params.kv_unified = n_ctx, slots, unified
        params.n_batch = params.n_ubatch = BATCH_TOKENS
        params.n_threads = params.n_threads_batch = backend.threads
        try:
            self._ctx = _internals.LlamaContext(model=llm._model, params=params, verbose=False)
        except ValueError:
            raise BackendError(f"{what}, which llama.cpp could not allocate — lower --parallel") from None
        if llama_cpp.llama_n_ctx_seq(self._ctx.ctx) < context:  # pragma: no cover - llama.cpp sized it otherwise
            self._ctx.close()
            raise BackendError(f"{what}; llama.cpp gave each {llama_cpp.llama_n_ctx_seq(self._ctx.ctx)} — "
                               "lower --parallel")
        log.info("parallel: %d sequences of %d tokens in one context (%d tokens, %.0f MiB KV cache)", slots,
                 per_slot, n_ctx, need / 2**20)
        self._cpp = llama_cpp
        self._memory = llama_cpp.llama_get_memory(self._ctx.ctx)
        self._batch = llama_cpp.llama_batch_init(BATCH_TOKENS, 0, 1)
        self._sampler = GrammarFirstCheck(llm)
        self._slots = [_Slot() for _ in range(slots)]

    # --- starting an answer --------------------------------------------------------------------------------

    def start(self, slot: int, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> None:
        state = self._slots[slot]
        if state.samplers is not None:
            raise ValueError(f"slot {slot} is busy")
        tokens = self.backend.prompt_tokens(messages)
        prefix = self.backend._shared_prefix(messages)
        if state.cached[: len(prefix)] != prefix:
            self._load_prefix(slot, prefix)
        # The rest is evaluated from the end of the shared prefix on, always, as the single-answer path does (a
        # retry too): the chunks of a prompt do not depend on what the slot held before.
        self._cpp.llama_memory_seq_rm(self._memory, slot, len(prefix), -1)
        state.cached = list(prefix)
        state.pending, state.prompt, state.out = tokens[len(prefix):], tokens, []
        # Each slot reads its own score distribution off its own logits and its own answer so far (pick()).
        state.samplers = self._sampler.samplers(_grammar(json.dumps(schema)), options, score_fields(schema))
        state.num_predict, state.started = options.num_predict, time.perf_counter()

    def _load_prefix(self, slot: int, prefix: list[int]) -> None:
        """Put the KV cache of `prefix` in `slot`: a copy from a slot that holds it, else evaluated here once."""
        cpp, state = self._cpp, self._slots[slot]
        cpp.llama_memory_seq_rm(self._memory, slot, -1, -1)
        state.cached = []
        holder = next((n for n, other in enumerate(self._slots) if other.cached[: len(prefix)] == prefix), None)
        if holder is not None:
            # The whole sequence: across KV streams llama.cpp copies only whole ones (start() drops the rest).
            cpp.llama_memory_seq_cp(self._memory, holder, slot, -1, -1)
            return
        for at in range(0, len(prefix), BATCH_TOKENS):
            self._fill_batch([(slot, prefix[at: at + BATCH_TOKENS], at, False)])
            self._decode()

    # --- one step of every busy slot ------------------------------------------------------------------------

    def step(self) -> list[tuple[int, Generation]]:
        busy = [n for n, s in enumerate(self._slots) if s.samplers is not None]
        if not busy:
            return []
        # Each answer being written gets its one token; prompts being read share the rest of the batch. Slots in
        # order: llama.cpp groups the sequences of a batch by increasing id.
        room = BATCH_TOKENS - sum(1 for n in busy if len(self._slots[n].pending) == 1)
        rows: list[tuple[int, list[int], int, bool]] = []
        for n in busy:
            pending = self._slots[n].pending
            take = pending
            if len(pending) > 1:
                take = pending[:room]
                room -= len(take)
                if not take:
                    continue
            rows.append((n, take, len(self._slots[n].cached), len(take) == len(pending)))
        outputs = self._fill_batch(rows)
        self._decode()
        ended: list[tuple[int, Generation]] = []
        for n, take, _, _ in rows:
            state = self._slots[n]
            state.cached.extend(take)
            del state.pending[: len(take)]
        for n, index in outputs:
            state = self._slots[n]
            assert state.samplers is not None
            token = self._sampler.pick(state.samplers, self._cpp.llama_get_logits_ith(self._ctx.ctx, index))
            if self._sampler.is_end(token):
                ended.append((n, self._finish(n, "stop")))
                continue
            state.out.append(token)
            if len(state.out) >= state.num_predict:
                ended.append((n, self._finish(n, "length")))
            else:
                state.pending = [token]
        return ended

    def _fill_batch(self, rows: list[tuple[int, list[int], int, bool]]) -> list[tuple[int, int]]:
        """Put (slot, tokens, first position, logits of the last?) rows in the batch; the (slot, batch index) of
        each row whose last token gives logits."""
        batch, at, outputs = self._batch, 0, []
        for slot, tokens, pos, logits in rows:
            for i, token in enumerate(tokens):
                batch.token[at] = token
                batch.pos[at] = pos + i
                batch.n_seq_id[at] = 1
                batch.seq_id[at][0] = slot
                batch.logits[at] = False
                at += 1
            if logits:
                batch.logits[at - 1] = True
                outputs.append((slot, at - 1))
        batch.n_tokens = at
        return outputs

    def _decode(self) -> None:
        code = self._cpp.llama_decode(self._ctx.ctx, self._batch)
        if code != 0:
            raise BackendError(f"llama.cpp could not decode a batch of {self._batch.n_tokens} tokens (llama_decode "
                               f"returned {code}) — run the same command again with a lower --parallel")

    def _finish(self, slot: int, reason: str) -> Generation:
        state = self._slots[slot]
        assert state.samplers is not None
        samplers = state.samplers
        samplers.close()
        state.samplers, state.pending = None, []
        text = grammar_text(self.backend._llm.detokenize(state.out, prev_tokens=state.prompt))
        return Generation(text=text, done_reason=reason, prompt_tokens=len(state.prompt),
                          output_tokens=len(state.out), seconds=time.perf_counter() - state.started,
                          score_distribution=samplers.distribution if samplers.fields else None)

    def close(self) -> None:
        for state in self._slots:
            if state.samplers is not None:
                state.samplers.close()
                state.samplers = None
        if self._batch is not None:
            self._cpp.llama_batch_free(self._batch)
            self._batch = None
        self._ctx.close()
