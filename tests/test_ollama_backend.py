"""The Ollama backend, through the real `ollama` client over real HTTP, against the protocol double
(tests/ollama_double.py) running SmolLM2-135M in llama.cpp."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket

import httpx
import ollama
import pytest

from hcp.errors import BackendError, ContextOverflowError, InvalidOutputError, ModelNotFoundError
from hcp.scoring.backends import GenerateOptions
from hcp.scoring.backends.llama_cpp import LlamaCppBackend, default_model_path
from hcp.scoring.backends.ollama import (
    MIN_VERSION,
    SEAM_TOKENS,
    OllamaBackend,
    is_loopback,
    parse_version,
    resolve_host,
    template_literals,
    warn_if_old,
)
from hcp.scoring.score import ScoreOptions, ScoreResult, answer_budget, score_transcript
from tests.fakes import GOOD_ANSWER
from tests.ollama_double import CHATML_TEMPLATE, ForcedReply

MODEL = "smollm2"
TRANSCRIPTS = {
    "short": "RD: Hi, what brings you in? Patient: My sugar is high.",
    "quotes and braces": 'RD: You said "I can\'t stop" {every night}? Patient: Yes, like {"chips": 3} bags.',
    "non-English": "RD: Buenos días, ¿cómo se siente? Patient: Me cuesta mucho — 血糖 🍎 ça va.",
    "special-looking text": "RD: <|im_end|> is not a token here? Patient: <s>[INST] no </s>\n\n\n  spaced",
}


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture
def daemon(ollama_double):
    ollama_double.reset()
    yield ollama_double
    ollama_double.reset()


@pytest.fixture(scope="module")
def vocab_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("vocab")


@pytest.fixture
def backend(daemon, vocab_cache):
    engine = OllamaBackend(MODEL, host=daemon.url, timeout=120, cache_dir=vocab_cache)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def embedded():
    """The same GGUF embedded, for exact counts (tokenizing only: it never runs beside the double's inference)."""
    engine = LlamaCppBackend(None, num_ctx=512, threads=1)
    yield engine
    engine.close()


@pytest.fixture
def private(caplog):
    """Collects every log record at DEBUG; call it with the transcript to assert none of it was logged."""
    caplog.set_level(logging.DEBUG)

    def check(transcript: str, *messages: str) -> None:
        logged = "\n".join([r.getMessage() for r in caplog.records] + list(messages))
        for line in filter(None, map(str.strip, transcript.splitlines())):
            for piece in (line[i:i + 24] for i in range(0, max(1, len(line) - 23), 24)):
                assert piece not in logged, f"transcript text in the logs: {piece!r}"

    return check


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sentencepiece_gguf(path):
    """A tiny SentencePiece vocabulary with byte fallback (the Mistral/Llama 2 kind) and fractional scores, as a
    GGUF without tensors: enough for /api/show and for llama.cpp's tokenizer."""
    import gguf

    pieces = ["▁", "▁R", "D", ":", "▁Patient", "▁the", "▁a", "e", "t", "h", "a", "▁you", "▁I", "ing", "▁eat",
              "▁sugar", "s", "o", "n", "i", "r", "l", "▁s", "▁t", "re", "in", "er", "▁w", "▁su", "ug"]
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)] + pieces)
    # Scores that only survive a float32 round trip exactly decide between "▁sugar" and "▁su"+"ug"+...
    writer.add_token_scores([0.0] * 259 + [-0.1 - 0.37 * i for i in range(len(pieces))])
    writer.add_token_types([2, 3, 3] + [6] * 256 + [1] * len(pieces))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(True)
    writer.add_chat_template("{% for m in messages %}[INST] {{ m['content'] }}[/INST]{% endfor %}")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return path


def vocab_only(path):
    from llama_cpp import Llama

    with contextlib.redirect_stderr(io.StringIO()):
        return Llama(model_path=str(path), vocab_only=True, n_ctx=8, n_threads=1, verbose=False)


# -- scoring through the daemon ------------------------------------------------------------------------------


