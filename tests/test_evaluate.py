"""`hcp evaluate`: the metrics on tables worked out by hand, the degenerate cases, reliability across runs,
the baseline comparison, and the report (files, plots the HTML points to)."""

from __future__ import annotations

import json
import os
import re
import stat

import numpy as np
import pytest
from click.testing import CliRunner
from scipy.stats import pearsonr, spearmanr

import hcp.scoring.backends
from hcp.cli import cli
from hcp.data.sample import generate_samples
from hcp.evaluate.metrics import agreement, batch_metric, compare, run_reliability, whole
from hcp.rubric import normalize_transcript
from hcp.scoring.backends import Generation
from tests.fakes import GOOD_ANSWER, FakeBackend

LEVELS = (1, 2, 3, 4, 5)
DIMENSIONS = ("empathy", "clarity", "accuracy", "professionalism")


# --- metrics on small tables ------------------------------------------------------------------------------


def test_agreement_on_a_table_worked_out_by_hand():
    human = [1, 2, 3, 4, 5]
    predicted = [1, 2, 3, 5, 3]  # differences 0, 0, 0, 1, 2
    m = agreement(human, predicted, LEVELS)
    assert m["n"] == 5
    assert m["exact"] == pytest.approx(3 / 5)  # three equal
    assert m["within_one"] == pytest.approx(4 / 5)  # all but the difference of 2
    assert m["mae"] == pytest.approx((0 + 0 + 0 + 1 + 2) / 5)
    # Pearson: means 3 and 2.8; deviations (-2,-1,0,1,2) and (-1.8,-0.8,0.2,2.2,0.2);
    # sum of products 3.6+0.8+0+2.2+0.4 = 7; sums of squares 10 and 8.8 -> 7 / sqrt(88).
    assert m["pearson"] == pytest.approx(7 / np.sqrt(88), abs=1e-4)
    # Spearman: ranks (1,2,3,4,5) and (1,2,3.5,5,3.5) (the two 3s share 3.5); deviations from 3:
    # (-2,-1,0,1,2) and (-2,-1,.5,2,.5); products 4+1+0+2+1 = 8; squares 10 and 9.5 -> 8 / sqrt(95).
    assert m["spearman"] == pytest.approx(8 / np.sqrt(95), abs=1e-4)
    # Quadratic kappa = 1 - sum(w*O) / sum(w*E), w = (i-j)^2. Observed off the diagonal: (4,5) w=1 and (5,3)
    # w=4 -> 5. Expected E_ij = row_i * col_j / n with rows all 1 and columns (1,1,2,0,1): sum over j of
    # col_j * sum_i (i-j)^2 / 5, where sum_i (i-j)^2 = 30, 15, 10, 15, 30 -> (30+15+20+0+30) / 5 = 19.
    assert m["qwk"] == pytest.approx(1 - 5 / 19, abs=1e-4)
    assert m["confusion"] == [  # rows human 1..5, columns predicted 1..5
        [1, 0, 0, 0, 0],
        [0, 1, 0, 0, 0],
        [0, 0, 1, 0, 0],
        [0, 0, 0, 0, 1],
        [0, 0, 1, 0, 0],
    ]
    assert m["notes"] == []


def test_overall_is_rounded_half_up_for_exact_and_kappa_but_not_for_mae():
    assert whole(np.array([2.5, 3.49, 3.5, 4.75])).tolist() == [3, 3, 4, 5]  # numpy's round would give 2 for 2.5
    m = agreement([3.5, 2.25], [4.0, 2.0], LEVELS)
    assert m["exact"] == 1.0  # 3.5 -> 4 and 2.25 -> 2
    assert m["mae"] == pytest.approx((0.5 + 0.25) / 2)


