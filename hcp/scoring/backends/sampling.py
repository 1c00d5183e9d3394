"""Schema-constrained sampling on llama.cpp, shared by the embedded backend (one answer at a time, llama_cpp) and
its parallel engine (several answers together, llama_cpp_parallel): the rating's JSON schema as a GBNF grammar,
a sampler that checks the grammar only where it must, and the answer's bytes read back as the grammar counted them.
A module of its own so that neither engine imports the other's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

from hcp.scoring.backends import GenerateOptions
from hcp.scoring.confidence import Distribution, key_before, logsumexp, renormalise

# llama-cpp-python's JSON-schema converter lets raw control characters (a newline, say) into strings, which
# is not JSON: the answer then fails to parse. llama.cpp's C++ converter (the one Ollama uses) excludes them.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


def schema_grammar_text(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _JSON_CHAR)


@lru_cache(maxsize=4)
def _grammar(schema_json: str) -> Any:
    from llama_cpp import LlamaGrammar

    return LlamaGrammar.from_string(schema_grammar_text(schema_json), verbose=False)


_DIGIT_TOKEN = re.compile(rb"\s*[0-9]")
_UTF8_LENGTH = (1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 2, 2, 3, 4)  # by a lead byte's high four bits, as llama.cpp


def grammar_text(data: bytes) -> str:
    """The answer's bytes as text, one character for each code point llama.cpp's grammar counted.

    The grammar decodes UTF-8 by the lead byte alone: an overlong form or an encoded surrogate, which byte-fallback
    tokens can spell, is one character to it and passes a string's maxLength, but is two or three replacement
    characters to Python's decoder, and the answer would then fail the very schema that constrained it. Each such
    sequence becomes one U+FFFD here."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    chars: list[str] = []
    i = 0
    while i < len(data):
        size = 1  # a stray continuation byte, or a lead byte without its continuation (the grammar refuses both)
        while size < _UTF8_LENGTH[data[i] >> 4] and i + size < len(data) and data[i + size] >> 6 == 2:
            size += 1
        chars.append(data[i:i + size].decode("utf-8", errors="replace")[:1])
        i += size
    return "".join(chars)