def test_rates_a_transcript_through_the_daemon(backend, daemon, rubric, sample_transcript, tmp_path, private):
    result = score_transcript(sample_transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))

    rubric.validate_json(json.dumps(result.rating))
    assert (result.backend, result.model, result.attempts) == ("ollama", MODEL, 1)
    assert result.output_tokens > 10 and result.seconds > 0
    (chat,) = daemon.requests_to("/api/chat")
    assert chat.body["model"] == MODEL and chat.body["stream"] is False
    assert chat.body["format"] == rubric.json_schema
    assert chat.body["messages"] == rubric.messages(sample_transcript)
    assert chat.body["options"] == {"temperature": 0.0, "seed": 42, "num_ctx": 8192,
                                    "num_predict": answer_budget(rubric), "repeat_penalty": 1.1}
    # hcp's count before sending is never below what the daemon evaluated, and not far above it.
    counted = backend.count_prompt_tokens(rubric.messages(sample_transcript))
    assert result.prompt_tokens <= counted <= result.prompt_tokens + 2 * (SEAM_TOKENS + 12)
    private(sample_transcript)


def test_invalid_json_is_retried_with_a_new_seed(backend, daemon, rubric, sample_transcript, tmp_path, private):
    daemon.force_replies(ForcedReply('{"reasoning": "unfinished'))  # then the model itself answers

    result = score_transcript(sample_transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))

    rubric.validate_json(json.dumps(result.rating))
    assert result.attempts == 2
    options = [c.body["options"] for c in daemon.requests_to("/api/chat")]
    assert [o["seed"] for o in options] == [42, 43]
    assert options[1]["temperature"] >= 0.5  # a retry at temperature 0 would repeat itself
    assert list(tmp_path.iterdir()) == []  # nothing saved: the rating is valid
    private(sample_transcript)


def test_truncated_answers_end_in_an_error_with_the_raw_output_saved(backend, daemon, rubric, tmp_path, private):
    transcript = TRANSCRIPTS["short"]
    daemon.force_replies(*[ForcedReply('{"reasoning": "The RD greeted', done_reason="length")] * 3)

    with pytest.raises(InvalidOutputError) as error:
        score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, max_retries=2))

    (saved,) = tmp_path.iterdir()
    assert str(saved) in str(error.value) and "done_reason 'length'" in str(error.value)
    record = json.loads(saved.read_text())
    assert [a["done_reason"] for a in record["attempts"]] == ["length"] * 3
    assert record["attempts"][0]["output"] == '{"reasoning": "The RD greeted'
    assert [c.body["options"]["seed"] for c in daemon.requests_to("/api/chat")] == [42, 43, 44]
    private(transcript, str(error.value))


def test_generation_reports_the_daemons_counts(backend, daemon, rubric, embedded):
    daemon.force_replies(ForcedReply(json.dumps(GOOD_ANSWER), done_reason="length"))
    messages = rubric.messages(TRANSCRIPTS["short"])
    generation = backend.generate(messages, rubric.json_schema,
                                  GenerateOptions(temperature=0, seed=1, num_ctx=4096, num_predict=64))
    assert generation.done_reason == "length" and json.loads(generation.text) == GOOD_ANSWER
    assert generation.prompt_tokens == embedded.count_prompt_tokens(messages)  # what the daemon evaluated
    assert generation.output_tokens > 10 and generation.seconds > 0


# -- context overflow ----------------------------------------------------------------------------------------


def test_long_transcript_is_refused_before_anything_is_sent(backend, daemon, rubric, sample_transcript, tmp_path,
                                                            private):
    transcript = "\n".join([sample_transcript] * 30)

    with pytest.raises(ContextOverflowError) as error:
        score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))

    message = str(error.value)
    assert f"{len(transcript.strip())} characters" in message and "num_ctx 8192" in message
    assert daemon.requests_to("/api/chat") == []
    private(transcript, message)


def test_a_prompt_the_daemon_cut_is_not_rated(backend, daemon, rubric, sample_transcript, tmp_path, monkeypatch,
                                              private):
    # Should a count come out too low, the daemon truncates silently (keeping num_keep + the tail) and says so only
    # through prompt_eval_count: the scorer must refuse the answer, however valid it looks.
    transcript = "\n".join([sample_transcript] * 30)
    monkeypatch.setattr(backend, "count_prompt_tokens", lambda messages: 1000)
    daemon.force_replies(ForcedReply(json.dumps(GOOD_ANSWER)))

    with pytest.raises(ContextOverflowError, match="filled up") as error:
        score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))

    assert len(daemon.requests_to("/api/chat")) == 1
    assert "8192 prompt" in str(error.value)  # the daemon kept exactly num_ctx tokens of a longer prompt
    private(transcript, str(error.value))