@pytest.mark.parametrize(
    "human, predicted, expected, note",
    [
        # Constant predictions: correlation is 0/0. Kappa is defined: O on column 3, rows 1,2,3 (w 4,1,0 -> 5);
        # E = row_i * col_3 / 3 = 1 on the same cells -> 5; 1 - 5/5 = 0.
        ([1, 2, 3], [3, 3, 3], {"spearman": None, "pearson": None, "qwk": 0.0, "exact": 1 / 3},
         "constant predictions (all 3): correlation undefined"),
        ([2, 2, 2], [1, 2, 3], {"spearman": None, "pearson": None}, "constant human scores (all 2)"),
        # One transcript: nothing to correlate; kappa compares agreement with chance, which is also total.
        ([4], [4], {"exact": 1.0, "mae": 0.0, "spearman": None, "qwk": None}, "at least two transcripts"),
        ([4, 4], [4, 4], {"qwk": None, "spearman": None}, "kappa undefined: every rating"),
    ],
)
def test_undefined_metrics_are_null_with_a_note(human, predicted, expected, note):
    m = agreement(human, predicted, LEVELS)
    for name, value in expected.items():
        assert m[name] == (pytest.approx(value) if value is not None else None), name
    assert any(note in n for n in m["notes"]), m["notes"]


def qwk_by_definition(human, predicted, levels=LEVELS) -> float:
    """Quadratic kappa written out from its definition, cell by cell: the reference for the vectorised form."""
    k, n = len(levels), len(human)
    observed = [[0] * k for _ in range(k)]
    for a, b in zip(human, predicted, strict=True):
        observed[levels.index(int(a))][levels.index(int(b))] += 1
    rows = [sum(observed[i]) for i in range(k)]
    cols = [sum(observed[i][j] for i in range(k)) for j in range(k)]
    seen = sum((i - j) ** 2 * observed[i][j] for i in range(k) for j in range(k))
    chance = sum((i - j) ** 2 * rows[i] * cols[j] / n for i in range(k) for j in range(k))
    return 1 - seen / chance if chance else float("nan")


@pytest.mark.parametrize(
    "human, predicted, kappa",
    [
        ([1, 2, 3, 4, 5], [1, 2, 3, 4, 5], 1.0),  # perfect
        # Reversed: observed sum of w = 16+4+0+4+16 = 40; rows and columns all 1, so E = 1/5 everywhere and
        # sum w*E = (sum over i, j of (i-j)^2) / 5 = 100 / 5 = 20 -> 1 - 40/20 = -1.
        ([1, 2, 3, 4, 5], [5, 4, 3, 2, 1], -1.0),
        # Two scores only, levels 1..5: O = [[1,1],[0,2]] on levels 2 and 4 (index distance 2, w = 4): sum w*O
        # = 4. Rows (2, 2), columns (1, 3), n = 4: E off the diagonal 2*3/4 = 1.5 and 2*1/4 = 0.5, w*E = 8.
        ([2, 2, 4, 4], [2, 4, 4, 4], 0.5),
        ([3, 3, 3], [3, 3, 3], None),  # every rating the same score: undefined
    ],
)
def test_kappa_on_tables_worked_out_by_hand(human, predicted, kappa):
    got = agreement(human, predicted, LEVELS)["qwk"]
    assert got == (pytest.approx(kappa) if kappa is not None else None)
    rows = batch_metric("qwk", np.array([human], float), np.array([predicted], float), LEVELS)
    assert (np.isnan(rows[0]) if kappa is None else rows[0] == pytest.approx(kappa))


def test_batch_metrics_match_the_definitions_and_scipy():
    rng = np.random.default_rng(3)
    h = rng.integers(1, 6, size=(40, 15)).astype(float)
    p = np.clip(h + rng.integers(-2, 3, size=h.shape), 1, 5)
    p[0] = 3  # a constant row: undefined correlation -> nan
    p[1] = h[1]  # a perfect row
    kappa = batch_metric("qwk", h, p, LEVELS)
    rho = batch_metric("spearman", h, p, LEVELS)
    r = batch_metric("pearson", h, p, LEVELS)
    for row in range(1, 40):
        assert kappa[row] == pytest.approx(qwk_by_definition(h[row], p[row]))
        assert agreement(h[row], p[row], LEVELS)["qwk"] == pytest.approx(kappa[row])  # one implementation
        assert rho[row] == pytest.approx(spearmanr(h[row], p[row]).statistic)
        assert r[row] == pytest.approx(pearsonr(h[row], p[row]).statistic)
    assert kappa[1] == 1.0 and kappa[0] == pytest.approx(qwk_by_definition(h[0], p[0]))
    assert np.isnan(rho[0]) and np.isnan(r[0])
    assert batch_metric("mae", h, p, LEVELS)[1] == pytest.approx(np.mean(np.abs(h[1] - p[1])))


