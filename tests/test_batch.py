"""`hcp batch`: every id rated exactly once across kills and reruns, failures recorded and retried, the
input formats, duplicates, unreadable rows, and no transcript text anywhere but the input."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.batch.inputs import content_id
from hcp.batch.results import FAILED, OK, output_paths, read_results
from hcp.cli import EXIT_SOME_FAILED, cli
from hcp.errors import BackendError, DataError
from hcp.scoring.backends import Generation
from tests.fakes import GOOD_ANSWER, FakeBackend

ROOT = Path(__file__).resolve().parent.parent
SECRET_WORDS = ("Zyxwvut", "potassium", "Qwertyuiop")


def transcript(n: int, extra: str = "") -> str:
    return f"RD: Hello Mrs Zyxwvut, visit {n}. Patient: My potassium is high. {extra}".strip()


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


class ByTranscript(FakeBackend):
    """A fake whose answer depends on the transcript: one containing 'BAD' never gets a valid answer, one
    containing 'GONE' meets a dead backend; `delay` seconds per answer; tracks how many answers ran at once."""

    def __init__(self, *, model: str = "fake-model", name: str = "fake", delay: float = 0.0) -> None:
        super().__init__(GOOD_ANSWER, model=model)
        self.name = name
        self.delay = delay
        self.active = self.peak = 0
        self._lock = threading.Lock()

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        text = messages[-1]["content"]
        with self._lock:
            self.calls.append((messages, options))
            self.active += 1
            self.peak = max(self.peak, self.active)
        try:
            time.sleep(self.delay)
            if "GONE" in text:
                raise BackendError("Ollama is not running at http://127.0.0.1:11434 — start it with 'ollama serve'")
            answer = '{"reasoning": "cut' if "BAD" in text else json.dumps(GOOD_ANSWER)
            return Generation(answer, "stop", self.count_prompt_tokens(messages), 40, 0.01)
        finally:
            with self._lock:
                self.active -= 1


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def use(monkeypatch):
    """use(backend): every backend the CLI opens is `backend`."""

    def install(backend: FakeBackend) -> FakeBackend:
        monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *args, **kwargs: backend)
        return backend

    return install


def batch(runner: CliRunner, *args: object):  # noqa: ANN201
    return runner.invoke(cli, ["batch", *map(str, args)], catch_exceptions=False)


# --- the basic path ---------------------------------------------------------------------------------------


def test_jsonl_rated_one_record_per_id_then_rerun_skips_all(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "v1", "transcript": transcript(1)},
                                              {"transcript": transcript(2)}, {"id": 7, "transcript": transcript(3)}])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["id"] for r in got] == ["v1", content_id(transcript(2)), "7"]  # given ids, else from the content
    first = got[0]
    assert first["status"] == OK and first["rating"] == GOOD_ANSWER
    assert first["overall"] == pytest.approx(4.5)  # 0.3*5 + 0.25*4 + 0.25*4 + 0.2*5
    assert {"backend", "model", "rubric", "seed", "prompt_tokens", "output_tokens", "seconds"} <= first.keys()
    assert "rated now" in result.stdout and "empathy" in result.stdout and "5.00" in result.stdout
    assert len(backend.calls) == 3

    again = batch(runner, inp, "--out", out)
    assert again.exit_code == 0
    assert len(backend.calls) == 3 and len(records(out)) == 3  # nothing rated twice
    assert "skipped: rated before" in again.stdout


def test_content_id_is_stable_across_line_endings_and_spacing():
    text = "RD: Hi there.\nPatient: Hello."
    assert content_id(text) == content_id("  RD: Hi  there.\r\nPatient:   Hello.\n") == content_id(text + "\r\n")
    assert content_id(text) != content_id("RD: Hi there. Patient: Hello!")
    assert len(content_id(text)) == 12 and int(content_id(text), 16) >= 0


@pytest.mark.parametrize(
    "out, fmt, expected",
    [
        ("r.jsonl", None, ("r.jsonl", None)),  # the usual case
        ("r.csv", None, ("r.jsonl", "r.csv")),  # the suffix says CSV: the JSONL beside it is what resumes
        ("r.jsonl", "csv", ("r.jsonl", "r.csv")),
        ("results", "csv", ("results.jsonl", "results.csv")),
        ("r.csv", "jsonl", DataError),  # JSON lines in a .csv file would confuse every reader
    ],
)
def test_output_paths(tmp_path, out, fmt, expected):
    if expected is DataError:
        with pytest.raises(DataError, match="name the file .jsonl"):
            output_paths(tmp_path / out, fmt)
        return
    results, csv_path = output_paths(tmp_path / out, fmt)
    assert (results.name, csv_path.name if csv_path else None) == expected


def test_out_must_not_be_the_input_or_another_file(runner, use, tmp_path):
    use(ByTranscript())
    inp = write_jsonl(tmp_path / "in.jsonl", [{"transcript": transcript(1)}])
    same = batch(runner, inp, "--out", inp)
    assert same.exit_code == 1 and "would overwrite the input" in same.stderr
    other = write_jsonl(tmp_path / "train.jsonl", [{"transcript": transcript(2), "empathy": 3}])
    foreign = batch(runner, inp, "--out", other)
    assert foreign.exit_code == 1 and "train.jsonl:1: not a result of hcp batch" in foreign.stderr
    assert other.read_text().count("\n") == 1  # untouched


@pytest.mark.parametrize("content", [
    b"my notes on the clinic\nsecond thought, no newline at the end",
    b"first line\n{\"id\": \"v1\", \"status\": \"ok\"}\nlast words",
    b'{"id": "v1", "status": "ok"}\n{"id": "v2", "note": "mine"}',
    b'{"id": "v1", "status": "ok"}\nnot JSON\n',
    b"\n\n",
    b'["a list"]',
], ids=["text without its last newline", "text around a record", "a last object that is no record",
        "a line that is not JSON", "blank lines", "a JSON list"])
def test_only_a_results_file_hcp_wrote_is_resumed_any_other_is_left_byte_for_byte(runner, use, tmp_path, content):
    use(ByTranscript())
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "v1", "transcript": transcript(1)}])
    notes = tmp_path / "notes.jsonl"
    notes.write_bytes(content)
    result = batch(runner, inp, "--out", notes)
    assert result.exit_code == 1 and "not a result of hcp batch" in result.stderr, result.output
    assert "left as it is" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert notes.read_bytes() == content


def test_every_field_of_a_results_record_and_column_of_its_csv_is_a_reserved_dimension_name(runner, use, rubric,
                                                                                             tmp_path):
    """Derived from real records (a rating with evidence, a failed answer, an unreadable row) and the CSV header:
    a field added to the records without reserving its name would let a dimension overwrite it."""
    from hcp.config import RESERVED_NAMES

    use(ByTranscript())
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "ok", "transcript": transcript(1)},
                                              {"id": "bad", "transcript": transcript(2, "BAD")}, "{broken"])
    out = tmp_path / "out.csv"
    batch(runner, inp, "--out", out)
    written = records(out.with_suffix(".jsonl"))
    assert {r["status"] for r in written} == {OK, FAILED} and any("evidence" in r for r in written)
    fields = {key for r in written for key in r}
    header = next(csv.reader(out.open(encoding="utf-8")))
    names = rubric.names
    per_dimension = {*names, *(f"{n}_confidence" for n in names)}
    assert fields - RESERVED_NAMES == set()
    assert set(header) - per_dimension - RESERVED_NAMES == set()


def test_a_config_whose_dimension_is_named_like_a_record_field_is_refused_before_rating(runner, use, tmp_path):
    backend = use(ByTranscript())
    config = tmp_path / "rubric.yaml"
    config.write_text("scoring:\n  dimensions:\n    status: {weight: 1, description: Says where things stand}\n")
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "v1", "transcript": transcript(1)}])
    result = runner.invoke(cli, ["batch", str(inp), "--out", str(tmp_path / "out.csv"), "--config", str(config)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "scoring.dimensions: dimension name 'status' is reserved" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert backend.calls == [] and not (tmp_path / "out.jsonl").exists()


def test_a_csv_at_out_that_hcp_did_not_write_is_left_byte_for_byte(runner, use, tmp_path):
    use(ByTranscript())
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "v1", "transcript": transcript(1)}])
    sheet = tmp_path / "clinic.csv"
    sheet.write_bytes(b"name,phone\r\nsomeone,555\r\n")
    result = batch(runner, inp, "--out", sheet)
    assert result.exit_code == 1 and "not a results CSV of hcp batch" in result.stderr, result.output
    assert sheet.read_bytes() == b"name,phone\r\nsomeone,555\r\n" and not sheet.with_suffix(".jsonl").exists()
    assert batch(runner, inp, "--out", tmp_path / "ours.csv").exit_code == 0
    assert batch(runner, inp, "--out", tmp_path / "ours.csv").exit_code == 0  # its own CSV: rewritten


# --- resuming ---------------------------------------------------------------------------------------------

SITECUSTOMIZE = """
# Test-only: every backend `python -m hcp` opens is a fake that takes HCP_TEST_DELAY seconds per answer.
import os, time
import hcp.scoring.backends
from tests.fakes import FakeBackend