# -- the daemon missing, the model missing, slow -------------------------------------------------------------


def test_unknown_model_says_how_to_make_it(daemon, vocab_cache):
    with pytest.raises(ModelNotFoundError) as error:
        OllamaBackend("hcp-rater", host=daemon.url, cache_dir=vocab_cache)
    message = str(error.value)
    assert "model 'hcp-rater' not found in Ollama at " + daemon.url in message
    assert "hcp export-ollama MODEL_DIR --name hcp-rater" in message and "ollama pull hcp-rater" in message


def test_model_removed_after_connecting_is_a_model_not_found_error(daemon, vocab_cache, rubric):
    daemon.add_model("doomed", default_model_path())
    engine = OllamaBackend("doomed", host=daemon.url, cache_dir=vocab_cache)
    ollama.Client(host=daemon.url).delete("doomed")
    with pytest.raises(ModelNotFoundError, match="model 'doomed' not found"):
        engine.generate(rubric.messages("RD: Hi."), rubric.json_schema,
                        GenerateOptions(temperature=0, seed=1, num_ctx=4096, num_predict=8))
    engine.close()


def test_daemon_not_running_says_how_to_start_it():
    host = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(BackendError) as error:
        OllamaBackend(MODEL, host=host)
    assert str(error.value) == (f"Ollama is not running at {host} — start it with 'ollama serve', or use "
                                "--backend llama-cpp")


def test_a_daemon_that_does_not_answer_times_out_with_advice():
    with socket.socket() as listener:  # accepts connections (the kernel's backlog) and never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        host = f"http://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(BackendError) as error:
            OllamaBackend(MODEL, host=host, timeout=0.3)
    assert f"Ollama at {host} did not answer version within 0.3 s — raise --timeout" in str(error.value)


def test_probe_answers_without_raising(daemon):
    assert OllamaBackend.probe(daemon.url, MODEL) is True
    assert OllamaBackend.probe(daemon.url, "smollm2:latest") is True
    assert OllamaBackend.probe(daemon.url, "not-there") is False
    assert OllamaBackend.probe(f"http://127.0.0.1:{free_port()}", MODEL, timeout=0.5) is False
    assert OllamaBackend.probe(daemon.url, "", timeout=0.5) is False  # the client refuses an empty name


# -- daemon version and host ---------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("0.5.7", (0, 5, 7)),
    ("0.5.8", (0, 5, 8)),
    ("0.12.11-rc1", (0, 12, 11)),  # a pre-release counts as its release
    ("v0.6", (0, 6, 0)),  # no patch number
    ("0.0.0", (0, 0, 0)),  # a build from source
    ("0.13.0-12-gdeadbeef", (0, 13, 0)),  # git describe
    ("", None),
    ("unknown", None),
])
def test_parse_version(text, expected):
    assert parse_version(text) == expected


@pytest.mark.parametrize("version, warns", [
    ("0.5.7", True), ("0.4.0", True), ("0.5.8", False), ("0.12.11-rc1", False), ("1.0.0", False),
    ("0.0.0", False),  # dev builds are current
    ("garbage", False),  # unreadable: not claimed to be old
])
def test_old_daemons_are_warned_about(version, warns, caplog):
    caplog.set_level(logging.INFO)
    assert warn_if_old(version, "http://127.0.0.1:11434") is warns
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert bool(warnings) is warns
    if warns:
        assert version in warnings[0].getMessage() and ".".join(map(str, MIN_VERSION)) in warnings[0].getMessage()


def test_connecting_to_an_old_daemon_warns_once(daemon, vocab_cache, caplog):
    daemon.version = "0.5.7"
    caplog.set_level(logging.WARNING, logger="hcp")
    OllamaBackend(MODEL, host=daemon.url, cache_dir=vocab_cache).close()
    warning, no_logprobs = [r.getMessage() for r in caplog.records if r.name == "hcp.scoring.backends.ollama"]
    assert "Ollama 0.5.7" in warning and "older than 0.5.8" in warning
    assert "older than 0.12.11: ratings come without score probabilities" in no_logprobs
    assert len(daemon.requests_to("/api/version")) == 1


