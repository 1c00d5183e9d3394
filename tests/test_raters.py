"""Agreement between annotators and consensus labels: the maths against worked and independent values, and
`hcp data agreement` / `hcp data consensus` end to end on real files, every user mistake one line."""

from __future__ import annotations

import json
import stat

import numpy as np
import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.data.dataset import load_dataset, require_valid
from hcp.data.sample import generate_samples
from hcp.raters.agreement import alpha_interval, alpha_ordinal, coincidences, measure, resample_weights
from hcp.raters.annotations import read_annotations
from hcp.raters.consensus import median_score

DIMS = ("empathy", "clarity", "accuracy", "professionalism")
LEVELS = (1, 2, 3, 4, 5)


@pytest.fixture(scope="module")
def samples():
    return generate_samples(10, 5)


@pytest.fixture
def runner():
    return CliRunner()


def write(path, records):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def scored(records, change):
    """Copies of the records with each dimension's score replaced by change(dimension, score, index)."""
    return [{**r, **{d: change(d, r[d], i) for d in DIMS}} for i, r in enumerate(records)]


def capped(samples):
    """The samples with every score at most 4, so that one more point never clips."""
    return scored(samples, lambda d, s, i: min(s, 4))


def transcript_snippets(records):
    """Pieces of every transcript's text that no message or report may hold."""
    return [line.split(":", 1)[1].strip()[:30] for r in records for line in r["transcript"].splitlines()[:3]
            if ":" in line and len(line.split(":", 1)[1].strip()) >= 20]


def no_transcript_text(text, records):
    return not [s for s in transcript_snippets(records) if s in text]


# --- the maths ----------------------------------------------------------------------------------------------

# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", example C: 4 coders, 12 units, values 1-5,
# missing values. Published: ordinal alpha 0.815, interval alpha 0.849.
KRIPPENDORFF_C = np.array([
    [1, 2, 3, 3, 2, 1, 4, 1, 2, np.nan, np.nan, np.nan],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, np.nan, 3],
    [np.nan, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, np.nan],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, np.nan],
]).T  # (units, coders)


def alphas(table, weights=None):
    """(ordinal, interval) alpha of a (units, annotators) table, on the units two or more rated."""
    table = table[np.sum(~np.isnan(table), axis=1) >= 2]
    weights = np.ones((1, len(table))) if weights is None else weights
    return alpha_ordinal(weights, coincidences(table, LEVELS), len(LEVELS))[0], alpha_interval(weights, table)[0]


def test_alpha_matches_krippendorffs_published_example():
    ordinal, interval = alphas(KRIPPENDORFF_C)
    assert round(ordinal, 3) == 0.815
    assert round(interval, 3) == 0.849


def test_alpha_equals_the_krippendorff_package_on_random_tables():
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    for _ in range(40):
        units, coders = rng.integers(3, 30), rng.integers(2, 5)
        table = rng.integers(1, 6, size=(units, coders)).astype(float)
        table[rng.random(table.shape) < 0.2] = np.nan
        table = table[np.sum(~np.isnan(table), axis=1) >= 2]
        if len(table) < 2 or np.unique(table[~np.isnan(table)]).size < 2:
            continue
        ordinal, interval = alphas(table)
        assert ordinal == pytest.approx(krippendorff.alpha(table.T, level_of_measurement="ordinal",
                                                           value_domain=list(LEVELS)), abs=1e-9)
        assert interval == pytest.approx(krippendorff.alpha(table.T, level_of_measurement="interval"), abs=1e-9)


def test_a_resample_is_the_table_with_its_transcripts_repeated():
    """A row of bootstrap weights gives the alpha of the table whose transcripts are drawn that many times."""
    pairable = KRIPPENDORFF_C[:11]  # the twelfth unit has one value
    weights = resample_weights(len(pairable), 5, seed=1)
    assert (weights[0] == 1).all() and (weights[1:].sum(axis=1) == len(pairable)).all()
    assert len({tuple(row) for row in weights[1:]}) == 5
    for row in weights[1:]:
        repeated = np.repeat(pairable, row.astype(int), axis=0)
        assert alphas(pairable, row[None]) == pytest.approx(alphas(repeated))