def test_reliability_across_runs():
    ids = ["a", "b", "c"]
    same = [{"a": {"empathy": 1}, "b": {"empathy": 3}, "c": {"empathy": 5}}] * 3
    assert run_reliability(same, ids, "empathy", LEVELS)["alpha"] == 1.0
    # Interval alpha by hand: runs (1,2,3) and (1,2,4). Values 1,1,2,2,3,4 (n = 6). Observed: only unit c
    # differs, ordered pairs (3,4),(4,3) -> 2, / n -> 1/3. Expected: all ordered pairs of the 6 values,
    # unordered sum 4*1 + 2*4 + 2*9 + 2*1 + 2*4 + 1*1 = 41 -> 82 / (6*5). alpha = 1 - (1/3) / (82/30) = 1 - 10/82.
    runs = [{"a": {"overall": 1.0}, "b": {"overall": 2.0}, "c": {"overall": 3.0}},
            {"a": {"overall": 1.0}, "b": {"overall": 2.0}, "c": {"overall": 4.0}}]
    assert run_reliability(runs, ids, "overall", LEVELS)["alpha"] == pytest.approx(1 - 10 / 82, abs=1e-4)
    flat = [{"a": {"empathy": 4}, "b": {"empathy": 4}}] * 2
    assert run_reliability(flat, ["a", "b"], "empathy", LEVELS) == {
        "alpha": None, "pairable": 2, "note": "every rating in every run is 4: alpha undefined (no variation), "
                                              "the runs agree"}
    missing = [{"a": {"empathy": 4}}, {"b": {"empathy": 2}}]  # no transcript rated twice
    assert run_reliability(missing, ["a", "b"], "empathy", LEVELS)["alpha"] is None


def test_bootstrap_differences():
    human = np.array([1, 2, 3, 4, 5] * 4, dtype=float)
    perfect = human.copy()
    off_by_one = np.clip(human + 1, 1, 5)  # right only where the human gave 5
    diff = compare(human, perfect, off_by_one, LEVELS, resamples=500, seed=1)
    assert diff["exact"]["difference"] == pytest.approx(1.0 - 4 / 20)
    assert diff["mae"]["difference"] == pytest.approx(0 - 16 / 20)  # negative: the model errs less
    for d in diff.values():
        assert d["ci_low"] <= d["difference"] <= d["ci_high"]
    assert diff["exact"]["ci_low"] > 0  # clearly better
    assert compare(human, perfect, off_by_one, LEVELS, 500, seed=1) == diff  # seeded
    same = compare(human, perfect, perfect, LEVELS, 500, seed=1)
    assert all((d["difference"], d["ci_low"], d["ci_high"]) == (0, 0, 0) for d in same.values())


# --- the command ------------------------------------------------------------------------------------------


class Oracle(FakeBackend):
    """Knows the human scores of the sample transcripts: rates each exactly (`shift` 0), or `shift` higher,
    capped at 5. Deterministic: every run gives the same rating."""

    def __init__(self, labels: dict[str, dict], model: str = "oracle", shift: int = 0, constant: bool = False):
        super().__init__(model=model)
        self.labels, self.shift, self.constant = labels, shift, constant

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.calls.append((messages, options))
        transcript = messages[-1]["content"].split("Transcript:\n", 1)[1]
        human = self.labels[transcript]
        scores = {n: 3 if self.constant else min(5, human[n] + self.shift) for n in DIMENSIONS}
        return Generation(json.dumps({**GOOD_ANSWER, **scores}), "stop", 100, 40, 0.01)


@pytest.fixture
def labelled(tmp_path):
    samples = generate_samples(20, seed=5)
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"id": f"s{n}", **s}) + "\n" for n, s in enumerate(samples)))
    labels = {normalize_transcript(s["transcript"]): s for s in samples}
    return path, labels


@pytest.fixture
def opened(monkeypatch):
    """backends(by_model): the CLI opens by_model[--model or --baseline]; returns the log of opens/closes."""
    log: list[str] = []

    def install(by_model: dict) -> list[str]:
        def open_backend(name="auto", model=None, **kwargs):  # noqa: ANN001, ANN202
            backend = by_model[model]
            log.append(f"open {backend.model}")
            backend.close = lambda: log.append(f"close {backend.model}")
            return backend

        monkeypatch.setattr(hcp.scoring.backends, "open_backend", open_backend)
        return log

    return install