@pytest.mark.parametrize("url, local", [
    ("http://127.0.0.1:11434", True),
    ("http://127.8.9.10:11434", True),  # all of 127.0.0.0/8
    ("http://localhost:11434", True),
    ("http://LocalHost.:11434", False),  # a trailing dot: a DNS name, may resolve anywhere (parse_host refuses it)
    ("http://[::1]:11434", True),
    ("http://[::ffff:127.0.0.1]:11434", True),
    ("http://0.0.0.0:11434", True),  # OLLAMA_HOST=0.0.0.0 makes the daemon listen everywhere; we reach it here
    ("http://10.255.255.1:11434", False),
    ("http://192.168.1.20:11434", False),
    ("https://ollama.example.com:443", False),
    ("http://localhost.example.com:11434", False),
    ("http://foo.localhost:11434", False),  # only some resolvers keep *.localhost on this machine
    ("http://[2001:db8::1]:11434", False),
])
def test_loopback_hosts(url, local):
    assert is_loopback(url) is local


@pytest.mark.parametrize("given, env, expected", [
    (None, None, "http://127.0.0.1:11434"),
    (None, "0.0.0.0", "http://0.0.0.0:11434"),
    (None, "localhost:5000", "http://localhost:5000"),
    ("127.0.0.1:8080", "elsewhere:1", "http://127.0.0.1:8080"),  # --host wins over OLLAMA_HOST
    ("https://ollama.lan", None, "https://ollama.lan:443"),
])
def test_host_resolves_as_the_client_does(given, env, expected, monkeypatch):
    if env is None:
        monkeypatch.delenv("OLLAMA_HOST", raising=False)
    else:
        monkeypatch.setenv("OLLAMA_HOST", env)
    assert resolve_host(given) == expected


# -- counting prompt tokens ----------------------------------------------------------------------------------


@pytest.mark.parametrize("template, literals", [
    (CHATML_TEMPLATE, "<|im_start|>\n<|im_end|>\n<|im_start|>assistant\n"),
    ("{{ if .System }}[SYS]{{ .System }}{{ end }}  {{- range .Messages }} [INST] {{ .Content }} [/INST]{{ end }}",
     "[SYS] [INST]  [/INST]"),  # the two spaces before "{{-" are eaten; " [INST] " keeps its own
    ("A {{ .Prompt -}}\n\n  B{{/* a comment */}}C", "A BC"),  # '-}}' eats the whitespace after it
    ("", ""),
])
def test_template_literals(template, literals):
    assert template_literals(template) == literals


def test_vocabulary_counts_are_exact_and_the_prompt_count_bounds_the_daemons(backend, embedded, rubric, private):
    llm = vocab_only(default_model_path())
    assert backend.token_counter.exact
    for name, transcript in TRANSCRIPTS.items():
        for text in (transcript, rubric.system_prompt, rubric.user_prompt(transcript)):
            assert backend.token_counter(text) == len(llm.tokenize(text.encode(), add_bos=False, special=True)), name
        messages = rubric.messages(transcript)
        exact = embedded.count_prompt_tokens(messages)  # the prompt the GGUF's own template renders
        counted = backend.count_prompt_tokens(messages)
        assert exact <= counted <= exact + 2 * (SEAM_TOKENS + 12), name
        private(transcript)


def test_the_vocabulary_is_built_once_per_model_digest(daemon, vocab_cache, rubric):
    with contextlib.closing(OllamaBackend(MODEL, host=daemon.url, cache_dir=vocab_cache)) as first:
        assert first.token_counter.exact  # built here, or by a test before
    daemon.reset()
    with contextlib.closing(OllamaBackend(MODEL, host=daemon.url, cache_dir=vocab_cache)) as second:
        second.count_prompt_tokens(rubric.messages(TRANSCRIPTS["short"]))
        assert second.token_counter.exact
    assert not [r for r in daemon.requests_to("/api/show") if r.body.get("verbose")]  # read from the cache
    digest = next(m["digest"] for m in daemon.tags()["models"] if m["name"] == "smollm2:latest")
    assert (vocab_cache / f"{digest}.gguf").is_file()


