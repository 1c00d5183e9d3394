"""`--backend openai` against a real batching engine: llama.cpp's own `llama-server`, built from the installed
llama-cpp-python's sources (`scripts/setup.sh --llama-server`), with the embedded SmolLM2 and with an exported
fine-tuned GGUF. What the protocol stub of tests/openai_server.py can only imitate: the standard `json_schema`
form, /tokenize and /apply-template, the context per slot in /props, the server's own "exceeds the available
context size", and several requests decoded together (`-np 4 --cont-batching`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.errors import ContextOverflowError, InvalidOutputError
from hcp.scoring.backends import GenerateOptions
from hcp.scoring.backends.llama_cpp import LlamaCppBackend, default_model_path
from hcp.scoring.backends.openai import OpenAIBackend
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.llama_server import ALIAS, LlamaServer
from tests.openai_server import free_port

pytestmark = pytest.mark.slow

SLOT_CONTEXT = 4096  # per slot: -c 4 * 4096 with -np 4
MARKER = "Zanzibar-7731"  # a word no log line or message may carry
SHORT = str(Path(__file__).parent / "data" / "short_answers.yaml")


@pytest.fixture(scope="module")
def plain_config(tmp_path_factory) -> Path:
    """Ratings without evidence quotes: a third of the answer, and these tests are about the plumbing."""
    path = tmp_path_factory.mktemp("config") / "plain.yaml"
    path.write_text("scoring:\n  evidence: false\n")
    return path


@pytest.fixture(scope="module")
def rubric(plain_config):
    from hcp.config import load_config
    from hcp.rubric import Rubric

    return Rubric.from_config(load_config(plain_config))


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The embedded SmolLM2 in llama-server: 4 slots of 4,096 tokens, continuous batching, two threads."""
    log = tmp_path_factory.mktemp("llama-server") / "server.log"
    with LlamaServer(default_model_path(), slots=4, slot_context=SLOT_CONTEXT, log=log) as running:
        yield running


@pytest.fixture
def transcript(sample_transcript):
    return sample_transcript + f"\nPatient: My neighbour {MARKER} says the same."


def visits(path: Path, n: int, seed: int) -> Path:
    from hcp.data.sample import generate_samples

    path.write_text("".join(json.dumps({"id": f"v{i}", "transcript": s["transcript"]}) + "\n"
                            for i, s in enumerate(generate_samples(n, seed=seed))))
    return path


def test_standard_schema_form_exact_token_counts_and_the_context_per_slot(server, rubric, transcript, tmp_path,
                                                                          caplog):
    caplog.set_level("INFO", logger="hcp")
    backend = OpenAIBackend(None, base_url=server.url)
    embedded = LlamaCppBackend(threads=1)
    try:
        assert backend.model == ALIAS
        assert backend.context_length() == SLOT_CONTEXT  # /props: the context of one slot, not the whole -c
        messages = rubric.messages(transcript)
        counted = backend.count_prompt_tokens(messages)
        result = score_transcript(transcript, backend, rubric, ScoreOptions(raw_output_dir=tmp_path))
        assert backend.schema_form() == "json_schema"  # the standard form, the first one the probe tries
        assert counted == embedded.count_prompt_tokens(messages)  # the same GGUF, the same template, exactly
    finally:
        backend.close()
        embedded.close()
    assert "/apply-template" in caplog.text  # the server's own template and tokenizer counted it
    assert result.prompt_tokens == counted  # what the server says it read: the count made before sending
    rubric.validate_json(json.dumps(result.rating))
    assert result.distribution is not None and result.distribution.keys() == set(rubric.names)
    assert MARKER not in caplog.text