@pytest.mark.parametrize("scores, median, why", [
    ([3], 3, "one score"),
    ([2, 4, 3], 3, "odd count: the middle one"),
    ([3, 4], 3, "two middle scores differ: the lower"),
    ([2, 3, 4, 5], 3, "even count: the lower of the two middle"),
    ([4, 4], 4, "two equal middle scores"),
    ([5, 1, 5, 5], 5, "the middle two agree"),
])
def test_median_and_its_tie_rule(scores, median, why):
    assert median_score(scores) == median, why


def test_perfect_agreement(samples, tmp_path, rubric):
    files = [write(tmp_path / f"{name}.jsonl", samples) for name in ("alice", "bob", "carol")]
    metrics = measure(read_annotations(files, rubric), rubric, resamples=200)
    for name, d in metrics["dimensions"].items():
        for measure_name in ("alpha", "qwk", "exact", "within_one"):
            assert d[measure_name]["value"] == pytest.approx(1.0), (name, measure_name)
            assert d[measure_name]["ci_low"] == pytest.approx(1.0)
        assert d["n"] == len(samples)
    assert all(o[n]["value"] == 0 for o in metrics["offsets"].values() for n in metrics["dimensions"])
    assert metrics["adjudicate"] == [] and metrics["single"] == 0


def test_a_biased_annotator_is_found_with_an_offset_of_one(samples, tmp_path, rubric):
    base = capped(samples)
    files = [write(tmp_path / "faithful.jsonl", base), write(tmp_path / "other.jsonl", base),
             write(tmp_path / "biased.jsonl", scored(base, lambda d, s, i: s + 1))]
    metrics = measure(read_annotations(files, rubric), rubric, resamples=200)
    assert metrics["largest_offset"] == {"annotator": "biased", "overall": pytest.approx(1.0)}
    for name in (*DIMS, "overall"):
        assert metrics["offsets"]["biased"][name]["value"] == pytest.approx(1.0)
        assert metrics["offsets"]["faithful"][name]["value"] == pytest.approx(-0.5)
    assert metrics["pairs"]["faithful–other"]["empathy"]["value"] == pytest.approx(1.0)
    assert metrics["pairs"]["faithful–biased"]["empathy"]["value"] < 1
    assert metrics["dimensions"]["empathy"]["within_one"]["value"] == pytest.approx(1.0)
    assert metrics["dimensions"]["empathy"]["exact"]["value"] == pytest.approx(1 / 3)  # one pair of three agrees


def test_agreement_figures_against_an_independent_computation(samples, tmp_path, rubric):
    """Exact and within-one agreement and pairwise kappa on noisy annotators, against the definitions written as
    loops; the intervals hold the value and come again with the same seed."""
    rng = np.random.default_rng(3)
    base = capped(generate_samples(40, 9))
    noisy = [scored(base, lambda d, s, i: int(np.clip(s + rng.integers(-2, 3), 1, 5))) for _ in range(3)]
    files = [write(tmp_path / f"a{k}.jsonl", records) for k, records in enumerate(noisy)]
    metrics = measure(read_annotations(files, rubric), rubric, resamples=300, seed=5)
    scores = np.array([[[r[d] for d in DIMS] for r in records] for records in noisy])  # (annotators, n, dims)
    for j, name in enumerate(DIMS):
        pairs = [(a, b) for a in range(3) for b in range(a + 1, 3)]
        same = [scores[a, i, j] == scores[b, i, j] for a, b in pairs for i in range(len(base))]
        near = [abs(scores[a, i, j] - scores[b, i, j]) <= 1 for a, b in pairs for i in range(len(base))]
        d = metrics["dimensions"][name]
        assert d["exact"]["value"] == pytest.approx(np.mean(same))
        assert d["within_one"]["value"] == pytest.approx(np.mean(near))
        kappas = [quadratic_kappa(scores[a, :, j], scores[b, :, j]) for a, b in pairs]
        assert d["qwk"]["value"] == pytest.approx(np.mean(kappas))
        for measure_name in ("alpha", "qwk", "exact", "within_one"):
            assert d[measure_name]["ci_low"] <= d[measure_name]["value"] <= d[measure_name]["ci_high"]
    again = measure(read_annotations(files, rubric), rubric, resamples=300, seed=5)
    other = measure(read_annotations(files, rubric), rubric, resamples=300, seed=6)
    assert again == metrics
    assert other["dimensions"]["empathy"]["alpha"]["ci_low"] != metrics["dimensions"]["empathy"]["alpha"]["ci_low"]


