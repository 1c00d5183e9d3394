"""Several transcripts decoded together (`hcp batch --parallel N` on the embedded backend): the scheduling and the
scorer's guarantees on a scripted engine, then the llama.cpp engine on the real default model."""

from __future__ import annotations

import json
import logging

import pytest

from hcp.config import load_config
from hcp.errors import BackendError, ContextOverflowError, DataError, InvalidOutputError
from hcp.rubric import Rubric
from hcp.scoring.backends import GenerateOptions, Generation
from hcp.scoring.parallel import score_parallel
from hcp.scoring.score import ScoreOptions, ScoreResult, answer_budget, score_transcript
from tests.checks import assert_distributions_fit_the_rating
from tests.fakes import GOOD_ANSWER, FakeBackend

# --- scheduling, on a scripted engine ----------------------------------------------------------------------


class ByText(FakeBackend):
    """Answers by transcript: 'BAD' never validly, 'CUT' cut off the first time, 'GONE' with a dead engine."""

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.calls.append((messages, options))
        text = messages[-1]["content"]
        if "GONE" in text:
            raise BackendError("llama.cpp could not decode a batch of 3 tokens (llama_decode returned -1)")
        if "BAD" in text:
            return Generation('{"reasoning": "cu', "stop", 900, 5, 0.01)
        if "CUT" in text and sum("CUT" in m[-1]["content"] for m, _ in self.calls) == 1:
            return Generation('{"reasoning": "cut off', "length", 900, 3170, 0.01)
        return Generation(json.dumps(GOOD_ANSWER), "stop", 900, 40, 0.01)


def visits(*extras: str) -> list[tuple[str, str]]:
    return [(f"v{n}", f"RD: visit {n}{'.' * n}. Patient: fine. {extra}".strip()) for n, extra in enumerate(extras)]


def test_every_transcript_gets_one_outcome_with_the_scorers_guarantees(rubric, tmp_path):
    backend = ByText()
    transcripts = [*visits("", "BAD", "", "CUT", "", ""), ("long", "RD: Hi. Patient: " + "word " * 2000),
                   ("empty", "  \n ")]
    outcomes = {key: (outcome, seconds) for key, outcome, seconds in
                score_parallel(transcripts, backend, rubric, ScoreOptions(raw_output_dir=tmp_path), 3)}
    assert sorted(outcomes) == sorted(key for key, _ in transcripts)  # one outcome each, none twice
    kinds = {key: type(outcome).__name__ for key, (outcome, _) in outcomes.items()}
    assert kinds == {"v0": "ScoreResult", "v1": "InvalidOutputError", "v2": "ScoreResult", "v3": "ScoreResult",
                     "v4": "ScoreResult", "v5": "ScoreResult", "long": "ContextOverflowError",
                     "empty": "DataError"}
    assert "no valid rating in 3 attempt(s)" in str(outcomes["v1"][0])
    assert outcomes["v3"][0].attempts == 2  # the cut-off answer was not accepted: retried, then valid
    assert outcomes["v0"][0].rating == {**GOOD_ANSWER} and outcomes["v0"][0].overall == rubric.overall(GOOD_ANSWER)
    [engine] = backend.engines
    started = [text for _, text, _ in engine.starts]
    assert not any("word word" in text or not text.strip() for text in started)  # refused before being sent
    seeds = [seed for _, text, seed in engine.starts if "BAD" in text]
    assert seeds == [42, 43, 44]  # each retry with a new seed
    assert engine.slots == 3 and engine.closed
    # Sized for the longest prompt that fits, and the longest answer.
    longest = max(backend.count_prompt_tokens(rubric.messages(t)) for k, t in transcripts if k.startswith("v"))
    assert engine.context == longest + answer_budget(rubric)