class SlowFake(FakeBackend):
    name = os.environ.get("HCP_TEST_BACKEND", "fake")  # llama-cpp: --parallel decodes together (FakeParallel)

    def generate(self, messages, schema, options):
        time.sleep(float(os.environ.get("HCP_TEST_DELAY", "0")))
        return super().generate(messages, schema, options)

hcp.scoring.backends.open_backend = lambda *args, **kwargs: SlowFake()
"""


@pytest.mark.parametrize("parallel", [[], ["--parallel", "3"]], ids=["one at a time", "decoded together"])
def test_kill_9_mid_run_then_rerun_rates_every_id_exactly_once(tmp_path, parallel):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    ids = [f"visit-{n:02d}" for n in range(12)]
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": i, "transcript": transcript(n)} for n, i in enumerate(ids)])
    out = tmp_path / "out.jsonl"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), str(ROOT)]), "HCP_TEST_DELAY": "0.25",
           "HCP_TEST_BACKEND": "llama-cpp" if parallel else "fake"}
    command = [sys.executable, "-m", "hcp", "batch", str(inp), "--out", str(out), *parallel]
    proc = subprocess.Popen(command, env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not out.exists() or out.read_bytes().count(b"\n") < 3:
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "the batch wrote nothing in 60 s"
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    kept = len(records(out))
    assert 3 <= kept < len(ids)  # killed mid-run

    rerun = subprocess.run(command, env={**env, "HCP_TEST_DELAY": "0"}, cwd=tmp_path, capture_output=True,
                           text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stderr
    got = [r["id"] for r in records(out)]
    assert sorted(got) == ids  # every id, exactly once
    assert all(r["status"] == OK for r in records(out))


def test_torn_last_line_is_dropped_and_its_transcript_rated_again(runner, use, tmp_path, caplog):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n)} for n in range(4)])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    assert batch(runner, inp, "--out", out).exit_code == 0
    lines = out.read_text().splitlines(keepends=True)
    # As if killed while writing the third record: two whole lines, then half of the third, no newline.
    out.write_text(lines[0] + lines[1] + lines[2][: len(lines[2]) // 2])
    backend.calls.clear()
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 0, result.output
    assert "incomplete last line" in result.stderr
    assert [r["id"] for r in records(out)] == ["v0", "v1", "v2", "v3"]  # every line whole JSON, each id once
    assert len(backend.calls) == 2


def test_last_record_without_its_newline_is_kept(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n)} for n in range(2)])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    batch(runner, inp, "--out", out)
    out.write_text(out.read_text().rstrip("\n"))
    backend.calls.clear()
    assert batch(runner, inp, "--out", out).exit_code == 0
    assert backend.calls == [] and [r["id"] for r in records(out)] == ["v0", "v1"]


def test_rerun_with_another_model_is_refused(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"transcript": transcript(1)}, {"transcript": transcript(2)}])
    out = tmp_path / "out.jsonl"
    use(ByTranscript(model="model-a"))
    batch(runner, inp, "--out", out)
    use(ByTranscript(model="model-b"))
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 1
    assert "holds ratings made with model 'model-a'" in result.stderr and "write to a new results file" in result.stderr


@pytest.mark.parametrize(
    "args, setting",
    [
        (["--seed", "7"], "seed 42; this run uses seed 7"),
    ],
)
def test_rerun_with_another_setting_is_refused(runner, use, tmp_path, args, setting):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"transcript": transcript(1)}, {"transcript": transcript(2)}])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    assert batch(runner, inp, "--out", out).exit_code == 0
    record = records(out)[0]
    assert (record["seed"], record["temperature"], record["num_ctx"], record["model_digest"]) == (42, 0.0, 8192, None)
    result = batch(runner, inp, "--out", out, *args)
    assert result.exit_code == 1 and len(backend.calls) == 2
    assert f"holds ratings made with {setting}" in result.stderr and "write to a new results file" in result.stderr


def test_a_larger_context_may_rate_what_was_too_long(runner, use, tmp_path):
    """The README's route for a transcript too long for the context: the same command with a larger
    --num-ctx and --retry-failed rates it, and only it."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "short", "transcript": transcript(1)},
                                              {"id": "long", "transcript": transcript(2) + " x" * 5000}])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    assert batch(runner, inp, "--out", out, "--num-ctx", "12000").exit_code == 3  # the fake counts characters
    assert {r["id"]: r["status"] for r in records(out)} == {"short": "ok", "long": "failed"}
    rerun = batch(runner, inp, "--out", out, "--num-ctx", "32768", "--retry-failed")
    assert rerun.exit_code == 0, rerun.output
    assert [r["id"] for r in records(out)][-1] == "long" and len(backend.calls) == 2


