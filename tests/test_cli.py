"""Every foundation and scoring command end to end through CliRunner: one success, and the errors."""

from __future__ import annotations

import json
import logging
import os
import stat
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from hcp.data.dataset import write_jsonl
from hcp.data.sample import generate_samples
from tests.fakes import GOOD_ANSWER, FakeBackend

SECRET = "RD: Good morning Mr Qwertyuiop, your eGFR is 23. Patient: I drink a lot of orange juice."


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def fake(monkeypatch):
    """Every backend the CLI opens is this fake; `fake.opened` records the options it was opened with."""
    backend = FakeBackend(GOOD_ANSWER)
    backend.opened = []

    def open_backend(name="auto", model=None, **kw):
        backend.opened.append({"name": name, "model": model, **kw})
        return backend

    monkeypatch.setattr(hcp.scoring.backends, "open_backend", open_backend)
    return backend


def test_help_is_fast_and_imports_nothing_heavy():
    heavy = ("torch", "transformers", "llama_cpp", "gguf", "peft", "rich", "ollama")
    code = ("import sys, time; t=time.perf_counter(); import hcp.cli; "
            f"heavy=[m for m in {heavy!r} if m in sys.modules]; "
            "print(heavy, time.perf_counter()-t)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("[]"), out
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "hcp", "--help"], capture_output=True, check=True)
    assert time.perf_counter() - started < 3  # generous for a loaded CI machine; typically ~0.2 s


def test_rubric_prompt_and_schema(runner, rubric):
    assert runner.invoke(cli, ["rubric"]).output.strip() == rubric.system_prompt
    assert json.loads(runner.invoke(cli, ["rubric", "--schema"]).output) == rubric.json_schema


def test_bad_config_is_one_line(runner, tmp_path):
    bad = tmp_path / "c.yaml"
    bad.write_text("training:\n  lora:\n    r: -1\n")
    result = runner.invoke(cli, ["rubric", "--config", str(bad)])
    assert result.exit_code == 1
    assert result.output.strip() == f"Error: {bad}: training.lora.r: input should be greater than 0"


# --- data -------------------------------------------------------------------------------------------------