def evaluate(*args: object):  # noqa: ANN201
    return CliRunner().invoke(cli, ["evaluate", *map(str, args)], catch_exceptions=False)


def test_runs_with_a_deterministic_backend_give_alpha_one_and_a_full_report(labelled, opened, tmp_path):
    data, labels = labelled
    opened({None: Oracle(labels)})
    report = tmp_path / "report"
    result = evaluate("--data", data, "--runs", "3", "--report", report)
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    model = metrics["raters"]["model"]
    assert (model["n"], model["missing"], model["runs"]) == (20, 0, 3)
    assert all(model["metrics"][d]["exact"] == 1.0 and model["metrics"][d]["qwk"] == 1.0 for d in DIMENSIONS)
    assert model["metrics"]["overall"]["mae"] == 0.0
    assert all(model["reliability"][d]["alpha"] == 1.0 for d in [*DIMENSIONS, "overall"])
    assert any("temperature 0" in n for n in metrics["notes"])  # the config's default: greedy
    names = sorted(p.name for p in (report / "predictions").iterdir())
    assert [re.sub(r"-[0-9a-f]{12}\.jsonl$", "", n) for n in names] == [
        "model-oracle-seed42", "model-oracle-seed43", "model-oracle-seed44"]  # + a digest of the settings
    assert "exact" in result.stdout and "Krippendorff's, across 3 runs" in result.stdout

    html = (report / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', html)
    assert sorted(images) == ["confusion-model.png", "distribution-model.png", "scatter-model.png"]
    for image in images:  # relative paths, next to the report, real PNGs
        assert (report / image).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    markdown = (report / "report.md").read_text()
    assert "| empathy | 20 | 1.000 |" in markdown and "![model: confusion matrices](confusion-model.png)" in markdown


def test_rerun_resumes_the_predictions(labelled, opened, tmp_path):
    data, labels = labelled
    oracle = Oracle(labels)
    opened({None: oracle})
    evaluate("--data", data, "--report", tmp_path / "r")
    assert len(oracle.calls) == 20
    assert evaluate("--data", data, "--report", tmp_path / "r").exit_code == 0
    assert len(oracle.calls) == 20  # nothing rated twice


def test_predictions_are_rated_again_when_anything_that_changes_a_rating_changes(labelled, opened, tmp_path):
    data, labels = labelled

    class Versioned(Oracle):
        digest = "size 1, mtime 1"

        def model_digest(self) -> str:
            return self.digest

    oracle = Versioned(labels)
    opened({None: oracle})
    report = tmp_path / "report"
    umask = os.umask(0o022)
    try:
        def run(*args: object) -> int:
            before = len(oracle.calls)
            result = evaluate("--data", data, "--report", report, "--runs", "2", *args)
            assert result.exit_code == 0, result.output
            return len(oracle.calls) - before

        assert run() == 40
        assert run() == 0  # the same settings: the predictions are reused
        assert run("--temperature", "0.7") == 40  # sampled, not greedy: rated again
        assert {o.temperature for _, o in oracle.calls[-40:]} == {0.7}
        assert run("--temperature", "0.7") == 0
        assert run("--num-ctx", "16384") == 40
        oracle.digest = "size 1, mtime 2"  # the same model name, another file
        assert run() == 40
        assert run("--config", weights_config(tmp_path)) == 40  # another rubric
    finally:
        os.umask(umask)
    files = sorted((report / "predictions").iterdir())
    assert len(files) == 10 and all(f.name.startswith("model-oracle-seed4") for f in files)
    assert all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files)  # ratings: the owner's alone