def test_rerun_after_the_model_file_changed_is_refused(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"transcript": transcript(1)}])
    out = tmp_path / "out.jsonl"

    class Versioned(ByTranscript):
        digest = "size 100, mtime 1"

        def model_digest(self) -> str:
            return self.digest

    backend = use(Versioned(model="rater.gguf"))
    assert batch(runner, inp, "--out", out).exit_code == 0
    backend.digest = "size 100, mtime 2"  # the same name, re-exported
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 1
    assert "holds ratings made with model_digest 'size 100, mtime 1'" in result.stderr


def test_a_gguf_is_identified_by_its_size_and_modification_time(tmp_path):
    from hcp.gguf_file import file_identity

    path = tmp_path / "m.gguf"
    path.write_bytes(b"GGUF" + bytes(60))
    first = file_identity(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 1))  # rewritten: a new time
    assert file_identity(path) != first and str(path.stat().st_size) in first


def test_a_changed_transcript_is_rated_again(runner, use, tmp_path):
    rows = [{"id": "v1", "transcript": transcript(1)}, {"id": "v2", "transcript": transcript(2)},
            {"id": "long", "transcript": "RD: Hi. Patient: " + "word " * 3000}]
    inp = write_jsonl(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    assert batch(runner, inp, "--out", out).exit_code == EXIT_SOME_FAILED  # 'long' does not fit
    assert len(backend.calls) == 2
    rows[1]["transcript"] = transcript(2, "The RD corrected the dose.")
    rows[2]["transcript"] = "RD: Hi. Patient: shortened."  # the user fixed the one that was too long
    write_jsonl(inp, rows)
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 0, result.output
    assert len(backend.calls) == 4  # v2 and long, without --retry-failed; v1 is unchanged
    assert "changed since: rated again" in result.stdout
    assert re.search(r"changed since: rated again\s*│\s*2", result.stdout)
    newest = read_results(out)
    assert newest["long"]["status"] == OK
    assert [r["id"] for r in records(out)] == ["v1", "v2", "long", "v2", "long"]  # appended, newest wins
    again = batch(runner, inp, "--out", out)
    assert again.exit_code == 0 and len(backend.calls) == 4  # nothing changed now


# --- failures ---------------------------------------------------------------------------------------------


def test_failures_are_recorded_then_retried_with_retry_failed(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "good", "transcript": transcript(1)},
                                              {"id": "bad", "transcript": transcript(2, "BAD")},
                                              {"id": "long", "transcript": "RD: Hi. Patient: " + "word " * 3000}])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    first = batch(runner, inp, "--out", out, "--num-ctx", "8192")
    assert first.exit_code == EXIT_SOME_FAILED == 3
    by_id = read_results(out)
    assert by_id["good"]["status"] == OK
    bad, long = by_id["bad"], by_id["long"]
    assert (bad["status"], bad["error"], long["error"]) == (FAILED, "invalid_output", "too_long")
    assert "no valid rating in 3 attempt(s)" in bad["reason"] and "\n" not in bad["reason"]
    assert "num_ctx 8192" in long["reason"]
    assert bad["source"] == "in.jsonl:2"
    assert list(tmp_path.glob("hcp-invalid-output-*.json")), "raw answers are kept beside the results"
    assert "in.jsonl:2: failed (invalid_output)" in first.stderr and "--retry-failed" in first.stderr

    calls = len(backend.calls)
    skipped = batch(runner, inp, "--out", out)
    assert skipped.exit_code == EXIT_SOME_FAILED and len(backend.calls) == calls  # failed ones are not retried
    assert "skipped: failed before" in skipped.stdout

    class Fixed(ByTranscript):  # the model now answers 'BAD' validly
        def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
            messages = [*messages[:-1], {"role": "user", "content": messages[-1]["content"].replace("BAD", "")}]
            return super().generate(messages, schema, options)

    fixed = use(Fixed())
    retried = batch(runner, inp, "--out", out, "--retry-failed")
    assert retried.exit_code == EXIT_SOME_FAILED  # 'long' still does not fit
    assert len(fixed.calls) == 1  # 'bad' only: 'good' is done, 'long' is refused before generating
    assert read_results(out)["bad"]["status"] == OK  # the newest record of an id is its result
    assert [r["id"] for r in records(out)].count("bad") == 2  # the file is append-only


