"""The OpenAI-compatible backend against a real server (llama-cpp-python's, with SmolLM2) and, for the request
forms of servers that cannot run here (vLLM's standard json_schema and chat /tokenize), a protocol stub."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.errors import BackendError, ContextOverflowError, InvalidOutputError, ModelNotFoundError
from hcp.scoring.backends import open_backend
from hcp.scoring.backends.llama_cpp import default_model_path
from hcp.scoring.backends.openai import OpenAIBackend, normalize_base_url
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, with_evidence
from tests.openai_server import MODEL_ALIAS, LlamaCppServer, StubServer, free_port

MARKER = "Zanzibar-7731"  # a word no log line or message may carry
PLAIN_ANSWER = {k: v for k, v in GOOD_ANSWER.items() if not k.endswith("_evidence")}  # the rubric without evidence


@pytest.fixture(scope="module")
def plain_config(tmp_path_factory) -> Path:
    """Ratings without evidence: this module tests the backend's plumbing, and quotes triple the answer (and
    llama-cpp-python's server filters the whole vocabulary through the grammar at every token)."""
    path = tmp_path_factory.mktemp("config") / "plain.yaml"
    path.write_text("scoring:\n  evidence: false\n")
    return path


@pytest.fixture(scope="module")
def rubric(plain_config):
    from hcp.config import load_config
    from hcp.rubric import Rubric

    return Rubric.from_config(load_config(plain_config))


@pytest.fixture(scope="module")
def server():
    """One real server for the module's tests (one llama.cpp thread; stopped when the module ends)."""
    with LlamaCppServer(default_model_path()) as running:
        yield running


@pytest.fixture
def transcript(sample_transcript):
    return sample_transcript + f"\nPatient: My neighbour {MARKER} says the same."


def test_rates_a_transcript_through_a_real_server(server, rubric, transcript, tmp_path, caplog):
    caplog.set_level("DEBUG", logger="hcp")
    backend = open_backend("openai", None, base_url=server.url)
    try:
        assert backend.model == MODEL_ALIAS  # the server's only model
        counted = backend.count_prompt_tokens(rubric.messages(transcript))
        result = score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
        assert backend.schema_form() == "json_object+schema"  # llama-cpp-python's form; json_schema is a 500 there
    finally:
        backend.close()
    rubric.validate_json(json.dumps(result.rating))
    assert result.backend == "openai" and result.model == MODEL_ALIAS
    # Counted from the server's own tokenizer: never fewer than the server saw, and close to it.
    assert result.prompt_tokens <= counted <= result.prompt_tokens + 2 * 32 + 1
    assert MARKER not in caplog.text
    # Score probabilities from the server's top_logprobs (raw logits), renormalised over the score tokens.
    assert result.distribution is not None and result.distribution.keys() == set(rubric.names)
    for dim, distribution in result.distribution.items():
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-3) and set(distribution) <= set(rubric.scores)
        assert result.confidence[dim] == pytest.approx(distribution.get(result.rating[dim], 0.0), abs=1e-3)


