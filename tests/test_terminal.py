"""The terminal report (hcp/terminal.py): model-written and user text is shown as it is, never as Rich markup
(a `[/x]` in a reasoning once crashed `hcp score` after the rating was made, and `[bold]` vanished)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from tests.fakes import GOOD_ANSWER, FakeBackend

# Each would be eaten, styled or refused by Rich's markup or emoji codes.
TRICKY = ("[/x]", "[bold]kept[/bold]", "[link=http://e.x]y[/link]", ":pill:", "[red]")


@pytest.fixture
def use(monkeypatch):
    def install(backend: FakeBackend) -> FakeBackend:
        monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *args, **kwargs: backend)
        return backend

    return install


def test_score_prints_reasoning_and_lists_as_written(use):
    answer = {**GOOD_ANSWER, "reasoning": "Said " + " ".join(TRICKY),
              "strengths": ["[bold]kept[/bold]", "[/x]"], "areas_for_improvement": [":pill: [red]"]}
    use(FakeBackend(answer, model="m[/x]"))
    result = CliRunner().invoke(cli, ["score", "RD: Hi. Patient: Hello."], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    for text in (answer["reasoning"], "+ [bold]kept[/bold]", "+ [/x]", "- :pill: [red]", "m[/x]"):
        assert text in result.stdout


def test_batch_summary_shows_bracketed_paths_and_ids(use, tmp_path):
    folder = tmp_path / "[bold]kept[" / "bold] [" / "x]"  # a path that reads '[bold]kept[/bold] [/x]'
    folder.mkdir(parents=True)
    inp = folder / "in.jsonl"
    inp.write_text(json.dumps({"id": "[/x]", "transcript": "RD: Hi. Patient: Hello."}) + "\n")
    use(FakeBackend({**GOOD_ANSWER, "reasoning": "[/x]"}))
    result = CliRunner().invoke(cli, ["batch", str(inp), "--out", str(folder / "out.csv")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())  # the table may wrap a long path
    assert "[bold]kept[/bold] [/x]" in flat


def test_data_summary_shows_a_bracketed_file_name(tmp_path):
    (tmp_path / "[").mkdir()
    path = tmp_path / "[" / "x] [bold]kept[red].jsonl"  # a path that reads '[/x] [bold]kept[red].jsonl'
    CliRunner().invoke(cli, ["data", "sample", "--n", "5", "--out", str(path)], catch_exceptions=False)
    result = CliRunner().invoke(cli, ["data", "validate", str(path)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "[/x] [bold]kept[red].jsonl: 5 records" in " ".join(result.stdout.split())  # it may wrap


def test_evaluation_tables_show_a_bracketed_model_name(use, tmp_path):
    from hcp.data.sample import generate_samples

    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"id": f"[/x]{n}", **s}) + "\n"
                            for n, s in enumerate(generate_samples(4, seed=1))))
    use(FakeBackend(GOOD_ANSWER, model="[bold]kept[/bold][/x]"))
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(data), "--report", str(tmp_path / "r")],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert "model: [bold]kept[/bold][/x]" in result.stdout


def test_score_shows_each_quote_under_its_dimension_with_its_status(use):
    transcript = "RD: I can hear how [bold]hard[/bold] this has been. Patient: It has :pill:."
    answer = {**GOOD_ANSWER, "empathy_evidence": ["RD: I can hear how [bold]hard[/bold] this has been"],
              "clarity_evidence": ["RD: [/x] take two tablets"]}
    use(FakeBackend(answer))
    result = CliRunner().invoke(cli, ["score", transcript], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.stdout.splitlines()
    start = out.index("Evidence (quotes checked against the transcript):")
    section = out[start:]
    assert section[1] == "  empathy:"
    assert section[2] == "    [verified line 1] RD: I can hear how [bold]hard[/bold] this has been"
    assert section[3] == "  clarity:"
    assert section[4] == "    [NOT VERIFIED: not in the transcript] RD: [/x] take two tablets"
    assert sum("[verified" in line for line in section) == 1  # the unverified quote is never shown as verified


def test_score_json_carries_each_quote_and_its_status(use):
    use(FakeBackend({**GOOD_ANSWER, "empathy_evidence": ["RD: how are you feeling today"]}))
    result = CliRunner().invoke(cli, ["score", "RD: Hello, how are you feeling today? Patient: Tired.", "--json"],
                                catch_exceptions=False)
    payload = json.loads(result.stdout)
    assert payload["evidence"]["empathy"] == [{"speaker": "RD", "quote": "how are you feeling today",
                                               "verified": True, "problem": None, "line": 1}]
    assert payload["evidence"]["clarity"][0]["verified"] is False
    assert payload["evidence_verified"] is False
    assert payload["rating"]["empathy_evidence"] == ["RD: how are you feeling today"]


def test_strict_evidence_on_the_command_line_fails_a_rating_with_an_unverified_quote(use, tmp_path):
    backend = use(FakeBackend(GOOD_ANSWER))  # FAKE_EVIDENCE is not in this transcript
    args = ["score", "RD: Hello, how are you feeling today? Patient: Tired."]
    result = CliRunner().invoke(cli, [*args, "--strict-evidence"])
    assert result.exit_code == 1 and len(backend.calls) == 3
    assert "quote not verified (not in the transcript)" in result.stderr
    assert "I understand how you feel" not in result.stderr
    config = tmp_path / "strict.yaml"
    config.write_text("scoring:\n  strict_evidence: true\n")
    assert CliRunner().invoke(cli, [*args, "--config", str(config)]).exit_code == 1  # the config key does the same


class TestModel(FakeBackend):
    """A model that is not a rater to trust, as the embedded default is (Backend.model_note)."""

    __test__ = False
    NOTE = "rated by a test model — not a rater"

    def model_note(self) -> str | None:
        return self.NOTE


def test_a_rating_by_a_test_model_says_so_in_the_table_the_json_and_batch_records(use, tmp_path):
    use(TestModel(GOOD_ANSWER))
    result = CliRunner().invoke(cli, ["score", "RD: Hi. Patient: Hello.", "--format", "both"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table, payload = result.stdout.split("\n{\n", 1)
    assert f"Note: {TestModel.NOTE}" in " ".join(table.split())
    assert json.loads("{\n" + payload)["model_note"] == TestModel.NOTE
    (tmp_path / "in.jsonl").write_text(json.dumps({"id": "a", "transcript": "RD: Hi. Patient: Hello."}) + "\n")
    result = CliRunner().invoke(cli, ["batch", str(tmp_path / "in.jsonl"), "--out", str(tmp_path / "out.jsonl")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "out.jsonl").read_text())["model_note"] == TestModel.NOTE


def test_a_rating_by_any_other_model_carries_no_note(use, tmp_path):
    use(FakeBackend(GOOD_ANSWER))
    result = CliRunner().invoke(cli, ["score", "RD: Hi. Patient: Hello.", "--format", "both"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    table, payload = result.stdout.split("\n{\n", 1)
    assert "Note:" not in table and json.loads("{\n" + payload)["model_note"] is None