def test_baseline_side_by_side_with_bootstrap_intervals(labelled, opened, tmp_path):
    data, labels = labelled
    log = opened({None: Oracle(labels, model="tuned"), "stock": Oracle(labels, model="stock", shift=1)})
    report = tmp_path / "report"
    result = evaluate("--data", data, "--baseline", "stock", "--report", report)
    assert result.exit_code == 0, result.output
    assert log == ["open tuned", "close tuned", "open stock", "close stock"]  # never two models loaded at once
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["raters"]["baseline"]["model"] == "stock"
    assert metrics["raters"]["baseline"]["metrics"]["empathy"]["exact"] == pytest.approx(4 / 20)  # the 5s only
    empathy = metrics["differences"]["empathy"]
    assert empathy["exact"]["difference"] == pytest.approx(1 - 4 / 20)
    assert 0 < empathy["exact"]["ci_low"] <= empathy["exact"]["ci_high"] <= 1
    assert metrics["differences"]["resamples"] == 1000
    images = re.findall(r'<img src="([^"]+)"', (report / "report.html").read_text())
    assert "confusion-baseline.png" in images and all((report / i).is_file() for i in images)
    assert "model − baseline" in result.stdout


def test_predictions_file_with_missing_ids_and_constant_ratings(labelled, opened, tmp_path):
    data, labels = labelled
    subset = tmp_path / "subset.jsonl"
    subset.write_text("".join(line + "\n" for line in data.read_text().splitlines()[:12]))
    opened({None: Oracle(labels, constant=True)})
    batch = CliRunner().invoke(cli, ["batch", str(subset), "--out", str(tmp_path / "pred.jsonl")])
    assert batch.exit_code == 0, batch.output
    report = tmp_path / "report"
    result = evaluate("--data", data, "--predictions", tmp_path / "pred.jsonl", "--report", report)
    assert result.exit_code == 0, result.output
    metrics = json.loads((report / "metrics.json").read_text())
    model = metrics["raters"]["model"]
    assert (model["n"], model["missing"]) == (12, 8)
    assert model["missing_ids"] == [f"s{n}" for n in range(12, 20)]
    assert model["metrics"]["empathy"]["spearman"] is None  # every prediction is 3
    notes = "\n".join(metrics["notes"])
    assert "8 of 20 labelled transcripts have no rating" in notes
    assert "model empathy: constant predictions (all 3): correlation undefined" in notes
    assert "constant predictions" in (report / "report.html").read_text()


def test_predictions_of_other_transcripts_under_the_labelled_ids_are_refused(labelled, opened, tmp_path):
    """Ratings are paired with labels by id: a results file whose ids name other texts (here the labelled ids
    given to shifted transcripts) must not be scored against the labels."""
    data, labels = labelled
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    shifted = tmp_path / "shifted.jsonl"
    shifted.write_text("".join(json.dumps({**row, "transcript": rows[(n + 1) % 4]["transcript"]}) + "\n"
                               for n, row in enumerate(rows[:4])))
    opened({None: Oracle(labels)})
    pred = tmp_path / "pred.jsonl"
    assert CliRunner().invoke(cli, ["batch", str(shifted), "--out", str(pred)]).exit_code == 0
    report = tmp_path / "r"
    result = evaluate("--data", data, "--predictions", pred, "--report", report)
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "pred.jsonl: 4 rating(s) are not of the labelled transcript with the same id" in result.stderr
    assert "'s0', 's1', 's2', 's3'" in result.stderr and "hcp batch" in result.stderr
    assert not (report / "metrics.json").exists()


def test_alpha_without_a_value_says_why_in_the_table_and_the_report(labelled, opened, tmp_path):
    """Two runs that rated different transcripts: alpha has nothing to compare, and says so where it shows."""
    data, labels = labelled
    opened({None: Oracle(labels)})
    lines = data.read_text().splitlines(keepends=True)
    files = []
    for half in (lines[:10], lines[10:]):
        part = tmp_path / f"part{len(files)}.jsonl"
        part.write_text("".join(half))
        files += ["--predictions", tmp_path / f"pred{len(files) // 2}.jsonl"]
        assert CliRunner().invoke(cli, ["batch", str(part), "--out", str(files[-1])]).exit_code == 0
    report = tmp_path / "r"
    result = evaluate("--data", data, *files, "--report", report)
    assert result.exit_code == 0, result.output
    reason = "no transcript was rated in two runs"
    assert reason in " ".join(result.stdout.split())
    markdown = (report / "report.md").read_text()
    table = markdown.split("Krippendorff's alpha", 1)[1].split("\n\n", 2)[:2]
    assert reason in " ".join(table), markdown