def quadratic_kappa(a, b):
    """Cohen's kappa with quadratic weights, from its definition."""
    k = len(LEVELS)
    observed = np.zeros((k, k))
    for x, y in zip(a, b, strict=True):
        observed[x - 1, y - 1] += 1
    expected = np.outer(observed.sum(axis=1), observed.sum(axis=0)) / len(a)
    w = np.array([[(i - j) ** 2 for j in range(k)] for i in range(k)])
    return 1 - (w * observed).sum() / (w * expected).sum()


# --- matching -------------------------------------------------------------------------------------------------


def test_records_are_matched_by_id_else_by_their_text(samples, tmp_path, rubric):
    from hcp.batch.inputs import content_id

    with_ids = [{"id": f"v{i}", **r} for i, r in enumerate(samples)]
    # bob gives no ids, another order and other line breaks: matched by the text, taking alice's ids
    bob = [{**r, "transcript": r["transcript"].replace("\n", "\n\n")} for r in [*reversed(samples[:6]), samples[9]]]
    carol = [{**r, "transcript": "  " + r["transcript"]} for r in samples[3:]]  # no ids either
    files = [write(tmp_path / "alice.jsonl", with_ids[:8]), write(tmp_path / "bob.jsonl", bob),
             write(tmp_path / "carol.jsonl", carol)]
    annotations = read_annotations(files, rubric)
    rated = {t.label: sorted(t.ratings) for t in annotations.transcripts}
    assert rated == {
        **{f"v{i}": ["alice", "bob"] for i in range(3)},
        **{f"v{i}": ["alice", "bob", "carol"] for i in range(3, 6)},
        **{f"v{i}": ["alice", "carol"] for i in range(6, 8)},
        f"sha256:{content_id(samples[9]['transcript'])}": ["bob", "carol"],  # no id anywhere: by its text
    }
    assert annotations.single == 1  # sample 8: carol's alone
    assert annotations.counts == {"alice": 8, "bob": 7, "carol": 7}


def test_one_file_with_an_annotator_field(samples, tmp_path, runner):
    records = [{"annotator": name, "id": f"v{i}", **r} for name in ("alice", "bob") for i, r in enumerate(samples)]
    records.append({"annotator": "alice", "id": "only-alice", **generate_samples(11, 5)[10]})
    path = write(tmp_path / "all.jsonl", records)
    result = runner.invoke(cli, ["data", "agreement", str(path)])
    assert result.exit_code == 0, result.output
    assert "alice, bob — 10 transcripts" in result.output
    assert "1 transcript(s) rated by one annotator only: left out" in result.output


def test_csv_and_jsonl_annotators_together(samples, tmp_path, runner):
    import csv

    path = tmp_path / "bob.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(samples[0]))
        writer.writeheader()
        for r in samples:
            writer.writerow({k: json.dumps(v) if isinstance(v, list) else v for k, v in r.items()})
    result = runner.invoke(cli, ["data", "agreement", str(write(tmp_path / "alice.jsonl", samples)), str(path)])
    assert result.exit_code == 0, result.output
    assert f"alice, bob — {len(samples)} transcripts" in result.output


# --- the commands ---------------------------------------------------------------------------------------------