def test_same_seed_same_rating(server, rubric, sample_transcript, tmp_path):
    backend = OpenAIBackend(MODEL_ALIAS, base_url=server.url)
    try:
        first, second = (score_transcript(sample_transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
                         for _ in range(2))
    finally:
        backend.close()
    assert first.rating == second.rating


def test_cli_score_through_the_server(server, sample_transcript, tmp_path, plain_config):
    transcript = tmp_path / "visit.txt"
    transcript.write_text(sample_transcript)
    result = CliRunner().invoke(cli, ["score", "--file", str(transcript), "--config", str(plain_config),
                                      "--backend", "openai", "--base-url",
                                      server.url.removesuffix("/v1"), "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["backend"] == "openai"


def test_too_long_is_refused_before_sending_and_when_the_server_says_so(server, rubric, transcript, tmp_path):
    long_text = "\n".join([transcript] * 12)  # about 6,000 tokens of prompt
    backend = OpenAIBackend(MODEL_ALIAS, base_url=server.url)
    try:
        with pytest.raises(ContextOverflowError, match=r"prompt of \d+ tokens") as before:
            score_transcript(long_text, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        # Told a larger context than the server has, hcp sends it; the server refuses (HTTP 400), never cuts it.
        much_longer = "\n".join([transcript] * 30)  # about 9,000 tokens: over the server's 8,192
        with pytest.raises(ContextOverflowError, match="refused the prompt as longer than its context") as after:
            score_transcript(much_longer, backend, rubric, ScoreOptions(num_ctx=65536, raw_output_dir=tmp_path))
    finally:
        backend.close()
    for caught in (before, after):
        assert MARKER not in str(caught.value)


def test_a_model_the_server_does_not_serve(server):
    with pytest.raises(ModelNotFoundError, match=f"it serves: {MODEL_ALIAS}"):
        OpenAIBackend("mistral-7b", base_url=server.url)


def test_no_server_and_remote_servers():
    with pytest.raises(BackendError, match="no OpenAI-compatible server answers"):
        OpenAIBackend(None, base_url=f"http://127.0.0.1:{free_port()}/v1")
    # Refused before any connection is tried: patient data leaves the machine only by an explicit choice.
    with pytest.raises(BackendError, match="--allow-remote"):
        OpenAIBackend(None, base_url="http://192.0.2.1:8000/v1")


@pytest.mark.parametrize(("given", "expected"), [
    ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1"),
    ("127.0.0.1:8000/v1/", "http://127.0.0.1:8000/v1"),
    ("https://localhost/api/v1", "https://localhost/api/v1"),
])
def test_base_url_forms(given, expected):
    assert normalize_base_url(given) == expected


@pytest.mark.parametrize("given", ["ftp://host", "http://", "http://host:99999", "http://[::bad"])
def test_bad_base_urls_are_one_line(given):
    with pytest.raises(BackendError, match="--base-url"):
        normalize_base_url(given)


@pytest.mark.parametrize("given", ["http://localhost.:8000/v1", "127.0.0.1.:8000", "https://LOCALHOST./v1"])
def test_a_base_url_host_ending_in_a_dot_is_refused_before_dns_can_place_it_anywhere(given):
    result = CliRunner().invoke(cli, ["score", "RD: hi Patient: hi", "--backend", "openai", "--base-url", given])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert f"--base-url {given!r}: a name ending in a dot is looked up in DNS" in result.output
    assert result.output.count("\n") == 1


@pytest.mark.parametrize("given", ["http://me:s3cretpw@127.0.0.1:8000/v1", "me:s3cretpw@127.0.0.1:8000",
                                   "http://s3cretpw@127.0.0.1:99999", "http://me:s3cretpw@[::bad/v1"])
def test_a_password_in_the_base_url_is_refused_without_showing_it(given, tmp_path):
    result = CliRunner().invoke(cli, ["score", "RD: hi Patient: hi", "--backend", "openai", "--base-url", given])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "--base-url: a user name or password in the address is not supported" in result.output
    assert "s3cretpw" not in result.output and result.output.count("\n") == 1


def test_base_url_goes_with_the_openai_backend():
    result = CliRunner().invoke(cli, ["score", "RD: hi Patient: hi", "--base-url", "http://127.0.0.1:1/v1"])
    assert result.exit_code == 1 and "--base-url goes with --backend openai" in result.output


# --- the standard json_schema form and a chat-rendering /tokenize, at the protocol level ------------------


def test_standard_json_schema_request(rubric, transcript, tmp_path):
    answer = json.dumps(PLAIN_ANSWER)
    with StubServer([(answer, "stop")], api_key="s3cret") as stub:
        backend = OpenAIBackend(None, base_url=stub.url, api_key="s3cret")
        try:
            result = score_transcript(transcript, backend, rubric,
                                      ScoreOptions(seed=5, num_ctx=4096, raw_output_dir=tmp_path))
            assert backend.schema_form() == "json_schema"
        finally:
            backend.close()
    assert result.rating == PLAIN_ANSWER and result.model == "org/rater"
    tokenize = [r for r in stub.requests if r["path"] == "/tokenize"]
    assert tokenize and tokenize[-1]["body"]["messages"] == rubric.messages(transcript)
    rating = [r["body"] for r in stub.requests if r["path"] == "/v1/chat/completions"][-1]
    assert rating["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "rating", "schema": rubric.json_schema, "strict": True}}
    assert rating["seed"] == 5 and rating["temperature"] == 0.0 and rating["max_tokens"] > 0
    assert all(r["auth"] == "Bearer s3cret" for r in stub.requests)
    assert rating["logprobs"] is True and rating["top_logprobs"] == 20
    assert result.distribution is None and result.needs_review is False  # the stub sends no logprobs


def test_a_cut_off_answer_is_retried_then_reported(rubric, transcript, tmp_path):
    cut = json.dumps(PLAIN_ANSWER)[:40]
    with StubServer([(cut, "length")] * 3) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            with pytest.raises(InvalidOutputError, match="cut off"):
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        finally:
            backend.close()
    assert len([r for r in stub.requests if r["path"] == "/v1/chat/completions"]) == 1 + 3  # probe + 3 tries


def test_a_template_without_a_system_turn_gets_the_rubric_in_the_first_user_turn(rubric, transcript, tmp_path):
    """Gemma 2 served by vLLM: its template raises 'System role not supported' (HTTP 400). hcp sends what the
    model was trained on instead: the system text folded into the first user turn."""
    from hcp.chat import fold_system

    answer = json.dumps(with_evidence(GOOD_ANSWER, rubric.json_schema))
    with StubServer([(answer, "stop")] * 2, system_role=False) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            for _ in range(2):
                result = score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096,
                                                                                    raw_output_dir=tmp_path))
                assert result.rating == with_evidence(GOOD_ANSWER, rubric.json_schema)
        finally:
            backend.close()
    folded = fold_system(rubric.messages(transcript))
    assert folded[0]["role"] == "user" and folded[0]["content"].startswith(rubric.system_prompt)
    sent = [r for r in stub.requests  # the transcript's, not the probes'
            if any(transcript in m["content"] for m in r["body"].get("messages", []))]
    refused = [r for r in sent if r["body"]["messages"][0]["role"] == "system"]
    assert len(refused) == 1  # the first count finds out; nothing after it is sent unfolded
    assert [r["path"] for r in sent if r not in refused].count("/v1/chat/completions") == 2
    assert all(r["body"]["messages"] == folded for r in sent if r not in refused)


def test_the_users_gemma_tokenizer_counts_the_folded_prompt_and_the_server_gets_it(rubric, transcript, tmp_path,
                                                                                     tiny_model):
    from transformers import AutoTokenizer

    from hcp.chat import fold_system

    folder = tiny_model("gemma2")  # its template raises 'System role not supported'
    answer = json.dumps(with_evidence(GOOD_ANSWER, rubric.json_schema))
    with StubServer([(answer, "stop")], system_role=False) as stub:
        backend = OpenAIBackend(None, base_url=stub.url, tokenizer=folder)
        try:
            counted = backend.count_prompt_tokens(rubric.messages(transcript))
            score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        finally:
            backend.close()
    folded = fold_system(rubric.messages(transcript))
    assert counted == len(AutoTokenizer.from_pretrained(folder).apply_chat_template(
        folded, add_generation_prompt=True, tokenize=True)["input_ids"])
    rating = [r["body"] for r in stub.requests if r["path"] == "/v1/chat/completions"][-1]
    assert rating["messages"] == folded  # sent folded at once: the tokenizer found it out


def test_the_context_the_server_reports_caps_num_ctx(rubric, transcript, tmp_path):
    with StubServer([], max_model_len=150, tokens_per_message=100) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            assert backend.context_length() == 150
            with pytest.raises(ContextOverflowError, match="over num_ctx 150"):
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=8192, raw_output_dir=tmp_path))
        finally:
            backend.close()


# --- llama-server: its context per slot, its refusal of a longer prompt ------------------------------------


def test_llama_servers_context_per_slot_caps_num_ctx_so_nothing_is_sent_that_it_would_cut(rubric, transcript,
                                                                                        tmp_path):
    # llama-server says no max_model_len in /v1/models: its context per slot is in /props.
    with StubServer([], max_model_len=None, tokens_per_message=100, slot_context=1000) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            assert backend.context_length() == 1000
            with pytest.raises(ContextOverflowError, match="over num_ctx 1000"):
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=8192, raw_output_dir=tmp_path))
        finally:
            backend.close()
    assert not any(transcript in json.dumps(r["body"]) for r in stub.requests if r["path"] == "/v1/chat/completions")