def test_data_sample_validate_split(runner, tmp_path):
    out = tmp_path / "s.jsonl"
    result = runner.invoke(cli, ["data", "sample", "--n", "50", "--seed", "1", "--out", str(out)])
    assert result.exit_code == 0 and "wrote 50" in result.output
    result = runner.invoke(cli, ["data", "validate", str(out), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert summary["valid"] == 50 and all(all(c == 10 for c in d.values()) for d in summary["distribution"].values())
    result = runner.invoke(cli, ["data", "split", str(out), "--val", "0.2", "--seed", "42"])
    assert result.exit_code == 0, result.output
    assert len((tmp_path / "s.train.jsonl").read_text().splitlines()) == 40
    assert len((tmp_path / "s.val.jsonl").read_text().splitlines()) == 10


def test_data_validate_reports_every_problem(runner, tmp_path):
    path = tmp_path / "bad.jsonl"
    good = {"transcript": "RD: Hi there. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
            "professionalism": 3, "reasoning": "ok", "strengths": ["a"], "areas_for_improvement": ["b"],
            **{f"{dim}_evidence": ["RD: Hi there."] for dim in ("empathy", "clarity", "accuracy", "professionalism")}}
    third = {**good, "transcript": "RD: x. Patient: y.", "empathy": 9,
             **{f"{dim}_evidence": ["RD: x."] for dim in ("empathy", "clarity", "accuracy", "professionalism")}}
    path.write_text("\n".join([json.dumps(good), "{oops", json.dumps(third)]) + "\n")
    result = runner.invoke(cli, ["data", "validate", str(path)])
    assert result.exit_code == 1
    assert f"{path}:2: invalid JSON" in result.output
    assert f"{path}:3: empathy: score 9 is outside 1..5" in result.output
    assert "2 problem(s) in 2 record(s)" in result.output


@pytest.mark.parametrize(
    "args, message",
    [
        (["data", "validate", "{tmp}/none.jsonl"], "file not found"),
        (["data", "validate", "{tmp}/x.txt"], "unknown data format"),
        (["data", "split", "{tmp}/one.jsonl", "--val", "0.2"], "cannot be split"),
        (["data", "split", "{tmp}/one.jsonl", "--val", "1.5"], "must be between 0 and 1"),
        (["data", "sample", "--n", "0"], "0 is not in the range"),
    ],
)
def test_data_errors(runner, tmp_path, args, message):
    (tmp_path / "x.txt").write_text("hello")
    (tmp_path / "one.jsonl").write_text(json.dumps({
        "transcript": "RD: Hi there. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
        "professionalism": 3, "reasoning": "ok", "strengths": ["a"], "areas_for_improvement": ["b"],
        **{f"{dim}_evidence": ["Patient: Hello."] for dim in ("empathy", "clarity", "accuracy", "professionalism")}})
        + "\n")
    result = runner.invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_sample_refuses_a_different_rubric(runner, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  dimensions:\n    warmth: {weight: 1, description: Warm}\n")
    result = runner.invoke(cli, ["data", "sample", "--config", str(config), "--out", str(tmp_path / "s.jsonl")])
    assert result.exit_code == 1 and "your rubric has warmth" in result.output


# --- score ------------------------------------------------------------------------------------------------


def test_score_table_and_json(runner, fake, tmp_path):
    visit = tmp_path / "visit.txt"
    visit.write_text(SECRET)
    result = runner.invoke(cli, ["score", "--file", str(visit), "--format", "both"])
    assert result.exit_code == 0, result.output
    assert "empathy" in result.output and "overall" in result.output and "Validates feelings" in result.output
    payload = json.loads(result.output[result.output.index("{\n"):])
    assert payload["rating"] == GOOD_ANSWER and payload["overall"] == 4.5
    assert {"model", "backend", "prompt_tokens", "output_tokens", "seconds"} <= set(payload)
    assert fake.closed


def test_score_json_from_stdin_with_options(runner, fake):
    result = runner.invoke(cli, ["score", "-", "--json", "--backend", "llama-cpp", "--model", "m.gguf",
                                 "--seed", "9", "--num-ctx", "16384", "--threads", "1"], input=SECRET)
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["rating"] == GOOD_ANSWER
    assert fake.opened[0] == {"name": "llama-cpp", "model": "m.gguf", "host": None, "timeout": None,
                              "threads": 1, "num_ctx": 16384, "base_url": None, "api_key": None,
                              "tokenizer": None, "allow_remote": False}
    assert fake.calls[0][1].seed == 9 and fake.calls[0][1].num_ctx == 16384


@pytest.mark.parametrize(
    "args, stdin, content, message",
    [
        (["score"], None, None, "give the transcript as TEXT"),
        (["score", "   "], None, None, "the transcript is empty"),
        (["score", "-"], "", None, "the transcript is empty"),
        (["score", "--file", "{tmp}/missing.txt"], None, None, "file not found"),
        (["score", "--file", "{tmp}"], None, None, "is a folder"),
        (["score", "--file", "{tmp}/visit.txt"], None, b"\x00\x01binary", "looks like a binary file"),
        (["score", "--file", "{tmp}/visit.txt"], None, b"RD: caf\xe9", "invalid UTF-8 at byte 7"),
        (["score", "--file", "{tmp}/visit.txt"], None, b"  \n\n", "visit.txt: the file is empty"),
        (["score", "x", "--file", "{tmp}/visit.txt"], None, b"RD: Hi", "give the transcript as TEXT"),
    ],
)
def test_score_input_errors(runner, fake, tmp_path, args, stdin, content, message):
    if content is not None:
        (tmp_path / "visit.txt").write_bytes(content)
    result = runner.invoke(cli, [a.format(tmp=tmp_path) for a in args], input=stdin)
    assert result.exit_code == 1, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_answer_budget_comes_from_the_config(runner, fake, tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  answer_tokens: 300\n")
    result = runner.invoke(cli, ["score", SECRET, "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert fake.calls[0][1].num_predict == 300
    config.write_text("model:\n  answer_tokens: 0\n")
    result = runner.invoke(cli, ["score", SECRET, "--config", str(config)])
    assert result.exit_code == 1
    assert result.output == f"Error: {config}: model.answer_tokens: input should be greater than or equal to 32\n"


@pytest.mark.parametrize("args, message", [
    (["score", SECRET, "--seed", "-1"], "-1 is not in the range 0<=x<=4294967293"),  # -1: 'random' to llama.cpp
    (["score", SECRET, "--seed", str(2**32)], "4294967296 is not in the range 0<=x<=4294967293"),  # wraps to 0
    (["score", SECRET, "--seed", str(2**32 - 2)], "is not in the range 0<=x<=4294967293"),  # its retry would wrap
    (["batch", "in.jsonl", "--seed", str(2**40)], "is not in the range 0<=x<=4294967293"),
    (["serve", "--seed", "-5"], "-5 is not in the range 0<=x<=4294967293"),
    (["evaluate", "--data", "l.jsonl", "--runs", "3", "--seed", str(2**32 - 4)],
     "with --runs 3 it must be 0 to 4294967291: the runs and their retries take the seeds after it"),
])
def test_a_seed_must_leave_room_for_its_retries_below_2_to_the_32(runner, fake, args, message, monkeypatch):
    monkeypatch.setattr("hcp.serve.server.serve", lambda *a, **k: pytest.fail("a refused seed started the server"))
    result = runner.invoke(cli, args)
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "Invalid value for '--seed'" in result.output and message in result.output
    assert fake.calls == []


def test_the_largest_seed_and_its_retries_stay_below_2_to_the_32(runner, monkeypatch):
    backend = FakeBackend("not json", "not json", GOOD_ANSWER)
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: backend)
    result = runner.invoke(cli, ["score", SECRET, "--json", "--seed", str(2**32 - 3)])
    assert result.exit_code == 0, result.output
    assert [options.seed for _, options in backend.calls] == [2**32 - 3, 2**32 - 2, 2**32 - 1]


def test_score_too_long_names_counts_and_fix(runner, fake):
    long = "RD: Hello. Patient: " + "My kidneys hurt. " * 1000
    result = runner.invoke(cli, ["score", long, "--num-ctx", "4096"])
    assert result.exit_code == 1
    assert "over num_ctx 4096" in result.output and "raise model.num_ctx" in result.output
    assert "answer budget of 1024 tokens (model.answer_tokens)" in result.output
    assert "kidneys" not in result.output
    assert fake.calls == []


def test_score_invalid_output_names_the_raw_file(runner, monkeypatch, tmp_path):
    # The raw answers (which may quote the transcript) go to the per-user state folder, the owner's alone —
    # never into the current folder, which may be shared.
    backend = FakeBackend("{not json")
    monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: backend)
    work, state = tmp_path / "work", tmp_path / "state"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("XDG_STATE_HOME", str(state))
    umask = os.umask(0o022)
    try:
        result = runner.invoke(cli, ["score", SECRET])
    finally:
        os.umask(umask)
    assert result.exit_code == 1
    assert list(work.iterdir()) == []
    saved = list((state / "hcp").glob("hcp-invalid-output-*.json"))
    assert len(saved) == 1 and str(saved[0]) in result.output
    assert stat.S_IMODE(saved[0].stat().st_mode) == 0o600
    assert stat.S_IMODE((state / "hcp").stat().st_mode) == 0o700


@pytest.mark.parametrize(
    "model, content, message",
    [("{tmp}/nope.gguf", None, "GGUF file not found"), ("{tmp}/fake.gguf", b"not gguf", "not a GGUF file"),
     # the GGUF magic, then lengths of 2^64-1 (was OverflowError) or 2^40 (was MemoryError): a corrupt header
     ("{tmp}/fake.gguf", b"GGUF" + b"\xff" * 64, "fake.gguf: not a readable GGUF file (corrupt GGUF header"),
     ("{tmp}/fake.gguf", b"GGUF\x03\x00\x00\x00" + (0).to_bytes(8, "little") + (1).to_bytes(8, "little")
      + (2**40).to_bytes(8, "little") + b"general.architecture", "not a readable GGUF file (corrupt GGUF header")],
)
def test_score_bad_gguf(runner, tmp_path, model, content, message):
    if content is not None:
        (tmp_path / "fake.gguf").write_bytes(content)
    result = runner.invoke(cli, ["score", SECRET, "--backend", "llama-cpp", "--model", model.format(tmp=tmp_path)])
    assert result.exit_code == 1 and message in result.output
    assert isinstance(result.exception, SystemExit) and result.output.count("\n") == 1


def test_score_on_the_embedded_model_logs_no_transcript(runner, caplog):
    caplog.set_level(logging.DEBUG)
    result = runner.invoke(cli, ["-v", "score", SECRET, "--backend", "llama-cpp", "--json", "--threads", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert payload["backend"] == "llama-cpp" and "embedded default" in payload["model"]
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "rated a" in logged
    assert "Qwertyuiop" not in logged and "orange juice" not in logged


@pytest.mark.parametrize("command", [
    ["data", "sample", "--n", "2", "--out", "{blocker}/x.jsonl"],
    ["data", "split", "{data}", "--out-dir", "{blocker}/split"],
    ["batch", "{data}", "--out", "{blocker}/r.jsonl"],
    ["evaluate", "--data", "{data}", "--report", "{blocker}/report"],
])
def test_an_output_location_that_cannot_be_written_is_one_line(runner, fake, tmp_path, command):
    """An output path under a file (a folder cannot be made there): one line naming it, no traceback."""
    blocker = tmp_path / "notes.txt"
    blocker.write_text("a file, not a folder")
    data = tmp_path / "d.jsonl"
    write_jsonl(data, generate_samples(4, seed=1))
    args = [a.format(blocker=blocker, data=data) for a in command]
    result = runner.invoke(cli, args)
    assert result.exit_code != 0 and not isinstance(result.exception, OSError), result.output
    assert str(blocker) in result.output and "Traceback" not in result.output