def weights_config(tmp_path, weights=(4, 1, 1, 1)):
    config = tmp_path / "weights.yaml"
    config.write_text("scoring:\n  dimensions:\n" + "".join(
        f"    {d}: {{weight: {w}, description: {d}}}\n" for d, w in zip(DIMENSIONS, weights, strict=True)))
    return config


def test_predictions_made_with_other_weights_are_refused(labelled, opened, tmp_path):
    # The weights are part of the prompt the model saw, so ratings made under other weights are not this
    # rubric's ratings; taking their 'overall' as it was would also compare old weights with new.
    data, labels = labelled
    opened({None: Oracle(labels)})
    pred = tmp_path / "pred.jsonl"
    assert CliRunner().invoke(cli, ["batch", str(data), "--out", str(pred)]).exit_code == 0
    result = evaluate("--data", data, "--predictions", pred, "--report", tmp_path / "r",
                      "--config", weights_config(tmp_path))
    assert result.exit_code == 1 and len(result.stderr.strip().splitlines()) == 1
    assert "pred.jsonl: rated with rubric" in result.stderr and "evaluate with the --config used for rating" \
        in result.stderr


def test_the_overall_score_is_computed_from_the_rubric_in_force(labelled, opened, tmp_path, rubric):
    data, labels = labelled
    opened({None: Oracle(labels)})
    pred = tmp_path / "pred.jsonl"
    assert CliRunner().invoke(cli, ["batch", str(data), "--out", str(pred)]).exit_code == 0
    rows = [json.loads(line) for line in pred.read_text().splitlines()]
    pred.write_text("".join(json.dumps({**r, "overall": 1.0}) + "\n" for r in rows))  # a stale or edited overall
    result = evaluate("--data", data, "--predictions", pred, "--report", tmp_path / "r")
    assert result.exit_code == 0, result.output
    overall = json.loads((tmp_path / "r" / "metrics.json").read_text())["raters"]["model"]["metrics"]["overall"]
    assert overall["mae"] == 0.0 and overall["exact"] == 1.0  # the oracle's scores, weighted as the humans'


def test_a_change_of_weights_rates_the_set_again_with_the_new_overall(labelled, opened, tmp_path):
    data, labels = labelled
    oracle = Oracle(labels)
    opened({None: oracle})
    report = tmp_path / "report"
    assert evaluate("--data", data, "--report", report).exit_code == 0
    result = evaluate("--data", data, "--report", report, "--config", weights_config(tmp_path))
    assert result.exit_code == 0, result.output
    assert len(oracle.calls) == 40
    overall = json.loads((report / "metrics.json").read_text())["raters"]["model"]["metrics"]["overall"]
    assert overall["mae"] == 0.0


def test_a_single_labelled_transcript(opened, tmp_path):
    sample = generate_samples(1, seed=2)[0]
    data = tmp_path / "one.csv"
    data.write_text("transcript,empathy,clarity,accuracy,professionalism\n"
                    f"\"{sample['transcript']}\",{sample['empathy']},{sample['clarity']},{sample['accuracy']},"
                    f"{sample['professionalism']}\n")
    opened({None: Oracle({normalize_transcript(sample["transcript"]): sample})})
    result = evaluate("--data", data, "--report", tmp_path / "r")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["raters"]["model"]["metrics"]["empathy"]["exact"] == 1.0
    assert metrics["raters"]["model"]["metrics"]["empathy"]["pearson"] is None


@pytest.mark.parametrize(
    "rows, args, message",
    [
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello."}], [],
         "4 problem(s) in the labelled data: labelled.jsonl:1: empathy: missing"),
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello.", "empathy": 9, "clarity": "good", "accuracy": 3,
           "professionalism": 3}], [], "empathy: score 9 is outside 1..5; labelled.jsonl:1: clarity: must be a whole"),
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
           "professionalism": 3}], ["--predictions", "p1.jsonl", "--runs", "2"], "with --predictions give one"),
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
           "professionalism": 3}], ["--predictions", "other.jsonl"], "none of the 1 labelled transcripts has a rating"),
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
           "professionalism": 3}], ["--predictions", "nowhere.jsonl"], "nowhere.jsonl: results file not found"),
        ([{"id": "a", "transcript": "RD: Hi. Patient: Hello.", "empathy": 3, "clarity": 3, "accuracy": 3,
           "professionalism": 3}], ["--predictions", "ratings.csv"], "give the JSONL results file beside it"),
    ],
)
def test_errors_are_one_line(tmp_path, monkeypatch, opened, rubric, rows, args, message):
    monkeypatch.chdir(tmp_path)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "other.jsonl").write_text(json.dumps({"id": "zzz", "status": "ok", "rating": GOOD_ANSWER,
                                                      "overall": 4.5, "rubric": rubric.digest}) + "\n")
    opened({None: FakeBackend()})
    result = evaluate("--data", data, "--report", tmp_path / "r", *args)
    assert result.exit_code != 0
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