def test_llama_server_gets_the_repeat_penalty_the_embedded_engine_and_ollama_apply(rubric, transcript, tmp_path):
    """llama-server's default repeat_penalty is 1.0; the other backends rate with 1.1 (ScoreOptions): a server that
    answers /props is sent it, one that does not (vLLM, where the field means something else) is not."""
    answer = json.dumps(PLAIN_ANSWER)
    sent = []
    for slot_context in (4096, None):
        with StubServer([(answer, "stop")], slot_context=slot_context) as stub:
            backend = OpenAIBackend(None, base_url=stub.url)
            try:
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
            finally:
                backend.close()
        sent.append([r["body"] for r in stub.requests if r["path"] == "/v1/chat/completions"][-1])
    assert sent[0]["repeat_penalty"] == 1.1 and "repeat_penalty" not in sent[1]


def test_llama_servers_context_refusal_is_too_long_not_a_backend_failure(rubric, transcript, tmp_path, monkeypatch):
    # A server whose /props hcp cannot read (an older build, a proxy in front): its HTTP 400 "exceeds the available
    # context size" is the transcript's being too long, as vLLM's "maximum context length" is.
    with StubServer([], max_model_len=None, tokens_per_message=100, slot_context=150) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        monkeypatch.setattr(backend, "_max_model_len", None)  # as if /props had said nothing
        try:
            with pytest.raises(ContextOverflowError, match="refused the prompt as longer than its context"):
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=8192, raw_output_dir=tmp_path))
        finally:
            backend.close()