def test_files_holding_ratings_or_answers_are_the_owners_alone(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "good", "transcript": transcript(1)},
                                              {"id": "bad", "transcript": transcript(2, "BAD")}])
    out = tmp_path / "results" / "out.csv"
    use(ByTranscript())
    umask = os.umask(0o022)  # the usual umask: without care, every new file would be readable by all
    try:
        result = batch(runner, inp, "--out", out)
    finally:
        os.umask(umask)
    assert result.exit_code == EXIT_SOME_FAILED
    raw = list(out.parent.glob("hcp-invalid-output-*.json"))
    assert len(raw) == 1  # beside the results
    for path in (out, out.with_suffix(".jsonl"), raw[0]):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path.name


def test_unreadable_rows_are_reported_with_their_line_and_the_rest_rated(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "transcript": transcript(1)},
        '{"id": "b", "transcript": "RD: unterminated',
        {"id": "c", "transcript": "   \n  "},
        {"id": "d"},
        {"id": "e", "transcript": ["RD: a list"]},
        "[1, 2]",
        {"id": "f", "transcript": transcript(6)},
    ])
    out = tmp_path / "out.jsonl"
    use(ByTranscript())
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == EXIT_SOME_FAILED
    by_id = read_results(out)
    assert by_id["a"]["status"] == by_id["f"]["status"] == OK
    expected = {  # id -> (error kind, reason), each reported on stderr with its line
        "in.jsonl:2": ("unreadable", "invalid JSON"),
        "c": ("empty", "transcript: is empty"),
        "d": ("unreadable", "transcript: missing"),
        "e": ("unreadable", "transcript: must be text, got list"),
        "in.jsonl:6": ("unreadable", "expected a JSON object, got list"),
    }
    for ident, (kind, reason) in expected.items():
        assert (by_id[ident]["error"], by_id[ident]["status"]) == (kind, FAILED)
        assert reason in by_id[ident]["reason"]
        assert f"{by_id[ident]['source']}: failed ({kind})" in result.stderr