def test_a_slot_takes_the_next_transcript_as_soon_as_one_ends(rubric, tmp_path):
    backend = ByText()
    transcripts = visits(*[""] * 10)
    got = [key for key, _, _ in score_parallel(transcripts, backend, rubric, ScoreOptions(raw_output_dir=tmp_path), 4)]
    [engine] = backend.engines
    assert sorted(got) == sorted(key for key, _ in transcripts)
    assert got != [key for key, _ in transcripts]  # in the order they end, not the input's
    waiting = [busy for begun, busy in engine.busy_at_step if begun < len(transcripts)]
    assert waiting and all(busy == 4 for busy in waiting)  # no slot idles while a transcript waits


def test_fewer_transcripts_than_slots_and_nothing_to_rate(rubric, tmp_path):
    backend = ByText()
    options = ScoreOptions(raw_output_dir=tmp_path)
    assert len(list(score_parallel(visits("", ""), backend, rubric, options, 8))) == 2
    assert backend.engines[0].slots == 2
    [(key, outcome, _)] = score_parallel([("e", "")], backend, rubric, options, 8)
    assert key == "e" and isinstance(outcome, DataError) and len(backend.engines) == 1  # no engine for nothing


def test_an_engine_error_stops_everything_and_frees_the_engine(rubric, tmp_path):
    backend = ByText()
    with pytest.raises(BackendError, match="could not decode"):
        list(score_parallel(visits("", "GONE", ""), backend, rubric, ScoreOptions(raw_output_dir=tmp_path), 2))
    assert backend.engines[0].closed