# --- score probabilities: expected-score agreement, calibration, flagged against unflagged ----------------


def test_expected_calibration_error_on_a_table_worked_by_hand():
    from hcp.evaluate.metrics import calibration

    # bin .9-1: conf .95, 1 of 2 right -> |.95-.5| * 2/5 = .18; bin .5-.6: conf .55, 2 of 2 -> .45 * 2/5 = .18;
    # bin .1-.2: conf .15, 0 of 1 -> .15 * 1/5 = .03; total .39. A confidence of 1.0 falls in the top bin.
    got = calibration([0.95, 0.95, 0.55, 0.55, 0.15], [True, False, True, True, False])
    assert got["ece"] == pytest.approx(0.39)
    assert [(b["low"], b["n"], b["accuracy"]) for b in got["bins"]] == [(0.1, 1, 0.0), (0.5, 2, 1.0), (0.9, 2, 0.5)]
    assert calibration([1.0, 1.0], [True, True]) == {"ece": 0.0, "n": 2, "bins": [
        {"low": 0.9, "high": 1.0, "n": 2, "confidence": 1.0, "accuracy": 1.0}]}


class Hedger(Oracle):
    """Right and sure (0.9) on even-numbered transcripts; one off and unsure (0.4, flagged) on odd ones."""

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.calls.append((messages, options))
        human = self.labels[messages[-1]["content"].split("Transcript:\n", 1)[1]]
        odd = human["id"] % 2 == 1
        scores = {n: (human[n] % 5) + 1 if odd else human[n] for n in DIMENSIONS}
        sure = 0.4 if odd else 0.9
        dists = {n: {s: sure if s == scores[n] else (1 - sure) / 4 for s in range(1, 6)} for n in DIMENSIONS}
        quotes = {k: v for k, v in human.items() if k.endswith("_evidence")}  # the sample's own, verified quotes
        return Generation(json.dumps({**GOOD_ANSWER, **quotes, **scores}), "stop", 100, 40, 0.01,
                          score_distribution=dists)