# --- which server rated -----------------------------------------------------------------------------------


def test_another_server_serving_the_same_model_name_is_another_rater(tmp_path, plain_config):
    """Two servers both serving 'org/rater', from different model files: a rerun of the batch against the second
    never takes the first's ratings as its own ("skipped: rated before"); its own ratings, it does reuse."""
    answer = json.dumps(PLAIN_ANSWER)
    visits = tmp_path / "visits.jsonl"
    visits.write_text(json.dumps({"id": "a", "transcript": "RD: Hello. Patient: Hi."}) + "\n")

    def batch(stub: StubServer, out: Path):  # noqa: ANN202 - click's Result
        return CliRunner().invoke(cli, ["batch", str(visits), "--out", str(out), "--backend", "openai",
                                        "--base-url", stub.url, "--config", str(plain_config)])

    with StubServer([(answer, "stop")], slot_context=4096, model_path="/models/a.gguf") as first, \
            StubServer([(answer, "stop")], slot_context=4096, model_path="/models/b.gguf") as second:
        assert batch(first, tmp_path / "a.jsonl").exit_code == 0
        mixed = batch(second, tmp_path / "a.jsonl")
        assert mixed.exit_code == 1 and "holds ratings made with model_digest" in mixed.output
        for _ in range(2):  # rated once, then its own rating is reused
            result = batch(second, tmp_path / "b.jsonl")
            assert result.exit_code == 0, result.output
        rated = [len([r for r in s.requests if r["path"] == "/v1/chat/completions"]) for s in (first, second)]
    assert rated == [2, 2]  # each server: its schema probe and one rating
    records = [json.loads((tmp_path / name).read_text().splitlines()[-1]) for name in ("a.jsonl", "b.jsonl")]
    assert [r["server"] for r in records] == [first.url, second.url]
    assert records[0]["model_digest"] != records[1]["model_digest"]


# --- odd answers -------------------------------------------------------------------------------------------


def test_the_servers_slot_context_is_not_part_of_the_raters_identity():
    """llama-server's /v1/models `meta` says what the model is (its parameters, size, vocabulary) and the
    context of a slot, which -c and -np set: a restart with other slots is the same rater, another model is not."""
    meta = {"vocab_type": 2, "n_vocab": 49152, "n_ctx": 4096, "n_ctx_train": 8192, "n_params": 134515008}
    with StubServer([], meta=meta) as stub:
        digests = []
        for change in ({}, {"n_ctx": 8192}, {"n_params": 360000000}):
            stub.meta = {**meta, **change}
            backend = OpenAIBackend(None, base_url=stub.url)
            digests.append(backend.model_digest())
            backend.close()
    assert digests[0] == digests[1] != digests[2]


@pytest.mark.parametrize("usage", [{"prompt_tokens": "abc", "completion_tokens": "x"},
                                   {"prompt_tokens": None, "completion_tokens": [1]}, {"prompt_tokens": -3}])
def test_token_counts_a_server_garbles_are_taken_as_not_reported(rubric, transcript, tmp_path, usage, caplog):
    with StubServer([(json.dumps(PLAIN_ANSWER), "stop")], usage=usage) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            result = score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        finally:
            backend.close()
    assert result.rating == PLAIN_ANSWER
    assert result.prompt_tokens == 200 and result.output_tokens == 0  # hcp's own count before sending; none after
    assert "is not a token count" in caplog.text