def test_backend_gone_stops_the_batch_after_three_in_a_row(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n, "GONE")}
                                              for n in range(6)])
    out = tmp_path / "out.jsonl"
    use(ByTranscript())
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 1
    assert "stopped after 3 backend errors in a row" in result.stderr and "3 transcript(s) not tried" in result.stderr
    assert [r["error"] for r in records(out)] == ["backend"] * 3


def test_no_transcript_text_in_output_logs_or_reasons(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "ok", "transcript": "RD: Hello Mrs Zyxwvut. Patient: My potassium is 6.1."},
        {"id": "bad", "transcript": "RD: Mr Qwertyuiop, BAD. Patient: potassium again."},
        {"id": "long", "transcript": "RD: Zyxwvut? Patient: " + "potassium " * 3000},
        '{"id": "torn", "transcript": "RD: Qwertyuiop potassium',
    ])
    out = tmp_path / "out.jsonl"
    use(ByTranscript())
    result = runner.invoke(cli, ["-v", "batch", str(inp), "--out", str(out), "--format", "csv"])
    assert result.exit_code == EXIT_SOME_FAILED
    assert "rated a" in result.stderr  # -v logs progress...
    written = result.stdout + result.stderr + out.read_text() + out.with_suffix(".csv").read_text()
    for word in SECRET_WORDS:
        assert word not in written  # ...but never the transcripts


# --- input formats and duplicates -------------------------------------------------------------------------


def test_csv_input_and_csv_output(runner, use, tmp_path):
    inp = tmp_path / "visits.csv"
    with inp.open("w", newline="", encoding="utf-8-sig") as f:  # as a spreadsheet saves it: BOM, CRLF
        writer = csv.writer(f)
        writer.writerow(["id", "clinic", "transcript"])
        writer.writerow(["v1", "north", "RD: Hello, how are you?\nPatient: Tired, and my sugar is high."])
        writer.writerow(["", "south", transcript(2)])
    out = tmp_path / "ratings.csv"
    use(ByTranscript())
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == 0, result.output
    assert [r["id"] for r in records(tmp_path / "ratings.jsonl")] == ["v1", content_id(transcript(2))]
    with out.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["v1", content_id(transcript(2))]
    assert rows[0]["status"] == "ok" and rows[0]["empathy"] == "5" and rows[0]["overall"] == "4.5"
    assert rows[0]["strengths"] == "Validates feelings;Concrete plan"
    assert not list(tmp_path.glob(".ratings.csv.*")), "written atomically, no temporary file left"