def test_too_long_is_refused_before_sending_and_by_the_server(server, rubric, transcript, tmp_path):
    long_text = "\n".join([transcript] * 16)  # about 10,000 tokens of prompt: over one slot's 4,096
    backend = OpenAIBackend(ALIAS, base_url=server.url)
    try:
        # num_ctx 65,536 asked for, capped at the slot's 4,096: refused before anything is sent
        with pytest.raises(ContextOverflowError, match=r"prompt of \d+ tokens.*over num_ctx 4096") as before:
            score_transcript(long_text, backend, rubric, ScoreOptions(num_ctx=65536, raw_output_dir=tmp_path))
        # Sent anyway (a caller that skipped the check): the server refuses it, and that is "too long" too.
        options = GenerateOptions(temperature=0.0, seed=1, num_ctx=65536, num_predict=16)
        with pytest.raises(ContextOverflowError, match="exceeds the available context size") as after:
            backend.generate(rubric.messages(long_text), rubric.json_schema, options)
    finally:
        backend.close()
    for caught in (before, after):
        assert MARKER not in str(caught.value)


def test_a_cut_off_answer_is_retried_then_reported(server, rubric, transcript, tmp_path):
    backend = OpenAIBackend(ALIAS, base_url=server.url)
    try:
        with pytest.raises(InvalidOutputError, match=r"no valid rating in 3 attempt\(s\).*cut off after 12 tokens"):
            score_transcript(transcript, backend, rubric, ScoreOptions(answer_tokens=12, raw_output_dir=tmp_path))
    finally:
        backend.close()
    saved = json.loads(next(tmp_path.glob("hcp-invalid-output-*.json")).read_text())
    assert [a["done_reason"] for a in saved["attempts"]] == ["length"] * 3  # each sent, each cut off by the server


def test_cli_score_batch_parallel_and_evaluate_through_llama_server(server, tmp_path, plain_config):
    runner = CliRunner()
    visit = tmp_path / "visit.txt"
    visit.write_text((Path(__file__).parent.parent / "data" / "sample_transcript.txt").read_text())
    # --timeout: on a loaded two-core machine one answer among four decoded together has taken over 600 s
    common = ["--config", str(plain_config), "--backend", "openai", "--base-url", server.url.removesuffix("/v1"),
              "--timeout", "1800"]
    scored = runner.invoke(cli, ["score", "--file", str(visit), "--json", *common])
    assert scored.exit_code == 0, scored.output
    assert json.loads(scored.stdout)["backend"] == "openai"

    data = visits(tmp_path / "visits.jsonl", 4, seed=3)
    out = tmp_path / "ratings.jsonl"
    batch = runner.invoke(cli, ["batch", str(data), "--out", str(out), "--parallel", "4", *common])
    assert batch.exit_code == 0, batch.output
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted(r["id"] for r in records if r["status"] == "ok") == [f"v{i}" for i in range(4)]
    # Which server rated, in every record: its address, and a digest of what it serves (its model file)
    assert {r["server"] for r in records} == {server.url}
    assert len({r["model_digest"] for r in records}) == 1

    labelled = tmp_path / "labelled.jsonl"
    from hcp.data.sample import generate_samples

    labelled.write_text("".join(json.dumps({"id": f"s{i}", **s}) + "\n"
                                for i, s in enumerate(generate_samples(2, seed=5))))
    report = tmp_path / "report"
    evaluated = runner.invoke(cli, ["evaluate", "--data", str(labelled), "--report", str(report), "--parallel", "2",
                                    *common])
    assert evaluated.exit_code == 0, evaluated.output
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["raters"]["model"]["n"] == 2 and metrics["raters"]["model"]["missing"] == 0


def test_hcp_serve_rates_through_llama_server(server, tmp_path, plain_config, sample_transcript):
    port = free_port()
    command = [sys.executable, "-m", "hcp", "serve", "--port", str(port), "--backend", "openai", "--base-url",
               server.url, "--config", str(plain_config), "--parallel", "2", "--reviews",
               str(tmp_path / "reviews.jsonl"), "--work-dir", str(tmp_path / "work")]
    serving = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and serving.poll() is None:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        answer = httpx.post(f"{url}/score", json={"transcript": sample_transcript}, timeout=300)
        assert answer.status_code == 200, answer.text
        assert answer.json()["backend"] == "openai"
        assert set(answer.json()["rating"]) >= {"empathy", "clarity", "accuracy", "professionalism"}
    finally:
        serving.terminate()
        _, stderr = serving.communicate(timeout=30)
    assert b"Traceback" not in stderr


