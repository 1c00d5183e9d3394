"""No transcript text in a log line or an error message, through every command that rates, even when the model
repeats the transcript back in its answer (tests/fakes.py: QuotingBackend) and on every failure path: an
invalid answer (saved for the user, not shown), a cut-off one, a transcript too long for the context.

Each transcript carries a distinctive marker; besides the marker, no 12-character run of the transcript may
appear in the captured log records (the `hcp` logger at DEBUG) or in what the command writes to stderr."""

from __future__ import annotations

import json
import logging

import pytest
from click.testing import CliRunner

import hcp.cli
import hcp.scoring.backends
from hcp.cli import EXIT_SOME_FAILED, cli
from tests.fakes import QuotingBackend

MARKER = "Xq7Marker"


def visit(n: int, kind: str = "", extra: str = "") -> str:
    return (f"RD: Good morning Mrs {MARKER}vich, visit {n}, your INR is 4.{n}. {kind} "
            f"Patient: {MARKER} ate kale every day. {extra}").strip()


TOO_LONG = visit(9, extra=f"{MARKER} kale " * 6000)


def pieces(text: str) -> list[str]:
    flat = " ".join(text.split())
    return [MARKER, *(flat[i:i + 12] for i in range(0, min(len(flat), 400) - 11, 5))]


@pytest.fixture
def logs(caplog, monkeypatch):
    """Every record of the `hcp` logger, DEBUG included (the CLI sets WARNING, or INFO with -v)."""
    setup = hcp.cli.setup_logging

    def debug_logging(verbose: bool) -> None:
        setup(verbose)
        logging.getLogger("hcp").setLevel(logging.DEBUG)

    monkeypatch.setattr(hcp.cli, "setup_logging", debug_logging)
    caplog.set_level(logging.DEBUG, logger="hcp")
    return caplog


@pytest.fixture
def quoting(monkeypatch, tmp_path):
    """use(*kinds): every backend the CLI opens is a QuotingBackend; the cwd is tmp_path."""
    monkeypatch.chdir(tmp_path)

    def install(*kinds: str) -> QuotingBackend:
        backend = QuotingBackend(*kinds)
        monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *args, **kwargs: backend)
        return backend

    return install


def assert_private(transcripts: list[str], logs, *outputs: str) -> None:  # noqa: ANN001
    said = "\n".join([*(r.getMessage() for r in logs.records), *outputs])
    for transcript in transcripts:
        for piece in pieces(transcript):
            assert piece not in said, f"transcript text {piece!r} in a log line or message"


@pytest.mark.parametrize("kinds, code", [
    (("valid",), 0),
    (("extra_key", "valid"), 0),
    (("out_of_range",), 1),
    (("extra_key",), 1),
    (("cut",), 1),
    (("extra_key", "cut", "out_of_range"), 1),
])
def test_score(quoting, logs, tmp_path, monkeypatch, kinds, code):
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))  # where hcp score keeps invalid answers: hcp's state folder
    backend = quoting(*kinds)
    result = CliRunner().invoke(cli, ["-v", "score", visit(1), "--json"])
    assert result.exit_code == code, result.output
    assert len(backend.calls) == (1 if kinds == ("valid",) else 2 if code == 0 else 3)
    assert any(r.name == "hcp.scoring.score" for r in logs.records)  # it did log what it did
    if code == 0:
        assert MARKER in json.loads(result.stdout)["rating"]["reasoning"]  # the rating is the user's output
    else:
        (saved,) = (tmp_path / "hcp").glob("hcp-invalid-output-*.json")
        assert saved.name in result.stderr and MARKER in saved.read_text()  # kept for the user, not shown
    assert_private([visit(1)], logs, result.stderr)


def test_score_too_long(quoting, logs):
    backend = quoting("valid")
    result = CliRunner().invoke(cli, ["-v", "score", TOO_LONG])
    assert result.exit_code == 1 and "transcript too long for the context" in result.stderr
    assert backend.calls == []
    assert_private([TOO_LONG], logs, result.stderr, result.stdout)


def test_batch(quoting, logs, tmp_path):
    transcripts = [visit(1), visit(2, "#extra_key"), visit(3, "#out_of_range"), visit(4, "#cut"), TOO_LONG]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"v{n}", "transcript": t}) + "\n"
                                               for n, t in enumerate(transcripts)))
    quoting("valid")
    result = CliRunner().invoke(cli, ["-v", "batch", "in.jsonl", "--out", "out.jsonl", "--format", "csv"])
    assert result.exit_code == EXIT_SOME_FAILED, result.output
    records = {r["id"]: r for r in map(json.loads, (tmp_path / "out.jsonl").read_text().splitlines())}
    assert [records[f"v{n}"]["status"] for n in range(5)] == ["ok", "failed", "failed", "failed", "failed"]
    assert [records[f"v{n}"].get("error") for n in range(1, 5)] == ["invalid_output"] * 3 + ["too_long"]
    assert MARKER in records["v0"]["rating"]["reasoning"]  # the rating itself is output
    reasons = [r["reason"] for r in records.values() if r["status"] == "failed"]
    assert_private(transcripts, logs, result.stderr, *reasons)


def test_evaluate(quoting, logs, tmp_path):
    transcripts = [visit(1), visit(2, "#extra_key"), visit(3), TOO_LONG]
    labels = {"empathy": 3, "clarity": 4, "accuracy": 3, "professionalism": 4}
    (tmp_path / "labelled.jsonl").write_text("".join(json.dumps({"id": f"v{n}", "transcript": t, **labels}) + "\n"
                                                     for n, t in enumerate(transcripts)))
    quoting("valid")
    result = CliRunner().invoke(cli, ["-v", "evaluate", "--data", "labelled.jsonl", "--report", "report"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "report" / "metrics.json").read_text())
    assert (metrics["raters"]["model"]["n"], metrics["raters"]["model"]["missing"]) == (2, 2)
    assert_private(transcripts, logs, result.stderr, json.dumps(metrics["notes"]))