def test_csv_cells_that_a_spreadsheet_would_run_as_formulas_are_quoted(runner, use, tmp_path):
    # OWASP's CSV-injection advice: a text cell beginning with = + - @ tab or CR gets a leading '. The JSONL
    # keeps the exact text; numbers stay numbers.
    answer = {**GOOD_ANSWER, "reasoning": "=HYPERLINK(\"http://e.x\",\"see\")",
              "strengths": ["+1 for warmth", "@SUM(A1:A9)"], "areas_for_improvement": ["\r-2 points", "pace"]}
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "=1+1", "transcript": transcript(1)},
                                              {"id": "@v2", "transcript": transcript(2)},
                                              {"id": "-3", "transcript": transcript(3)},
                                              {"id": "plain-id", "transcript": transcript(4)}])
    use(FakeBackend(answer, model="\tmodel"))
    result = batch(runner, inp, "--out", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [r["id"] for r in rows] == ["'=1+1", "'@v2", "'-3", "plain-id"]
    first = rows[0]
    assert first["reasoning"] == "'" + answer["reasoning"]
    assert first["strengths"] == "'+1 for warmth;@SUM(A1:A9)"  # the cell begins with '+'
    assert first["areas_for_improvement"] == "'\r-2 points;pace"
    assert first["model"] == "'\tmodel"
    assert (first["status"], first["backend"]) == ("ok", "fake")
    assert (first["empathy"], first["overall"], first["seed"]) == ("5", "4.5", "42")  # numbers as they are
    jsonl = read_results(tmp_path / "out.jsonl")
    assert jsonl["=1+1"]["rating"] == answer and jsonl["=1+1"]["model"] == "\tmodel"  # the exact text


def test_negative_numbers_stay_numbers_in_the_csv(tmp_path, rubric):
    from hcp.batch.run import write_results_csv

    record = {"id": "a", "status": OK, "overall": 4.5, "rating": GOOD_ANSWER, "seed": -1, "model": "m",
              "backend": "fake", "prompt_tokens": 10, "output_tokens": 5, "seconds": 0.5}
    write_results_csv({"a": record}, rubric, tmp_path / "r.csv")
    with (tmp_path / "r.csv").open(newline="", encoding="utf-8") as f:
        assert next(csv.DictReader(f))["seed"] == "-1"


def test_folder_of_txt_files(runner, use, tmp_path):
    folder = tmp_path / "visits"
    (folder / "north").mkdir(parents=True)
    (folder / "a.txt").write_text(transcript(1), encoding="utf-8")
    (folder / "north" / "b.TXT").write_text(transcript(2), encoding="utf-8")
    (folder / "empty.txt").write_text("  \n", encoding="utf-8")
    (folder / "scan.txt").write_bytes(b"%PDF\x00\x01binary")
    (folder / "latin1.txt").write_bytes("RD: Buenos días. Patient: Sí.".encode("latin-1"))
    (folder / ".a.txt.swp.txt").write_text(transcript(9))  # hidden: skipped
    (folder / "notes.md").write_text(transcript(8))  # not .txt: skipped
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    result = batch(runner, folder, "--out", out)
    assert result.exit_code == EXIT_SOME_FAILED
    by_id = read_results(out)
    assert sorted(by_id) == ["a.txt", "empty.txt", "latin1.txt", "north/b.TXT", "scan.txt"]
    assert by_id["a.txt"]["status"] == by_id["north/b.TXT"]["status"] == OK
    assert by_id["empty.txt"]["error"] == "empty"
    assert "binary" in by_id["scan.txt"]["reason"] and "invalid UTF-8" in by_id["latin1.txt"]["reason"]
    assert len(backend.calls) == 2


def test_duplicate_ids(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "v1", "transcript": transcript(1)},
        {"id": "v1", "transcript": transcript(1).replace(" ", "  ")},  # same text, other spacing: rated once
        {"id": "v2", "transcript": transcript(2)},
        {"id": "v2", "transcript": transcript(3)},  # same id, other text: which one would the rating be?
        {"transcript": transcript(4)},
        {"transcript": transcript(4)},  # no id, same text: same content id, rated once
    ])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript())
    result = batch(runner, inp, "--out", out)
    assert result.exit_code == EXIT_SOME_FAILED
    by_id = read_results(out)
    assert sorted(by_id) == sorted(["v1", "v2", content_id(transcript(4))])
    assert by_id["v2"]["error"] == "duplicate_id"
    assert "in.jsonl:3, in.jsonl:4" in by_id["v2"]["reason"] and "give each its own id" in by_id["v2"]["reason"]
    assert "in.jsonl:2: same id and transcript as in.jsonl:1" in result.stderr
    assert "in.jsonl:6: same id and transcript as in.jsonl:5" in result.stderr
    assert len(backend.calls) == 2


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.jsonl", "", "no transcripts found — the file is empty"),
        ("blank.jsonl", "\n  \n", "no transcripts found — the file is empty"),
        ("header.csv", "id,transcript\n", "no transcripts found — the file is empty"),
        ("columns.csv", "id,text\n1,RD: hi Patient: hi\n", "the first row names no 'transcript' column (2 columns)"),
        ("notes.docx", "x", "unknown data format '.docx'"),
        ("missing.jsonl", None, "not found — give a .jsonl or .csv file, or a folder"),
        ("folder", "dir", "no .txt files found"),
    ],
)
def test_inputs_that_hold_nothing_to_rate(runner, use, tmp_path, name, content, message):
    backend = use(ByTranscript())
    path = tmp_path / name
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    result = batch(runner, path, "--out", tmp_path / "out.jsonl")
    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert backend.calls == [] and not (tmp_path / "out.jsonl").exists()


HEADERLESS_CSV = ("RD: Good morning Mrs Quixadrel, your sodium was 152,"
                  "Patient: I drink Brovnik tonic daily\n"
                  "RD: Let us look at your potassium,Patient: Fine\n")