def test_single_path_unchanged_by_the_refactor(rubric, tmp_path):
    # score_transcript runs on the same TranscriptScoring: the retry and refusal behaviour is the one of before.
    backend = ByText()
    result = score_transcript("RD: CUT here. Patient: ok.", backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
    assert isinstance(result, ScoreResult) and result.attempts == 2
    assert [o.seed for _, o in backend.calls] == [42, 43] and [o.temperature for _, o in backend.calls] == [0.0, 0.5]
    with pytest.raises(InvalidOutputError):
        score_transcript("RD: BAD. Patient: ok.", backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
    with pytest.raises(ContextOverflowError):
        score_transcript("RD: " + "word " * 2000, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))


# --- the llama.cpp engine, on the real default model --------------------------------------------------------

SHORT_ANSWERS = "scoring:\n  reasoning_max_chars: 80\n  list_max_items: 1\n  item_max_chars: 20\n"
CONVERSATIONS = [
    "RD: Hi, what brings you in? Patient: My sugar is high.",
    "RD: How is the low-salt diet going? Patient: Hard, I miss crisps.",
    "RD: Did the food diary help? Patient: I forgot it most days, sorry. RD: That's fine, let's try an app.",
]


@pytest.fixture(scope="module")
def short(tmp_path_factory) -> Rubric:
    """A rubric whose answers are short (258 tokens at most): the tiny model otherwise writes to the limit."""
    path = tmp_path_factory.mktemp("rubric") / "short.yaml"
    path.write_text(SHORT_ANSWERS)
    return Rubric.from_config(load_config(path))


@pytest.fixture(scope="module")
def embedded():
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend

    backend = LlamaCppBackend(None, num_ctx=2048, threads=1)
    yield backend
    backend.close()


def answer(engine, slot: int, messages, schema, options) -> Generation:  # noqa: ANN001
    engine.start(slot, messages, schema, options)
    ended = engine.step()
    while not ended:  # a step that finishes no sequence returns []
        ended = engine.step()
    [(done, generation)] = ended
    assert done == slot
    return generation


def test_a_copied_prefix_gives_the_answer_of_one_evaluated_in_place(embedded, short):
    # Slot 1 gets the rubric prompt's KV cache copied from slot 0; alone in a fresh engine, slot 0 evaluates it.
    # Each answer is decoded alone, in the same chunks, so the two must match token for token.
    options = GenerateOptions(temperature=0.0, seed=1, num_ctx=2048, num_predict=answer_budget(short))
    first, second = (short.messages(t) for t in CONVERSATIONS[:2])
    engine = embedded.parallel(2, 1024)
    try:
        answer(engine, 0, first, short.json_schema, options)
        copied = answer(engine, 1, second, short.json_schema, options)
    finally:
        engine.close()
    engine = embedded.parallel(2, 1024)
    try:
        in_place = answer(engine, 0, second, short.json_schema, options)
    finally:
        engine.close()
    assert copied.text == in_place.text and copied.done_reason == "stop"
    short.validate_json(copied.text)


def test_an_answer_at_its_token_limit_is_reported_cut_off(embedded, short):
    engine = embedded.parallel(1, 1024)
    try:
        cut = answer(engine, 0, short.messages(CONVERSATIONS[0]), short.json_schema,
                     GenerateOptions(temperature=0.0, seed=1, num_ctx=2048, num_predict=5))
    finally:
        engine.close()
    assert (cut.done_reason, cut.output_tokens) == ("length", 5)


def test_at_n2_ratings_validate_and_a_fixed_seed_gives_fixed_ratings(embedded, short, tmp_path, record_property):
    """What is compared: the same transcripts, in the same order, at the same N (2) and seed, give the same ratings
    (the schedule, and so the batches llama.cpp sees, depend on nothing else). Against N = 1 a rating may differ
    (llama.cpp's numbers depend on how tokens are batched): that share is measured, not asserted."""
    options = ScoreOptions(raw_output_dir=tmp_path, num_ctx=2048)
    pairs = list(enumerate(CONVERSATIONS))
    runs = [{key: outcome for key, outcome, _ in score_parallel(pairs, embedded, short, options, 2)} for _ in "ab"]
    for outcome in runs[0].values():
        assert isinstance(outcome, ScoreResult)
        short.validate_json(json.dumps(outcome.rating))
        assert 1 <= outcome.overall <= 5 and outcome.backend == "llama-cpp"
    assert {k: r.rating for k, r in runs[0].items()} == {k: r.rating for k, r in runs[1].items()}
    alone = {key: score_transcript(text, embedded, short, options) for key, text in pairs}
    same = sum(alone[key].rating == runs[0][key].rating for key in alone)
    record_property("identical_to_n1", f"{same}/{len(alone)}")  # in --junitxml; scripts/bench_parallel.py on 20
    logging.getLogger(__name__).info("ratings identical to N = 1: %d/%d", same, len(alone))


def test_each_answer_decoded_beside_another_has_its_own_score_distribution(embedded, short):
    """Two answers decoded together, step by step: each reads its scores' distribution off its own logits and
    its own text so far, as the single path does (tests/test_embedded.py), none mixed with the other's."""
    options = GenerateOptions(temperature=0.0, seed=3, num_ctx=2048, num_predict=answer_budget(short),
                              repeat_penalty=1.0)
    prompts = [short.messages(CONVERSATIONS[slot + 1]) for slot in (0, 1)]
    # Sized as score_parallel sizes it: the longest prompt and the answer budget, each slot.
    engine = embedded.parallel(2, max(map(embedded.count_prompt_tokens, prompts)) + options.num_predict)
    done: dict[int, Generation] = {}
    try:
        for slot in (0, 1):
            engine.start(slot, prompts[slot], short.json_schema, options)
        while len(done) < 2:
            done.update(engine.step())
    finally:
        engine.close()
    for generation in done.values():
        assert_distributions_fit_the_rating(generation, short)


def test_a_context_that_cannot_be_held_is_refused_with_the_numbers(embedded, monkeypatch):
    import hcp.scoring.backends.llama_cpp_parallel as parallel

    monkeypatch.setattr(parallel, "available_memory", lambda: 100 * 2**20)
    with pytest.raises(BackendError) as info:
        embedded.parallel(8, 4000)
    message = str(info.value)
    assert message == ("--parallel 8 needs 8 sequences of 4000 tokens (the longest prompt and the longest answer) in "
                       "one context: 32768 tokens, a 720 MiB KV cache, over the 100 MiB of memory available — lower "
                       "--parallel, or rate the longest transcripts apart")
    with pytest.raises(BackendError, match="over llama.cpp's limit of 256 sequences"):
        embedded.parallel(300, 600)