def test_the_server_renders_the_template_with_the_date_training_used(rubric, transcript, tmp_path):
    from hcp.chat import TEMPLATE_DATE

    with StubServer([(json.dumps(PLAIN_ANSWER), "stop")]) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        finally:
            backend.close()
    rating = [r["body"] for r in stub.requests if r["path"] == "/v1/chat/completions"][-1]
    assert rating["chat_template_kwargs"] == {"date_string": TEMPLATE_DATE.strftime("%d %b %Y")} == {
        "date_string": "26 Jul 2024"}


def test_a_missing_api_key_says_how_to_give_one(monkeypatch):
    monkeypatch.delenv("HCP_OPENAI_API_KEY", raising=False)
    with StubServer([], api_key="s3cret") as stub, pytest.raises(BackendError, match="--api-key"):
        OpenAIBackend(None, base_url=stub.url)


@pytest.mark.parametrize("probe, honoured", [
    (('{\n\n\t\t\t"ok"', "length"), True),  # a weak constrained model: whitespace, cut off at the probe's limit
    (('{"ok": 7}', "stop"), True),
    (("Sure! Here is", "length"), False),  # words: the schema was not applied
    (("", "length"), False),
    (('{"ok": 8}', "stop"), False),
])
def test_the_schema_probe_takes_a_cut_off_start_of_the_answer_but_not_words(probe, honoured):
    """The exported tiny model under llama-server spent the probe's 16 tokens on whitespace the grammar allows,
    and the server was refused as ignoring the schema (tests/test_llama_server.py)."""
    with StubServer([], probe_answer=probe) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        try:
            if honoured:
                assert backend.schema_form() == "json_schema"
            else:
                with pytest.raises(BackendError, match="does not constrain answers to a JSON schema"):
                    backend.schema_form()
        finally:
            backend.close()


def test_a_server_that_ignores_every_schema_form_is_refused(rubric, transcript, tmp_path):
    with StubServer([]) as stub:
        backend = OpenAIBackend(None, base_url=stub.url)
        stub.server.RequestHandlerClass._chat = lambda self, body: self._send(200, {  # noqa: SLF001
            "choices": [{"finish_reason": "stop", "message": {"content": "plain text"}}], "usage": {}})
        try:
            with pytest.raises(BackendError, match="does not constrain answers to a JSON schema"):
                score_transcript(transcript, backend, rubric, ScoreOptions(num_ctx=4096, raw_output_dir=tmp_path))
        finally:
            backend.close()


# --- a server that dies in the middle of a batch ----------------------------------------------------------


def test_server_killed_mid_batch_loses_nothing_and_a_rerun_finishes(tmp_path, plain_config):
    from hcp.data.sample import generate_samples

    rows = [{"id": f"v{n}", "transcript": s["transcript"]} for n, s in enumerate(generate_samples(5, seed=11))]
    inp = tmp_path / "visits.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ratings.jsonl"
    server = LlamaCppServer(default_model_path()).start()
    command = [sys.executable, "-m", "hcp", "batch", str(inp), "--out", str(out), "--config", str(plain_config),
               "--backend", "openai",
               "--base-url", server.url, "--parallel", "2"]
    try:
        batch = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
            time.sleep(0.2)
        server.kill()
        _, stderr = batch.communicate(timeout=120)
        assert batch.returncode != 0, "the batch must not report success with the server gone"
        first = [json.loads(line) for line in out.read_text().splitlines()]
        assert sum(r["status"] == "ok" for r in first) >= 1
        server.start()
        rerun = subprocess.run([*command, "--retry-failed"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    finally:
        server.stop()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert sorted(ok) == sorted(r["id"] for r in rows)  # every id rated, none twice
    assert b"Traceback" not in stderr


def test_batch_parallel_through_the_server(server, tmp_path, plain_config):
    from hcp.data.sample import generate_samples

    rows = [{"id": f"v{n}", "transcript": s["transcript"]} for n, s in enumerate(generate_samples(3, seed=3))]
    inp = tmp_path / "visits.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = CliRunner().invoke(cli, ["batch", str(inp), "--out", str(tmp_path / "r.jsonl"), "--config",
                                      str(plain_config), "--backend", "openai",
                                      "--base-url", server.url, "--parallel", "4"])
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in Path(tmp_path / "r.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in records if r["status"] == "ok") == [f"v{n}" for n in range(3)]