def test_a_csv_without_a_header_row_is_refused_without_quoting_its_first_row(runner, use, rubric, tmp_path):
    """The first row of a header-less CSV is a transcript: the error (CLI and POST /batch) counts the columns it
    found and names the ones expected, and quotes none of its words."""
    from tests.fakes import FakeBackend
    from tests.serving import served

    use(ByTranscript())
    path = tmp_path / "visits.csv"
    path.write_text(HEADERLESS_CSV)
    result = batch(runner, path, "--out", tmp_path / "out.jsonl")
    with served(FakeBackend(), rubric, tmp_path / "serve") as server:
        answer = server.client.post("/batch", files={"file": ("visits.csv", HEADERLESS_CSV.encode())})
    words = ["Quixadrel", "morning", "sodium", "152", "Brovnik", "tonic", "potassium", "RD:", "Patient:"]
    assert result.exit_code == 1 and answer.status_code == 400
    for message in (result.stderr, answer.json()["detail"]):
        assert "names no 'transcript' column (3 columns)" in message, message
        assert "'transcript'" in message and "'id'" in message
        assert not [w for w in words if w in message], message
    assert not (tmp_path / "out.jsonl").exists()


# --- parallel ---------------------------------------------------------------------------------------------


def test_parallel_sends_n_requests_at_once_and_keeps_the_model_loaded(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n)} for n in range(9)])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript(delay=0.1))
    backend.keep_alive = None  # as the Ollama backend leaves it: the daemon's default (5 minutes)
    result = batch(runner, inp, "--out", out, "--parallel", "3")
    assert result.exit_code == 0, result.output
    assert backend.peak == 3
    assert sorted(r["id"] for r in records(out)) == [f"v{n}" for n in range(9)]
    assert backend.keep_alive == "30m"


def test_parallel_on_the_embedded_backend_decodes_transcripts_together(runner, use, tmp_path):
    rows = [{"id": f"v{n}", "transcript": transcript(n, "BAD" if n == 4 else "")} for n in range(9)]
    inp = write_jsonl(tmp_path / "in.jsonl", [*rows, {"id": "long", "transcript": "RD: Hi. " + "word " * 3000}])
    out = tmp_path / "out.jsonl"
    backend = use(ByTranscript(name="llama-cpp"))
    result = batch(runner, inp, "--out", out, "--parallel", "4")
    assert result.exit_code == EXIT_SOME_FAILED
    assert "ignored" not in result.stderr
    [engine] = backend.engines  # the embedded engine: 4 sequences in one context, no threads
    assert engine.slots == 4 and engine.closed and backend.peak == 1
    by_id = read_results(out)
    assert sorted(r["id"] for r in records(out)) == sorted([*by_id])  # one record per id
    assert {i: r["status"] for i, r in by_id.items()} == {**{f"v{n}": OK for n in range(9)}, "v4": FAILED,
                                                          "long": FAILED}
    assert (by_id["v4"]["error"], by_id["long"]["error"]) == ("invalid_output", "too_long")
    assert "4 at once" in result.stdout

    rerun = batch(runner, inp, "--out", out, "--parallel", "4")
    assert rerun.exit_code == EXIT_SOME_FAILED and len(records(out)) == 10  # nothing rated twice


# --- the real embedded model ------------------------------------------------------------------------------


def test_embedded_default_model(runner, tmp_path):
    # Short answers (the schema's bounds) keep this quick: the tiny model otherwise writes to the limit.
    config = tmp_path / "short.yaml"
    config.write_text("scoring:\n  reasoning_max_chars: 80\n  list_max_items: 1\n  item_max_chars: 20\n")
    inp = write_jsonl(tmp_path / "in.jsonl", [
        {"id": "a", "transcript": "RD: Hi, what brings you in? Patient: My sugar is high."},
        {"id": "b", "transcript": "RD: How is the low-salt diet going? Patient: Hard, I miss crisps."},
    ])
    out = tmp_path / "out.jsonl"
    result = batch(runner, inp, "--out", out, "--backend", "llama-cpp", "--threads", "2", "--config", config)
    assert result.exit_code == 0, result.output
    got = records(out)
    assert [r["id"] for r in got] == ["a", "b"] and all(r["status"] == OK for r in got)
    assert all(r["backend"] == "llama-cpp" and r["output_tokens"] > 10 and r["prompt_tokens"] > 300 for r in got)
    assert all(1 <= r["overall"] <= 5 and len(r["rating"]["reasoning"]) <= 80 for r in got)