def test_agreement_command_table_report_and_adjudication(samples, tmp_path, runner):
    base = capped(samples)
    files = [write(tmp_path / "alice.jsonl", [{"id": f"v{i}", **r} for i, r in enumerate(base)]),
             write(tmp_path / "bob.jsonl", scored(base, lambda d, s, i: s + 1)),  # no ids: matched by text
             write(tmp_path / "carol.jsonl", scored(base, lambda d, s, i: s - 1 if (d, i) == ("clarity", 2) else s))]
    report = tmp_path / "report"
    result = runner.invoke(cli, ["data", "agreement", *map(str, files), "--report", str(report), "--resamples", "200"])
    assert result.exit_code == 0, result.output
    assert "Agreement: alice, bob, carol" in result.output and "largest offset: bob" in result.output
    assert "To adjudicate: 1 transcript(s)" in result.output
    assert "v2: clarity: alice" in result.output  # bob is 2 above carol on transcript v2's clarity
    assert {p.name for p in report.iterdir()} == {"agreement.json", "agreement.md", "agreement.html",
                                                 "agreement.png", "offsets.png"}
    metrics = json.loads((report / "agreement.json").read_text())
    assert metrics["adjudicate"][0]["transcript"] == "v2"
    assert metrics["adjudicate"][0]["scores"]["bob"]["clarity"] - metrics["adjudicate"][0]["scores"]["carol"][
        "clarity"] == 2
    assert '<img src="agreement.png"' in (report / "agreement.html").read_text()
    assert "| clarity |" in (report / "agreement.md").read_text()
    for name in ("agreement.json", "agreement.md", "agreement.html"):
        assert stat.S_IMODE((report / name).stat().st_mode) == 0o600
        assert no_transcript_text((report / name).read_text(), samples)
    assert no_transcript_text(result.output, samples)


def test_an_id_less_transcript_to_adjudicate_is_named_by_digest(samples, tmp_path, runner):
    from hcp.batch.inputs import content_id

    files = [write(tmp_path / "alice.jsonl", samples[:3]),
             write(tmp_path / "bob.jsonl", scored(samples[:3], lambda d, s, i: 5 if s == 1 else 1 if s == 5 else s))]
    result = runner.invoke(cli, ["data", "agreement", *map(str, files), "--resamples", "100"])
    assert result.exit_code == 0, result.output
    disputed = [r for r in samples[:3] if 1 in (r[d] for d in DIMS) or 5 in (r[d] for d in DIMS)]
    assert disputed
    for record in disputed:
        assert f"sha256:{content_id(record['transcript'])}" in result.output
    assert no_transcript_text(result.output, samples)


def test_consensus_validates_and_trains(samples, tmp_path, runner, rubric):
    base = capped(samples)
    files = [write(tmp_path / "alice.jsonl", base), write(tmp_path / "bob.jsonl", scored(base, lambda d, s, i: s + 1)),
             write(tmp_path / "carol.jsonl", base)]
    out = tmp_path / "out" / "consensus.jsonl"
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(samples)} consensus records" in result.output and "0 disputed" in result.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    validated = runner.invoke(cli, ["data", "validate", str(out)])
    assert validated.exit_code == 0, validated.output
    examples = require_valid(load_dataset(out, rubric))  # what `hcp train` reads
    assert [e.scores for e in examples] == [{d: r[d] for d in DIMS} for r in base]  # the median: alice's and carol's
    for example, record in zip(examples, base, strict=True):
        assert example.reasoning == record["reasoning"]  # from the closest annotator
        rubric.validate_json(rubric.answer_text(example.rating()))  # the training target fits the schema


def test_consensus_as_csv_validates(samples, tmp_path, runner):
    files = [write(tmp_path / "alice.jsonl", samples), write(tmp_path / "bob.jsonl", samples)]
    out = tmp_path / "consensus.csv"
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["data", "validate", str(out)]).exit_code == 0


def test_a_tie_between_two_annotators_takes_the_lower_score(samples, tmp_path, runner, rubric):
    base = capped(samples)
    files = [write(tmp_path / "alice.jsonl", base), write(tmp_path / "bob.jsonl", scored(base, lambda d, s, i: s + 1))]
    out = tmp_path / "c.jsonl"
    assert runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out)]).exit_code == 0
    assert [e.scores for e in load_dataset(out, rubric).examples] == [{d: r[d] for d in DIMS} for r in base]
    files = [write(tmp_path / "x" / "alice.jsonl", scored(base, lambda d, s, i: s + 1)),
             write(tmp_path / "x" / "bob.jsonl", base)]  # the other order: the same rule
    assert runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out)]).exit_code == 0
    assert [e.scores for e in load_dataset(out, rubric).examples] == [{d: r[d] for d in DIMS} for r in base]