def test_evaluate_reports_expected_scores_calibration_and_flagged_disagreement(opened, tmp_path):
    samples = generate_samples(20, seed=5)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{n}", **s}) + "\n" for n, s in enumerate(samples)))
    labels = {normalize_transcript(s["transcript"]): {**s, "id": n} for n, s in enumerate(samples)}
    opened({None: Hedger(labels)})
    report = tmp_path / "report"
    result = evaluate("--data", data, "--report", report)
    assert result.exit_code == 0, result.output
    probabilities = json.loads((report / "metrics.json").read_text())["raters"]["model"]["probabilities"]
    assert probabilities["n"] == 20
    review = probabilities["review"]
    assert (review["flagged"]["n"], review["flagged"]["disagreement"]) == (10, 1.0)
    assert (review["unflagged"]["n"], review["unflagged"]["disagreement"]) == (10, 0.0)
    # Pooled over 4 dimensions: 40 ratings at 0.9, all right (gap .1); 40 at 0.4, all wrong (gap .4): ECE .25.
    assert probabilities["calibration"]["ece"] == pytest.approx(0.25)
    empathy = probabilities["dimensions"]["empathy"]
    assert empathy["argmax"]["n"] == empathy["expected"]["n"] == 20 and empathy["calibration"]["n"] == 20
    assert probabilities["dimensions"]["overall"]["expected"]["spearman"] is not None
    html = (report / "report.html").read_text()
    assert '<img src="reliability-model.png"' in html and "QWK expected" in html and "flagged" in html
    assert (report / "reliability-model.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "score probabilities (20 ratings)" in result.stdout and "needs_review: flagged 10" in result.stdout


def test_ratings_without_probabilities_say_so_in_the_report(labelled, opened, tmp_path):
    data, labels = labelled
    opened({None: Oracle(labels)})
    report = tmp_path / "report"
    assert evaluate("--data", data, "--report", report).exit_code == 0
    assert json.loads((report / "metrics.json").read_text())["raters"]["model"]["probabilities"] is None
    assert "No score probabilities in these ratings" in (report / "report.md").read_text()


# --- several annotators: the ceiling beside the model -----------------------------------------------------


def test_two_label_files_show_the_model_beside_the_annotators_agreement(opened, tmp_path):
    """The model rates as alice does; bob rates one point higher on every other transcript. So the model agrees
    with alice perfectly, with bob as alice does, and with the consensus (the lower of two scores: alice's)
    perfectly; the annotators' own kappa is alice's against bob's."""
    samples = [{"id": f"s{n}", **s, **{d: min(s[d], 4) for d in DIMENSIONS}}
               for n, s in enumerate(generate_samples(20, seed=5))]
    bob = [{**s, **{d: s[d] + (n % 2) for d in DIMENSIONS}} for n, s in enumerate(samples)]
    files = {"alice": tmp_path / "alice.jsonl", "bob": tmp_path / "bob.jsonl"}
    for path, records in ((files["alice"], samples), (files["bob"], bob)):
        path.write_text("".join(json.dumps(r) + "\n" for r in records))
    opened({None: Oracle({normalize_transcript(s["transcript"]): s for s in samples})})
    together = tmp_path / "both.jsonl"
    together.write_text("".join(json.dumps({**r, "annotator": who}) + "\n"
                                for who, records in (("alice", samples), ("bob", bob)) for r in records))
    for data in (["--data", files["alice"], "--data", files["bob"]], ["--data", together]):
        report = tmp_path / f"report{len(data)}"
        result = evaluate(*data, "--report", report)
        assert result.exit_code == 0, result.output
        metrics = json.loads((report / "metrics.json").read_text())
        assert metrics["raters"]["model"]["metrics"]["empathy"]["exact"] == 1.0  # against the consensus
        ceiling = metrics["ceiling"]
        assert (ceiling["annotators"], ceiling["n"]) == (["alice", "bob"], 20)
        for name in [*DIMENSIONS, "overall"]:
            d = ceiling["dimensions"][name]
            alice = [s[name] if name != "overall" else None for s in samples]
            if name == "overall":
                continue  # the overall's kappa is checked through the dimensions' arithmetic elsewhere
            human_kappa = agreement(alice, [b[name] for b in bob], LEVELS)["qwk"]
            assert d["humans"]["qwk"]["value"] == pytest.approx(human_kappa)
            assert d["pairs"]["alice–bob"]["qwk"]["value"] == pytest.approx(human_kappa)
            assert d["pairs"]["model–alice"]["qwk"]["value"] == pytest.approx(1.0)
            assert d["pairs"]["model–bob"]["qwk"]["value"] == pytest.approx(human_kappa)
            assert d["pairs"]["model–consensus"]["qwk"]["value"] == pytest.approx(1.0)
            assert d["model"]["qwk"]["value"] == pytest.approx((1 + human_kappa) / 2)
            assert d["gap"]["value"] == pytest.approx((1 - human_kappa) / 2)
            assert d["humans"]["within_one"]["value"] == 1.0  # one point apart at most
            low, high = d["humans"]["qwk"]["ci_low"], d["humans"]["qwk"]["ci_high"]
            assert low <= human_kappa <= high
        assert "The ceiling: the annotators' agreement with each other" in (report / "report.md").read_text()
        assert "the ceiling: 2 annotators, 20 transcripts" in result.stdout


def test_label_files_that_share_no_transcript_are_refused(opened, tmp_path):
    samples = generate_samples(6, seed=5)
    (tmp_path / "alice.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples[:3]))
    (tmp_path / "bob.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples[3:]))
    opened({})
    result = CliRunner().invoke(cli, ["evaluate", "--data", str(tmp_path / "alice.jsonl"), "--data",
                                      str(tmp_path / "bob.jsonl"), "--report", str(tmp_path / "r")])
    assert result.exit_code == 1 and "no transcript was rated by two or more annotators" in result.output