class GrammarFirstCheck:
    """Schema-constrained sampling at little more than the cost of free sampling, as llama.cpp's own common
    sampler does it: sample from the model's logits first, check only that token against the grammar, and filter
    the whole vocabulary through the grammar only when the token is rejected. llama-cpp-python's sampler chain
    filters the whole vocabulary at every token (about 9 ms a token at SmolLM2's 49k vocabulary here).

    The answer is the one the full filter gives: greedy picks the argmax of the penalised logits among the
    tokens the grammar allows either way (a sampled token that the grammar allows is that argmax; masking and
    the repeat penalty commute), and sampling with a seed draws from the same filtered distribution, though not
    necessarily the same token as llama-cpp-python's chain would. The sampler chain mirrors that chain's
    (penalties, then greedy, or top-k/typical/top-p/min-p/temperature/dist) with its defaults."""

    def __init__(self, llm: Any) -> None:
        import ctypes

        import llama_cpp
        import numpy as np

        self.llm, self.cpp, self.ctypes = llm, llama_cpp, ctypes
        self.n_vocab = llm.n_vocab()
        entry = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)
        self._all = (llama_cpp.llama_token_data * self.n_vocab)()  # [n_vocab] candidates, refilled per token
        self.candidates = np.frombuffer(self._all, dtype=entry)
        self.ids = np.arange(self.n_vocab, dtype=np.int32)
        self.all = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._all, llama_cpp.llama_token_data_p), size=self.n_vocab, selected=-1, sorted=False)
        self._buf = ctypes.create_string_buffer(64)
        self._one = (llama_cpp.llama_token_data * 1)()
        self.one = llama_cpp.llama_token_data_array(
            data=ctypes.cast(self._one, llama_cpp.llama_token_data_p), size=1, selected=-1, sorted=False)
        self.rejected = 0  # tokens the grammar turned down, for the benchmark
        self._score_ids: dict[int, list[int]] | None = None  # score -> token ids spelling it (' 4', '4', ...)
        self.distribution: dict[str, Distribution] = {}  # of the last generate(), per score field

    def piece(self, token: int) -> bytes:
        n = self.cpp.llama_token_to_piece(self.llm._model.vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[:n] if n > 0 else b""

    def score_ids(self) -> dict[int, list[int]]:
        """Token ids whose text is a digit, alone or after whitespace (tokenizers merge ' 4' into one token; a
        SentencePiece vocabulary has '▁4'), by digit: read off the vocabulary once."""
        if self._score_ids is None:
            found: dict[int, list[int]] = {}
            for token in range(self.n_vocab):
                text = self.piece(token)
                if len(text) <= 8 and _DIGIT_TOKEN.fullmatch(text):
                    found.setdefault(int(text.strip()), []).append(token)
            self._score_ids = found
        return self._score_ids

    def score_positions(self, grammar: Any, answer: list[int], fields: dict[str, list[int]]) -> list[ScorePosition]:
        """Where `answer` (token ids after the prompt) writes each score field's score, and which tokens the grammar
        allowed there: the positions at which `pick` reads a distribution, found by walking the answer through the
        grammar alone (no model is evaluated). A field whose score was not written is left out."""
        from llama_cpp import _internals

        checker = _internals.LlamaSampler()
        checker.add_grammar(self.llm._model, grammar)
        found: list[ScorePosition] = []
        text = b""
        try:
            for index, token in enumerate(answer):
                where = key_before(text[-256:].decode("utf-8", errors="ignore"), fields)
                if where is not None and where[0] not in {p.field for p in found}:
                    allowed = {score: [t for t in self.score_ids().get(score, []) if self._allowed(checker.sampler, t)]
                               for score in fields[where[0]]}
                    written = next((score for score, ids in allowed.items() if token in ids), None)
                    if written is not None:
                        found.append(ScorePosition(where[0], index, written, {s: i for s, i in allowed.items() if i}))
                text += self.piece(token)
                self.cpp.llama_sampler_accept(checker.sampler, token)
        finally:
            checker.close()
        return found

    def _score_logits(self, grammar: Any, scores: list[int]) -> tuple[dict[int, float], set[int]]:
        """Per score, the log-sum-exp of the raw logits of the tokens spelling it that the grammar allows here
        (read before the repeat penalty: the model's own belief); and those token ids."""
        logits = self.candidates["logit"]  # raw: _fill() has just copied them, nothing applied yet
        by_score: dict[int, float] = {}
        allowed: set[int] = set()
        for score in scores:
            ids = [t for t in self.score_ids().get(score, []) if self._allowed(grammar, t)]
            if ids:
                by_score[score] = logsumexp(float(logits[t]) for t in ids)
                allowed.update(ids)
        return by_score, allowed

    def samplers(self, grammar: Any, options: GenerateOptions,
                 fields: dict[str, list[int]] | None = None) -> SequenceSamplers:
        """The sampler state of one answer: its own grammar state and sampler chain, and (with `fields`, score
        field -> allowed scores) its own answer so far and score distribution."""
        from llama_cpp import _internals

        chain = _internals.LlamaSampler()
        chain.add_penalties(self.n_vocab, self.llm.last_n_tokens_size, options.repeat_penalty, 0.0, 0.0)
        if options.temperature == 0:
            chain.add_greedy()
        else:  # llama-cpp-python's defaults for create_completion
            chain.add_top_k(40)
            chain.add_typical(1.0, 1)
            chain.add_top_p(0.95, 1)
            chain.add_min_p(0.05, 1)
            chain.add_temp(options.temperature)
            chain.add_dist(options.seed)
        checker = _internals.LlamaSampler()
        checker.add_grammar(self.llm._model, grammar)
        return SequenceSamplers(chain, checker, fields or {})

    def _fill(self, logits: Any) -> None:
        import numpy as np

        self.candidates["id"] = self.ids
        self.candidates["logit"] = np.ctypeslib.as_array(logits, shape=(self.n_vocab,))
        self.candidates["p"] = 0.0
        self.all.size, self.all.selected, self.all.sorted = self.n_vocab, -1, False

    def _allowed(self, grammar: Any, token: int) -> bool:
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 1.0, 0.0
        self.one.size, self.one.selected, self.one.sorted = 1, -1, False
        self.cpp.llama_sampler_apply(grammar, self.ctypes.byref(self.one))
        return self._one[0].logit != float("-inf")

    def pick(self, samplers: SequenceSamplers, logits: Any) -> int:
        """The next token of one answer from its logits (a `float *` of n_vocab), accepted into its samplers.
        Where the answer so far ends in a score field's key, that field's score distribution is read off the raw
        logits into `samplers.distribution` (once the token picked there is a score token)."""
        apply, byref = self.cpp.llama_sampler_apply, self.ctypes.byref
        chain, checker = samplers.chain.sampler, samplers.checker.sampler
        fields, distribution = samplers.fields, samplers.distribution
        self._fill(logits)
        where = key_before(samplers.text[-256:].decode("utf-8", errors="ignore"), fields) if fields else None
        if where is not None and where[0] not in distribution:
            by_score, score_tokens = self._score_logits(checker, fields[where[0]])
        apply(chain, byref(self.all))
        token = int(self.candidates["id"][self.all.selected])
        if not self._allowed(checker, token):
            self.rejected += 1
            self._fill(logits)
            apply(checker, byref(self.all))
            apply(chain, byref(self.all))
            token = int(self.candidates["id"][self.all.selected])
        if where is not None and where[0] not in distribution and token in score_tokens:
            distribution[where[0]] = renormalise(by_score)
        if fields:
            samplers.text += self.piece(token)
        self.cpp.llama_sampler_accept(checker, token)
        self.cpp.llama_sampler_accept(chain, token)
        return token

    def is_end(self, token: int) -> bool:
        return bool(self.cpp.llama_vocab_is_eog(self.llm._model.vocab, token))

    def generate(self, grammar: Any, options: GenerateOptions,
                 fields: dict[str, list[int]] | None = None) -> tuple[list[int], str]:
        """Tokens after the evaluated prompt, up to the end of generation or `num_predict` ("length"). With
        `fields` (score field -> allowed scores), `self.distribution` is left holding, per field, the probability
        of each score at the token that wrote it, over the score tokens the grammar allowed there."""
        samplers = self.samplers(grammar, options, fields)
        self.distribution = samplers.distribution
        out: list[int] = []
        try:
            for _ in range(options.num_predict):
                # [n_vocab] logits of the last evaluated token
                token = self.pick(samplers, self.cpp.llama_get_logits_ith(self.llm._ctx.ctx, -1))
                if self.is_end(token):
                    return out, "stop"
                out.append(token)
                self.llm.eval([token])
            return out, "length"
        finally:
            samplers.close()


@dataclass(frozen=True)
class ScorePosition:
    """Where an answer wrote one score field's score: the answer token's index, the score, and per allowed score
    the token ids the grammar let spell it there (' 4', '4', ...)."""

    field: str
    index: int
    score: int
    tokens: dict[int, list[int]]

    def distribution(self, logits: Any) -> Distribution:
        """The score distribution from a position's raw logits ([n_vocab], any engine: the vocabulary is the
        GGUF's and the HF tokenizer's alike), as `pick` reads it."""
        return renormalise({score: logsumexp(float(logits[t]) for t in ids) for score, ids in self.tokens.items()})


@dataclass
class SequenceSamplers:
    """One answer's samplers: the chain that picks a token, and the grammar that checks it; with score `fields`,
    the answer's text so far and the distribution of each score field written."""

    chain: Any  # llama_cpp._internals.LlamaSampler
    checker: Any
    fields: dict[str, list[int]] = field(default_factory=dict)
    text: bytes = b""
    distribution: dict[str, Distribution] = field(default_factory=dict)

    def close(self) -> None:
        self.chain.close()
        self.checker.close()