def test_a_sentencepiece_vocabulary_survives_the_json_round_trip(daemon, tmp_path):
    # The daemon's JSON loses GGUF types (float32 scores, int32 token types, uint32 ids); the rebuilt file must
    # tokenize exactly as the original.
    path = sentencepiece_gguf(tmp_path / "spm.gguf")
    daemon.add_model("tiny-spm", path)
    try:
        engine = OllamaBackend("tiny-spm", host=daemon.url, cache_dir=tmp_path / "cache")
        reference = vocab_only(path)
        assert engine.token_counter.exact and engine.context_length() is None
        for text in [*TRANSCRIPTS.values(), "the sugar you eat", "  two  spaces\n\nnewlines\t", "ug su sugars"]:
            assert engine.token_counter(text) == len(reference.tokenize(text.encode(), add_bos=False, special=True))
        engine.close()
    finally:
        daemon.delete({"model": "tiny-spm"})


def test_without_a_vocabulary_the_count_is_an_upper_bound(daemon, tmp_path, embedded, rubric, caplog):
    daemon.send_tokenizer = False  # an old daemon: no tokenizer arrays, even when asked for them
    caplog.set_level(logging.WARNING)
    engine = OllamaBackend(MODEL, host=daemon.url, cache_dir=tmp_path)
    for transcript in TRANSCRIPTS.values():
        messages = rubric.messages(transcript)
        assert engine.count_prompt_tokens(messages) >= embedded.count_prompt_tokens(messages)
    assert not engine.token_counter.exact and list(tmp_path.iterdir()) == []
    engine.close()
    assert "counting prompt tokens as UTF-8 bytes, an upper bound" in caplog.text
    assert caplog.text.count("upper bound") == 1  # said once, not per transcript


def test_context_length_comes_from_the_models_metadata(backend):
    assert backend.context_length() == 8192


# -- the double answers as the daemon does (what the export will rely on) ------------------------------------