def test_embedded_parallel_rates_each_id_once_and_refuses_the_one_too_long(runner, tmp_path):
    config = tmp_path / "short.yaml"
    config.write_text("scoring:\n  reasoning_max_chars: 80\n  list_max_items: 1\n  item_max_chars: 20\n")
    inp = write_jsonl(tmp_path / "in.jsonl", [
        *({"id": f"v{n}", "transcript": transcript(n)} for n in range(3)),
        {"id": "long", "transcript": "RD: Zyxwvut? Patient: " + "potassium " * 2000},
    ])
    out = tmp_path / "out.jsonl"
    args = [inp, "--out", out, "--backend", "llama-cpp", "--threads", "1", "--num-ctx", "2048", "--config", config,
            "--parallel", "2"]
    result = runner.invoke(cli, ["-v", "batch", *map(str, args)], catch_exceptions=False)
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    by_id = read_results(out)
    assert sorted(r["id"] for r in records(out)) == ["long", "v0", "v1", "v2"]
    assert (by_id["long"]["error"], by_id["long"]["source"]) == ("too_long", "in.jsonl:4")
    assert "num_ctx 2048" in by_id["long"]["reason"]
    for n in range(3):
        record = by_id[f"v{n}"]
        assert record["status"] == OK and record["backend"] == "llama-cpp" and record["prompt_tokens"] > 300
        assert 1 <= record["overall"] <= 5 and len(record["rating"]["reasoning"]) <= 80
    assert "parallel: 2 sequences" in result.stderr  # -v: the context it sized
    for word in SECRET_WORDS:
        assert word not in result.stdout + result.stderr + "".join(r.get("reason", "") for r in by_id.values())
    rerun = batch(runner, *args)
    assert rerun.exit_code == EXIT_SOME_FAILED and len(records(out)) == 4  # nothing rated twice


def test_embedded_parallel_refuses_a_context_it_cannot_hold(runner, tmp_path, monkeypatch):
    import hcp.scoring.backends.llama_cpp_parallel as parallel

    monkeypatch.setattr(parallel, "available_memory", lambda: 50 * 2**20)
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n)} for n in range(4)])
    result = batch(runner, inp, "--out", tmp_path / "out.jsonl", "--backend", "llama-cpp", "--threads", "1",
                   "--parallel", "4")
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "--parallel 4 needs 4 sequences of " in result.stderr and "over the 50 MiB of memory" in result.stderr
    assert records(tmp_path / "out.jsonl") == []  # nothing rated, nothing recorded: lower --parallel and rerun


def test_parallel_through_ollama_asks_the_daemon_to_keep_the_model_loaded(ollama_double, runner, tmp_path,
                                                                         monkeypatch):
    from tests.ollama_double import ForcedReply

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))  # the backend's vocabulary cache
    ollama_double.reset()
    ollama_double.force_replies(*[ForcedReply(json.dumps(GOOD_ANSWER))] * 6)  # answers without running the model
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": f"v{n}", "transcript": transcript(n)} for n in range(6)])
    out = tmp_path / "out.jsonl"
    try:
        result = batch(runner, inp, "--out", out, "--backend", "ollama", "--host", ollama_double.url,
                       "--model", "smollm2", "--parallel", "3")
        chats = ollama_double.requests_to("/api/chat")
    finally:
        ollama_double.reset()
    assert result.exit_code == 0, result.output
    assert sorted(r["id"] for r in records(out)) == [f"v{n}" for n in range(6)]
    assert [c.body["keep_alive"] for c in chats] == ["30m"] * 6
    assert all(re.fullmatch("[0-9a-f]{64}", r["model_digest"]) for r in records(out))  # the daemon's digest


def test_results_carry_each_quote_and_its_status_and_the_csv_a_readable_column(runner, use, tmp_path):
    inp = write_jsonl(tmp_path / "in.jsonl", [{"id": "v1", "transcript": transcript(1)}])
    answer = {**GOOD_ANSWER, "empathy_evidence": ["RD: Hello Mrs Zyxwvut, visit 1", "=RD: made up"]}
    use(FakeBackend(answer))
    result = batch(runner, inp, "--out", tmp_path / "out.csv")
    assert result.exit_code == 0, result.output
    (record,) = records(tmp_path / "out.jsonl")
    assert record["evidence"]["empathy"][0] == {"speaker": "RD", "quote": "Hello Mrs Zyxwvut, visit 1",
                                                "verified": True, "problem": None, "line": 1}
    assert record["evidence"]["empathy"][1]["verified"] is False and record["evidence_verified"] is False
    with (tmp_path / "out.csv").open(newline="", encoding="utf-8") as f:
        (row,) = list(csv.DictReader(f))
    assert row["evidence_verified"] == "False"
    assert row["evidence"].splitlines()[:3] == [
        "empathy [verified] RD: Hello Mrs Zyxwvut, visit 1",
        "empathy [NOT VERIFIED: no speaker given — write it as 'Speaker: words'] =RD: made up",
        "clarity [NOT VERIFIED: not in the transcript] RD: I understand how you feel"]


def test_rerun_with_strict_evidence_is_refused_where_ratings_were_made_without(runner, use, tmp_path):
    """A rating reused under --strict-evidence could hold an unverified quote: strict is a setting of the rater."""
    inp = write_jsonl(tmp_path / "in.jsonl", [{"transcript": transcript(1)}])
    out = tmp_path / "out.jsonl"
    use(ByTranscript())
    assert batch(runner, inp, "--out", out).exit_code == 0
    assert records(out)[0]["strict_evidence"] is False
    result = runner.invoke(cli, ["batch", str(inp), "--out", str(out), "--strict-evidence"])
    assert result.exit_code == 1 and "strict_evidence" in result.stderr