def test_server_killed_mid_batch_loses_nothing_and_a_rerun_on_other_slots_finishes(tmp_path, plain_config):
    data = visits(tmp_path / "visits.jsonl", 5, seed=11)
    out = tmp_path / "ratings.jsonl"
    server = LlamaServer(default_model_path(), slots=2, slot_context=SLOT_CONTEXT).start()
    command = [sys.executable, "-m", "hcp", "batch", str(data), "--out", str(out), "--config", str(plain_config),
               "--backend", "openai", "--base-url", server.url, "--parallel", "2"]
    try:
        batch = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and (not out.exists() or out.read_text().count("\n") < 1):
            time.sleep(0.2)
        server.kill()
        _, stderr = batch.communicate(timeout=120)
        assert batch.returncode != 0, "the batch must not report success with the server gone"
        first = [json.loads(line) for line in out.read_text().splitlines()]
        assert 1 <= sum(r["status"] == "ok" for r in first) < 5
        # Back with more and longer slots: the same model, so the same rater (the server's settings, which its
        # /v1/models reports as meta.n_ctx, are not part of its identity)
        server = LlamaServer(default_model_path(), slots=4, slot_context=2 * SLOT_CONTEXT, port=server.port).start()
        rerun = subprocess.run([*command, "--retry-failed"], cwd=tmp_path, capture_output=True, text=True,
                               timeout=600)
        assert rerun.returncode == 0, rerun.stderr[-2000:]
    finally:
        server.stop()
    records = [json.loads(line) for line in out.read_text().splitlines()]
    ok = [r["id"] for r in records if r["status"] == "ok"]
    assert sorted(ok) == [f"v{i}" for i in range(5)]  # every id rated, none twice
    assert b"Traceback" not in stderr


def test_an_exported_fine_tuned_gguf_rates_with_the_training_prompt(tiny_llama_dir, tmp_path, monkeypatch):
    """hcp's export of a LoRA adapter, served by llama-server: its template renders the training prompt token for
    token (the server's count is the HF tokenizer's), and the answer obeys the schema."""
    from transformers import AutoTokenizer

    from hcp.config import load_config
    from hcp.rubric import Rubric
    from tests.tiny import make_adapter

    monkeypatch.chdir(tmp_path)
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    exported = CliRunner().invoke(cli, ["export-ollama", str(adapter), "--name", "tiny-rater", "--quant", "q8_0",
                                        "--no-create", "--no-parity-check", "--threads", "1", "--config", SHORT])
    assert exported.exit_code == 0, exported.output
    gguf = adapter / "export" / "tiny-rater.Q8_0.gguf"
    transcript = "RD: Hello, what brings you in today?\nPatient: My blood pressure is high and I love salty snacks."
    with LlamaServer(gguf, slots=1, slot_context=SLOT_CONTEXT) as server:
        scored = CliRunner().invoke(cli, ["score", transcript, "--backend", "openai", "--base-url", server.url,
                                          "--json", "--config", SHORT])
    assert scored.exit_code == 0, scored.output
    payload = json.loads(scored.stdout)
    rubric = Rubric.from_config(load_config(SHORT))
    rubric.validate_json(json.dumps(payload["rating"]))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    trained = tokenizer.apply_chat_template(rubric.messages(transcript), tokenize=True, add_generation_prompt=True)
    trained = trained["input_ids"] if hasattr(trained, "keys") else trained
    assert payload["prompt_tokens"] == len(trained)
