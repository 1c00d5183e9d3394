"""Reading and checking both data formats, with a table of malformed inputs."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from hcp.data.dataset import load_dataset, require_valid, split_examples, summarize, write_jsonl
from hcp.errors import DataError

TRANSCRIPT = ("RD: Hello, how are you feeling today? Patient: I'm struggling with my diet. "
              "RD: I understand this can be challenging. Let's work together.")
GOOD = {
    "transcript": TRANSCRIPT, "empathy": 4, "clarity": 4, "accuracy": 4, "professionalism": 5,
    "reasoning": "Acknowledges the struggle.", "strengths": ["Shows empathy", "Professional tone"],
    "areas_for_improvement": ["Ask specific questions"],
    "empathy_evidence": ["RD: I understand this can be challenging."], "clarity_evidence": ["RD: Let's work together."],
    "accuracy_evidence": ["Patient: I'm struggling with my diet."],
    "professionalism_evidence": ["RD: Hello, how are you feeling today?", "RD: Let's work together"],
}
EVIDENCE_KEYS = ("empathy_evidence", "clarity_evidence", "accuracy_evidence", "professionalism_evidence")


def jsonl(tmp_path, *records, name="d.jsonl"):
    path = tmp_path / name
    lines = [r if isinstance(r, str) else json.dumps(r) for r in records]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def variant(i: int, **change):
    record = {**GOOD, "transcript": TRANSCRIPT + f" Patient: Thanks ({i})."}
    record.update(change)
    return {k: v for k, v in record.items() if v is not DROP}


DROP = object()


def test_guide_example_is_valid(tmp_path, rubric):
    data = load_dataset(jsonl(tmp_path, GOOD), rubric)
    assert data.ok and len(data.examples) == 1
    example = data.examples[0]
    assert example.scores == {"empathy": 4, "clarity": 4, "accuracy": 4, "professionalism": 5}
    assert example.strengths == ["Shows empathy", "Professional tone"]


@pytest.mark.parametrize(
    "record, field, message, reason",
    [
        ('{"transcript": "RD: hi', None, "invalid JSON", "broken JSON"),
        ("[1, 2]", None, "expected a JSON object", "not an object"),
        (variant(1, empathy=DROP), "empathy", "missing", "score missing"),
        (variant(2, empathy=6), "empathy", "score 6 is outside 1..5", "score too high"),
        (variant(3, clarity=0), "clarity", "score 0 is outside 1..5", "score too low"),
        (variant(4, accuracy=3.5), "accuracy", "must be a whole number from 1 to 5, got 3.5", "fraction"),
        (variant(5, accuracy="4"), "accuracy", "must be a whole number", "string in JSON"),
        (variant(6, accuracy=True), "accuracy", "must be a whole number", "boolean"),
        (variant(7, transcript="   \n "), "transcript", "is empty", "whitespace only"),
        (variant(8, transcript=DROP), "transcript", "missing", "no transcript"),
        (variant(9, transcript=12), "transcript", "must be text", "number as transcript"),
        (variant(10, transcript="Hello there, I ate toast."), "transcript", "no speaker labels", "no labels"),
        (variant(11, reasoning=""), "reasoning", "missing or empty", "empty reasoning"),
        (variant(12, reasoning="x" * 1001), "reasoning", "1001 characters", "reasoning too long"),
        (variant(13, strengths=[]), "strengths", "0 items, expected 1 to 5", "no strengths"),
        (variant(14, strengths=["a"] * 6), "strengths", "6 items", "too many strengths"),
        (variant(15, strengths=[1, 2]), "strengths", "list of text", "numbers in list"),
        (variant(16, areas_for_improvement=["x" * 201]), "areas_for_improvement[0]", "201 characters", "long item"),
        (variant(17, mood="good"), "mood", "unknown field", "unknown field"),
        ("x" * 200_001, None, "over the limit", "line too long"),
        (variant(18, empathy_evidence=DROP), "empathy_evidence", "missing — give the transcript lines", "no quotes"),
        (variant(19, **dict.fromkeys(EVIDENCE_KEYS, DROP)), "empathy_evidence",
         "missing (as are clarity_evidence, accuracy_evidence, professionalism_evidence) — scoring.evidence asks "
         "for the transcript lines each score rests on: add them as lists of 'Speaker: words' (in CSV joined with "
         "';'), or set scoring.evidence: false in your config to train without them", "data from before evidence"),
        (variant(20, clarity_evidence=[]), "clarity_evidence", "0 quotes, expected 1 to 3", "an empty list"),
        (variant(21, clarity_evidence=["RD: Let's work together."] * 4), "clarity_evidence", "4 quotes",
         "too many quotes"),
        (variant(22, clarity_evidence=[3]), "clarity_evidence", "must be a list of quotes", "a number"),
        (variant(23, accuracy_evidence=["RD: I never said this at all"]), "accuracy_evidence[0]",
         "not in the transcript — copy the words of one turn", "an invented quote"),
        (variant(24, accuracy_evidence=["Patient: I understand this can be challenging"]), "accuracy_evidence[0]",
         "said by another speaker", "the right words, the wrong speaker"),
        (variant(25, accuracy_evidence=["RD: " + "x" * 200]), "accuracy_evidence[0]", "204 characters",
         "a quote too long"),
        (variant(26, accuracy_evidence=["I understand this can be challenging"]), "accuracy_evidence[0]",
         "no speaker given", "no speaker"),
    ],
)
def test_malformed_jsonl(tmp_path, rubric, record, field, message, reason):
    path = jsonl(tmp_path, GOOD, record)
    data = load_dataset(path, rubric)
    assert len(data.examples) == 1, reason  # the good line still counts
    assert len(data.problems) >= 1, reason
    problem = data.problems[0]
    assert (problem.file, problem.line, problem.field) == (str(path), 2, field), reason
    assert message in problem.message, (reason, problem.message)
    assert TRANSCRIPT not in str(problem)


def test_duplicate_transcript_names_the_first_line(tmp_path, rubric):
    spaced = {**GOOD, "transcript": "  " + TRANSCRIPT.replace(" ", "  ")}
    data = load_dataset(jsonl(tmp_path, GOOD, variant(1), spaced), rubric)
    assert [str(p).split(": ", 1)[1] for p in data.problems] == ["transcript: duplicate of the transcript on line 1"]


def test_blank_lines_and_bom(tmp_path, rubric):
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n\r\n" + json.dumps(variant(1)).encode())
    data = load_dataset(path, rubric)
    assert data.ok and [e.line for e in data.examples] == [1, 4]


def test_invalid_utf8_and_binary(tmp_path, rubric):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(GOOD).encode() + b"\n{\"transcript\": \"\xff\xfe\"}\n")
    with pytest.raises(DataError, match=r"bad.jsonl:2: invalid UTF-8"):
        load_dataset(bad, rubric)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\x00\x01\x02" * 10)
    with pytest.raises(DataError, match="binary"):
        load_dataset(binary, rubric)


@pytest.mark.parametrize("name, message", [("x.txt", "unknown data format"), ("missing.jsonl", "file not found")])
def test_unreadable_paths(tmp_path, rubric, name, message):
    if name.endswith(".txt"):
        (tmp_path / name).write_text("hi")
    with pytest.raises(DataError, match=message):
        load_dataset(tmp_path / name, rubric)


def write_csv(tmp_path, rows, header=None, name="d.csv"):
    path = tmp_path / name
    header = header or list(GOOD)
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(header)
        for row in rows:
            writer.writerow(row)
    return path


def csv_row(record):
    return [";".join(v) if isinstance(v, list) else v for v in record.values()]


def test_csv_with_quotes_commas_newlines(tmp_path, rubric):
    multi = {**GOOD, "transcript": 'RD: Hi, "Ann".\nPatient: Hello,\nI eat, well, "a lot".',
             **dict.fromkeys(EVIDENCE_KEYS, ['Patient: Hello, I eat, well, "a lot"'])}  # a turn on two lines
    path = write_csv(tmp_path, [csv_row(GOOD), csv_row(multi)])
    data = load_dataset(path, rubric)
    assert data.ok, data.problems
    assert [e.line for e in data.examples] == [2, 3]  # the second record starts on line 3, spans 3 lines
    assert data.examples[1].transcript == multi["transcript"]
    assert data.examples[0].strengths == ["Shows empathy", "Professional tone"]


@pytest.mark.parametrize(
    "change, field, message",
    [
        ({"empathy": "four"}, "empathy", "must be a whole number"),
        ({"empathy": "4.5"}, "empathy", "got 4.5"),
        ({"clarity": ""}, "clarity", "missing"),
        ({"professionalism": "9"}, "professionalism", "outside 1..5"),
        ({"strengths": " ; "}, "strengths", "0 items"),
    ],
)
def test_malformed_csv(tmp_path, rubric, change, field, message):
    multi_line_first = {**GOOD, "transcript": "RD: Hi.\nPatient: Hello.\nRD: Bye.",
                        **dict.fromkeys(EVIDENCE_KEYS, ["Patient: Hello."])}
    path = write_csv(tmp_path, [csv_row(multi_line_first), csv_row({**variant(1), **change})])
    data = load_dataset(path, rubric)
    assert len(data.examples) == 1
    problem = data.problems[0]
    assert (problem.line, problem.field) == (5, field)  # header, then a 3-line record
    assert message in problem.message


def test_csv_row_with_too_many_cells(tmp_path, rubric):
    path = write_csv(tmp_path, [csv_row(GOOD), csv_row(variant(1)) + ["extra"]])
    data = load_dataset(path, rubric)
    assert data.problems[0].line == 3 and "quote fields that contain commas" in data.problems[0].message


def test_unlabelled_rows_for_batch(tmp_path, rubric):
    path = jsonl(tmp_path, {"id": "a", "transcript": TRANSCRIPT}, {"id": 7, "transcript": TRANSCRIPT + " RD: ok"})
    data = load_dataset(path, rubric, labels="optional")
    assert data.ok and [e.id for e in data.examples] == ["a", "7"] and not data.examples[0].labelled


def test_summary_counts(tmp_path, rubric):
    data = load_dataset(jsonl(tmp_path, GOOD, variant(1, empathy=2), variant(2, empathy=9)), rubric)
    summary = summarize(data, rubric)
    assert (summary["records"], summary["valid"], summary["invalid_records"]) == (3, 2, 1)
    assert summary["distribution"]["empathy"] == {1: 0, 2: 1, 3: 0, 4: 1, 5: 0}
    assert summary["words"]["min"] > 10


def test_require_valid_lists_problems(tmp_path, rubric):
    with pytest.raises(DataError, match=r"1 problem\(s\) in the data: .*d.jsonl:2: empathy"):
        require_valid(load_dataset(jsonl(tmp_path, GOOD, variant(1, empathy=0)), rubric))
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        require_valid(load_dataset(empty, rubric))


def test_split_is_stratified_and_deterministic(tmp_path, rubric):
    from hcp.data.sample import generate_samples

    path = write_jsonl(tmp_path / "s.jsonl", generate_samples(100, seed=3))
    examples = require_valid(load_dataset(path, rubric))
    train, val = split_examples(examples, rubric, 0.2, seed=1)
    assert (len(train), len(val)) == (80, 20)
    assert {e.line for e in train}.isdisjoint({e.line for e in val})
    again = split_examples(examples, rubric, 0.2, seed=1)
    assert [e.line for e in again[1]] == [e.line for e in val]
    assert [e.line for e in split_examples(examples, rubric, 0.2, seed=2)[1]] != [e.line for e in val]
    classes = lambda xs: {round(rubric.overall(e.rating())) for e in xs}  # noqa: E731
    assert classes(val) <= classes(train)
    assert len(classes(val)) >= 3


def test_data_without_evidence_trains_with_evidence_off(tmp_path):
    from hcp.config import load_config
    from hcp.rubric import Rubric

    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  evidence: false\n")
    rubric = Rubric.from_config(load_config(config))
    old = {k: v for k, v in GOOD.items() if k not in EVIDENCE_KEYS}
    data = load_dataset(jsonl(tmp_path, old, {**GOOD, "transcript": TRANSCRIPT + " RD: Bye."}), rubric)
    assert data.ok, data.problems
    assert [rubric.validate_json(rubric.answer_text(e.rating())).model_dump() for e in data.examples] == [
        {k: v for k, v in old.items() if k != "transcript"}] * 2  # quotes a record has are left out


def test_validate_names_the_missing_evidence_and_the_fix_in_one_line(tmp_path):
    from click.testing import CliRunner

    from hcp.cli import cli

    path = jsonl(tmp_path, {k: v for k, v in GOOD.items() if k not in EVIDENCE_KEYS})
    result = CliRunner().invoke(cli, ["data", "validate", str(path)])
    assert result.exit_code == 1
    (line,) = [x for x in result.output.splitlines() if "_evidence" in x]
    assert line == f"error: {path}:1: empathy_evidence: missing (as are " + line.split("(as are ", 1)[1]
    assert "scoring.evidence: false" in line


def test_write_jsonl_round_trips(tmp_path, rubric):
    path = write_jsonl(tmp_path / "sub" / "out.jsonl", [GOOD, variant(1)])
    assert [e.to_record() for e in load_dataset(path, rubric).examples][0] == GOOD
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


# --- CSV lists, writing by suffix, splits that copy records, ids ------------------------------------------


SAMPLE_DATA = Path(__file__).resolve().parent.parent / "data" / "sample_training_data.jsonl"


def test_every_sample_record_survives_a_csv_round_trip(tmp_path, rubric):
    """Written as CSV by hcp and read back, each record of the shipped sample gives the same training target,
    including the quotes of turns that hold ';' (which the guide's ';'-joined form cannot keep)."""
    from hcp.data.dataset import write_records

    examples = require_valid(load_dataset(SAMPLE_DATA, rubric))
    assert any(";" in q for e in examples for qs in e.evidence.values() for q in qs)  # the case that matters
    back = load_dataset(write_records(tmp_path / "sample.csv", (e.to_record() for e in examples)), rubric)
    assert back.problems == [] and len(back.examples) == len(examples) == 200
    for before, after in zip(examples, back.examples, strict=True):
        assert (after.id, after.transcript, after.rating()) == (before.id, before.transcript, before.rating())
    assert (tmp_path / "sample.csv").stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize("cell, expected, reason", [
    ('["Shows empathy; warmth", "Professional tone"]', ["Shows empathy; warmth", "Professional tone"],
     "a JSON array keeps an item that holds ';'"),
    ("Shows empathy; Professional tone", ["Shows empathy", "Professional tone"], "the guide's simple form"),
    ("[sic] a plan; Professional tone", ["[sic] a plan", "Professional tone"], "a '[' that opens no array"),
])
def test_csv_list_cells_as_json_arrays_or_joined_with_semicolons(tmp_path, rubric, cell, expected, reason):
    row = csv_row({**GOOD, "strengths": cell})
    data = load_dataset(write_csv(tmp_path, [row]), rubric)
    assert data.ok, (reason, data.problems)
    assert data.examples[0].strengths == [" ".join(x.split()) for x in expected], reason


def test_csv_quotes_joined_with_semicolons_keep_a_semicolon_inside_a_turn(tmp_path, rubric):
    said = "RD: I understand this can be challenging; let's work together."
    record = {**GOOD, "transcript": TRANSCRIPT.replace("challenging. Let's", "challenging; let's"),
              "empathy_evidence": [said, "Patient: I'm struggling with my diet."]}
    data = load_dataset(write_csv(tmp_path, [csv_row(record)]), rubric)  # cells joined with ';', as in the guide
    assert data.ok, data.problems
    assert data.examples[0].evidence["empathy"] == [said, "Patient: I'm struggling with my diet."]


@pytest.mark.parametrize("cell, field, message", [
    ('["a", 3]', "strengths", "starts and ends like a JSON array but is not an array of texts"),
    ('["a", "b",]', "strengths", """write it as a JSON array such as ["a; b", "c"], or join the items with ';'"""),
    ("a;b;c;d;e;f", "strengths", "6 items, expected 1 to 5 — if an item holds ';', write the cell as a JSON array"),
])
def test_a_csv_list_cell_that_cannot_be_read_says_how_to_write_it(tmp_path, rubric, cell, field, message):
    data = load_dataset(write_csv(tmp_path, [csv_row({**GOOD, field: cell})]), rubric)
    (problem,) = data.problems
    assert (problem.line, problem.field) == (2, field) and message in problem.message, problem.message


def test_data_sample_writes_the_format_its_suffix_names(tmp_path, rubric):
    from click.testing import CliRunner

    from hcp.cli import cli

    runner = CliRunner()
    for name in ("s.csv", "s.jsonl"):
        result = runner.invoke(cli, ["data", "sample", "--n", "6", "--seed", "3", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    text = (tmp_path / "s.csv").read_text(encoding="utf-8")
    assert next(csv.reader([text.splitlines()[0]]))[0] == "transcript"  # a CSV header, not a JSON line
    as_csv, as_jsonl = (load_dataset(tmp_path / n, rubric) for n in ("s.csv", "s.jsonl"))
    assert as_csv.ok and [e.rating() for e in as_csv.examples] == [e.rating() for e in as_jsonl.examples]
    refused = runner.invoke(cli, ["data", "sample", "--n", "2", "--out", str(tmp_path / "s.txt")])
    assert refused.exit_code == 1 and not (tmp_path / "s.txt").exists()
    assert refused.output.splitlines() == [f"Error: {tmp_path / 's.txt'}: unknown data format '.txt' — use a .jsonl "
                                           "or .csv file"]


def _split(tmp_path, *args):
    from click.testing import CliRunner

    from hcp.cli import cli

    return CliRunner().invoke(cli, ["data", "split", *map(str, args)])


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_splitting_writes_the_records_as_read_whatever_the_config(tmp_path):
    """With scoring.evidence off the quotes are not trained on, but a split still copies them, untouched."""
    config = tmp_path / "c.yaml"
    config.write_text("scoring:\n  evidence: false\n")
    records = [{**variant(i), "id": i, "reasoning": f"Acknowledges  the struggle ({i})."} for i in range(10)]
    result = _split(tmp_path, jsonl(tmp_path, *records), "--config", config, "--val-fraction", 0.2)
    assert result.exit_code == 0, result.output
    written = _lines(tmp_path / "d.train.jsonl") + _lines(tmp_path / "d.val.jsonl")
    assert sorted(written, key=lambda r: r["id"]) == records
    from hcp.data.dataset import write_records  # a CSV file: its rows in JSON's types, the quotes kept

    as_csv = write_records(tmp_path / "c.csv", [{**r, "id": str(r["id"])} for r in records])
    assert _split(tmp_path, as_csv, "--config", config, "--val-fraction", 0.2).exit_code == 0
    written = _lines(tmp_path / "c.train.jsonl") + _lines(tmp_path / "c.val.jsonl")
    assert sorted(written, key=lambda r: int(r["id"])) == [{**r, "id": str(r["id"])} for r in records]


def test_split_sets_a_stratified_test_set_aside(tmp_path, rubric):
    from hcp.data.sample import generate_samples

    path = write_jsonl(tmp_path / "s.jsonl", generate_samples(100, seed=3))
    result = _split(tmp_path, path, "--val-fraction", 0.1, "--test-fraction", 0.2, "--seed", 1)
    assert result.exit_code == 0, result.output
    parts = {name: load_dataset(tmp_path / f"s.{name}.jsonl", rubric).examples for name in ("train", "val", "test")}
    assert {k: len(v) for k, v in parts.items()} == {"train": 70, "val": 10, "test": 20}
    keys = {k: {e.transcript for e in v} for k, v in parts.items()}
    assert not (keys["train"] & keys["val"] or keys["train"] & keys["test"] or keys["val"] & keys["test"])
    classes = lambda xs: {round(rubric.overall(e.rating())) for e in xs}  # noqa: E731
    assert classes(parts["test"]) <= classes(parts["train"]) and len(classes(parts["test"])) >= 3
    assert "20 test examples" in result.output
    again = _split(tmp_path, path, "--val", 0.1, "--test", 0.2, "--seed", 1)  # the short and old spellings
    assert again.exit_code == 0 and {e.transcript for e in load_dataset(tmp_path / "s.test.jsonl", rubric).examples} \
        == keys["test"]


@pytest.mark.parametrize("args, message", [
    (["--val-fraction", "0.5", "--test-fraction", "0.5"], "leave nothing to train on"),
    (["--val-fraction", "0.2", "--val", "0.3"], "give --val-fraction once"),
])
def test_split_errors_are_one_line(tmp_path, args, message):
    path = jsonl(tmp_path, *(variant(i) for i in range(10)))
    result = _split(tmp_path, path, *args)
    assert result.exit_code != 0 and message in result.output and "Traceback" not in result.output


def test_validate_refuses_one_id_on_two_transcripts(tmp_path):
    from click.testing import CliRunner

    from hcp.cli import cli

    path = jsonl(tmp_path, {**GOOD, "id": "visit-1"}, {**variant(1), "id": 7}, {**variant(2), "id": " visit-1"})
    result = CliRunner().invoke(cli, ["data", "validate", str(path)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert errors == [f"error: {path}:3: id: 'visit-1' is already the id of line 1, another transcript — give every "
                      "record its own id (hcp batch and hcp evaluate match ratings to records by id)"]