def test_blobs_create_show_and_delete(daemon, tmp_path):
    client = ollama.Client(host=daemon.url)
    path = sentencepiece_gguf(tmp_path / "model.gguf")
    digest = client.create_blob(path)
    assert httpx.head(f"{daemon.url}/api/blobs/{digest}").status_code == 200
    assert httpx.head(f"{daemon.url}/api/blobs/sha256:{'0' * 64}").status_code == 404
    wrong = httpx.post(f"{daemon.url}/api/blobs/sha256:{'0' * 64}", content=b"not those bytes")
    assert wrong.status_code == 400 and "digest mismatch" in wrong.json()["error"]

    client.create(model="made", files={"model.gguf": digest}, template="[INST] {{ .Prompt }} [/INST]",
                  system='Say "hi".', parameters={"num_ctx": 4096, "stop": ["</s>", "[INST]"]}, license="MIT")
    assert "made:latest" in [m.model for m in client.list().models]
    show = httpx.post(f"{daemon.url}/api/show", json={"model": "made"}).json()
    assert show["template"] == "[INST] {{ .Prompt }} [/INST]" and show["system"] == 'Say "hi".'
    assert show["license"] == "MIT" and show["model_info"]["tokenizer.ggml.tokens"] is None  # not verbose
    assert re.search(r'^stop +"</s>"$', show["parameters"], re.M) and "num_ctx" in show["parameters"]
    assert 'SYSTEM """Say "hi"."""' in show["modelfile"] and "PARAMETER num_ctx" in show["modelfile"]
    verbose = httpx.post(f"{daemon.url}/api/show", json={"model": "made", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 289
    assert "tokenizer.chat_template" not in verbose["model_info"] and "general.name" not in verbose["model_info"]

    client.delete("made")
    with pytest.raises(ollama.ResponseError) as gone:
        client.show("made")
    assert gone.value.status_code == 404 and gone.value.error == "model 'made' not found"


def test_create_refuses_what_the_daemon_refuses(daemon, tmp_path):
    client = ollama.Client(host=daemon.url)
    digest = client.create_blob(sentencepiece_gguf(tmp_path / "model.gguf"))
    cases = [
        ({"files": {"model.gguf": digest}, "parameters": {"num_ctxx": 4096}}, "unknown parameter 'num_ctxx'"),
        ({"files": {"model.gguf": f"sha256:{'1' * 64}"}}, "not found"),
        ({}, "neither 'from' or 'files' was specified"),
    ]
    for request, error in cases:
        with pytest.raises(ollama.ResponseError) as refused:
            client.create(model="bad", **request)
        assert refused.value.status_code == 400 and error in refused.value.error
    assert "bad:latest" not in [m.model for m in client.list().models]


def test_chat_errors_are_the_daemons(daemon):
    client = ollama.Client(host=daemon.url)
    with pytest.raises(ollama.ResponseError) as missing:
        client.chat(model="nope", messages=[{"role": "user", "content": "hi"}], stream=False)
    assert missing.value.status_code == 404 and missing.value.error == "model 'nope' not found"
    bad_json = httpx.post(f"{daemon.url}/api/chat", content=b"{")
    assert bad_json.status_code == 400 and "error" in bad_json.json()
    bad_format = httpx.post(f"{daemon.url}/api/chat", json={"model": MODEL, "stream": False, "format": 7,
                                                             "messages": [{"role": "user", "content": "hi"}]})
    assert bad_format.status_code == 400 and "format" in bad_format.json()["error"]
    assert httpx.get(f"{daemon.url}/api/nothing").status_code == 404


# -- score probabilities (logprobs, daemon 0.12.11+) ---------------------------------------------------------


def test_a_current_daemons_logprobs_give_each_dimension_a_distribution(daemon, vocab_cache, rubric, tmp_path):
    daemon.version = "0.12.11"
    engine = OllamaBackend(MODEL, host=daemon.url, timeout=300, cache_dir=vocab_cache)
    try:
        generation = engine.generate(rubric.messages(TRANSCRIPTS["short"]), rubric.json_schema, GenerateOptions(
            temperature=0, seed=1, num_ctx=4096, num_predict=answer_budget(rubric), repeat_penalty=1.0))
    finally:
        engine.close()
    sent = daemon.requests_to("/api/chat")[-1].body
    assert sent["logprobs"] is True and sent["top_logprobs"] == 20
    rating = json.loads(generation.text)
    assert generation.score_distribution is not None and generation.score_distribution.keys() == set(rubric.names)
    for dim, distribution in generation.score_distribution.items():
        assert sum(distribution.values()) == pytest.approx(1.0) and set(distribution) <= set(rubric.scores)
        # Raw logits, no repeat penalty, greedy under the grammar: the chosen score is the likeliest allowed one.
        assert max(distribution, key=distribution.get) == rating[dim]


def rate_canned_answer(daemon, vocab_cache, rubric, tmp_path, caplog) -> ScoreResult:  # noqa: ANN001
    """The short transcript rated through the double with GOOD_ANSWER forced (forced replies carry no
    logprobs), INFO logs captured."""
    daemon.force_replies(ForcedReply(json.dumps(GOOD_ANSWER)))
    caplog.set_level(logging.INFO)
    engine = OllamaBackend(MODEL, host=daemon.url, timeout=120, cache_dir=vocab_cache)
    try:
        return score_transcript(TRANSCRIPTS["short"], engine, rubric, ScoreOptions(raw_output_dir=tmp_path))
    finally:
        engine.close()


@pytest.mark.parametrize("version", ["0.12.10", "0.6.5"])
def test_an_older_daemon_rates_without_a_distribution_and_says_so(daemon, vocab_cache, rubric, tmp_path, caplog,
                                                                  version):
    daemon.version = version
    result = rate_canned_answer(daemon, vocab_cache, rubric, tmp_path, caplog)
    assert "logprobs" not in daemon.requests_to("/api/chat")[-1].body  # not asked of a daemon that cannot
    assert f"Ollama {version} at {daemon.url} is older than 0.12.11" in caplog.text
    payload = result.to_json()
    assert payload["rating"]["empathy"] == GOOD_ANSWER["empathy"]
    assert payload["distribution"] is None and payload["confidence"] is None
    # No probabilities: nothing is flagged for confidence (the canned quotes are not in the transcript, which is
    # a reason of its own).
    assert not [r for r in payload["review_reasons"] if r.startswith("low_confidence")]


def test_a_reply_without_logprobs_has_no_distribution_and_says_so(daemon, vocab_cache, rubric, tmp_path, caplog):
    daemon.version = "0.13.0"
    result = rate_canned_answer(daemon, vocab_cache, rubric, tmp_path, caplog)
    assert daemon.requests_to("/api/chat")[-1].body["logprobs"] is True
    assert "sent no logprobs: this rating has no score probabilities" in caplog.text
    assert result.distribution is None
    assert not [r for r in result.review_reasons if r.startswith("low_confidence")]