def test_disputed_transcripts_are_left_out_unless_kept(samples, tmp_path, runner, rubric):
    base = capped(samples)
    far = scored(base, lambda d, s, i: s + 2 if (d, i) in (("empathy", 0), ("accuracy", 3)) and s <= 3 else s)
    disputed = sum(1 for a, b in zip(base, far, strict=True) if a != b)
    assert disputed >= 1
    files = [write(tmp_path / "alice.jsonl", base), write(tmp_path / "bob.jsonl", far),
             write(tmp_path / "carol.jsonl", base)]
    out = tmp_path / "c.jsonl"
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(base) - disputed} consensus records" in result.output
    assert f"{disputed} disputed, left out" in result.output
    assert len(load_dataset(out, rubric).examples) == len(base) - disputed
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out), "--keep-disputed"])
    assert result.exit_code == 0, result.output
    assert f"wrote {len(base)} consensus records" in result.output and f"{disputed} disputed, kept" in result.output
    kept = load_dataset(out, rubric).examples
    assert [e.scores for e in kept] == [{d: r[d] for d in DIMS} for r in base]  # median of 3: alice's and carol's
    assert runner.invoke(cli, ["data", "validate", str(out)]).exit_code == 0


def test_consensus_keeps_only_quotes_that_verify(samples, tmp_path, runner, rubric):
    """The closest annotator's quote that is not in the transcript is dropped, the verified one kept; a dimension
    where none of theirs verifies takes the quotes of the next annotator who gave the consensus score."""
    base = samples[:2]
    alice = [{**r, "empathy_evidence": ["RD: words nobody said in this visit", *r["empathy_evidence"]],
              "clarity_evidence": ["RD: made up entirely, not in the transcript"]} for r in base]
    bob = [{**r, "reasoning": "Bob's reasoning.", "professionalism": r["professionalism"] % 5 + 1} for r in base]
    files = [write(tmp_path / "alice.jsonl", alice), write(tmp_path / "bob.jsonl", bob),
             write(tmp_path / "carol.jsonl", base)]
    out = tmp_path / "c.jsonl"
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out), "--keep-disputed"])
    assert result.exit_code == 0, result.output
    written = [json.loads(line) for line in out.read_text().splitlines()]
    for record, original in zip(written, base, strict=True):
        assert record["empathy_evidence"] == original["empathy_evidence"]  # alice's, the unverified one dropped
        assert record["clarity_evidence"] == original["clarity_evidence"]  # carol's: none of alice's verified
        assert record["reasoning"] == original["reasoning"]  # alice is closest (bob differs on one dimension)
    assert runner.invoke(cli, ["data", "validate", str(out)]).exit_code == 0


def test_without_evidence_in_the_config_annotators_need_no_quotes(samples, tmp_path, runner):
    config = tmp_path / "plain.yaml"
    config.write_text("scoring:\n  evidence: false\n")
    plain = [{k: v for k, v in r.items() if not k.endswith("_evidence")} for r in samples]
    files = [write(tmp_path / "alice.jsonl", plain), write(tmp_path / "bob.jsonl", plain)]
    out = tmp_path / "c.jsonl"
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(out), "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(cli, ["data", "validate", str(out), "--config", str(config)]).exit_code == 0
    # Under the default config, which asks for quotes, the same files cannot give training data: said in one line.
    result = runner.invoke(cli, ["data", "consensus", *map(str, files), "--out", str(tmp_path / "d.jsonl")])
    assert result.exit_code == 1 and "lack a verified quote" in result.output
    assert len(result.output.strip().splitlines()) == 1


# --- every user mistake: one line, the file, line and field, no transcript ------------------------------------


def _mistakes(tmp_path, samples):
    """name -> (argv, what the message must say)."""
    a, b = samples[0], samples[1]
    t = tmp_path
    write(t / "x" / "alice.jsonl", samples)
    write(t / "y" / "alice.jsonl", samples)
    write(t / "alice.jsonl", samples)
    write(t / "bob.jsonl", samples)
    write(t / "twice.jsonl", [a, b, {**a, "empathy": 1}])
    write(t / "ids1.jsonl", [{"id": "v1", **a}])
    write(t / "ids2.jsonl", [{"id": "v1", **b}])
    write(t / "ids3.jsonl", [{"id": "w9", **a}])
    write(t / "other.jsonl", samples[5:])
    write(t / "few.jsonl", samples[:5])
    write(t / "no_annotator.jsonl", [{"annotator": "alice", **a}, b])
    write(t / "one_annotator.jsonl", [{"annotator": "alice", **a}, {"annotator": "alice", **b}])
    write(t / "named.jsonl", [{"annotator": "alice", **a}])
    write(t / "bad_score.jsonl", [a, {**b, "clarity": 9}])
    return {
        "same file name": (["data", "agreement", f"{t}/x/alice.jsonl", f"{t}/y/alice.jsonl"],
                           f"two files are named 'alice' ({t}/x/alice.jsonl, {t}/y/alice.jsonl)"),
        "same transcript twice": (["data", "agreement", f"{t}/twice.jsonl", f"{t}/bob.jsonl"],
                                  f"{t}/twice.jsonl:3: transcript: duplicate of the transcript on line 1"),
        "one id, two transcripts": (["data", "agreement", f"{t}/ids1.jsonl", f"{t}/ids2.jsonl"],
                                    f"id 'v1' names another transcript in {t}/ids2.jsonl:1 than in {t}/ids1.jsonl:1"),
        "one transcript, two ids": (["data", "agreement", f"{t}/ids1.jsonl", f"{t}/ids3.jsonl"],
                                    f"{t}/ids1.jsonl:1 and {t}/ids3.jsonl:1 hold the same transcript under two ids"),
        "nothing shared": (["data", "agreement", f"{t}/few.jsonl", f"{t}/other.jsonl"],
                           "no transcript was rated by two or more annotators (few: 5, other: 5 transcripts)"),
        "no annotator field": (["data", "agreement", f"{t}/no_annotator.jsonl"],
                               f"{t}/no_annotator.jsonl:2: annotator: missing"),
        "one annotator": (["data", "agreement", f"{t}/one_annotator.jsonl"],
                          "every record is by one annotator ('alice') — agreement needs two or more"),
        "annotator field with several files": (["data", "agreement", f"{t}/named.jsonl", f"{t}/bob.jsonl"],
                                               f"{t}/named.jsonl:1: annotator: with several files each file is one"),
        "bad score": (["data", "agreement", f"{t}/bad_score.jsonl", f"{t}/bob.jsonl"],
                      f"{t}/bad_score.jsonl:2: clarity: score 9 is outside 1..5"),
        "missing file": (["data", "agreement", f"{t}/alice.jsonl", f"{t}/nobody.jsonl"],
                         f"{t}/nobody.jsonl: file not found"),
        "unknown format": (["data", "agreement", f"{t}/alice.jsonl", f"{t}/bob.txt"], "unknown data format"),
        "out is an input": (["data", "consensus", f"{t}/alice.jsonl", f"{t}/bob.jsonl", "--out", f"{t}/bob.jsonl"],
                            f"--out {t}/bob.jsonl is one of the annotators' files"),
        "consensus, nothing shared": (["data", "consensus", f"{t}/few.jsonl", f"{t}/other.jsonl", "--out",
                                       f"{t}/c.jsonl"], "no transcript was rated by two or more annotators"),
    }


MISTAKES = ["same file name", "same transcript twice", "one id, two transcripts", "one transcript, two ids",
            "nothing shared", "no annotator field", "one annotator", "annotator field with several files", "bad score",
            "missing file", "unknown format", "out is an input", "consensus, nothing shared"]


@pytest.mark.parametrize("mistake", MISTAKES)
def test_each_mistake_is_one_line_naming_where_without_transcript_text(mistake, samples, tmp_path, runner):
    argv, message = _mistakes(tmp_path, samples)[mistake]
    before = (tmp_path / "bob.jsonl").read_bytes()
    result = runner.invoke(cli, argv)
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert message in lines[0]
    assert "Traceback" not in result.output and no_transcript_text(result.output, samples)
    assert "hcp data validate" not in result.output  # it would check quotes, and refuse the annotator field
    assert (tmp_path / "bob.jsonl").read_bytes() == before  # an input is never written over
    assert not (tmp_path / "c.jsonl").exists()


def test_the_mistake_table_covers_every_case(samples, tmp_path):
    assert sorted(_mistakes(tmp_path, samples)) == sorted(MISTAKES)
