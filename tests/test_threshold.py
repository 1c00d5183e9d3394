"""A confidence threshold with a guarantee (`hcp evaluate --target-agreement`): the bound holds on fresh draws in
at least 1 - risk of repetitions, the fixed sequence stops at its first failure, a set too small says so, and the
threshold written to a config is the one needs_review then applies."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

import hcp.scoring.backends
from hcp.cli import cli
from hcp.config import DEFAULT_CONFIG_PATH, load_config
from hcp.data.sample import generate_samples
from hcp.errors import DataError
from hcp.evaluate.threshold import binomial_tail, calibrate, config_text, fixed_sequence, lower_bound, min_kept
from hcp.rubric import Rubric, normalize_transcript
from hcp.scoring.backends import Generation
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend

DIMENSIONS = ("empathy", "clarity", "accuracy", "professionalism")


# --- the bound --------------------------------------------------------------------------------------------


def simulate(agreement_at, truth, target: float, risk: float, n: int, repetitions: int, seed: int):
    """Calibrate on `repetitions` sets of n ratings whose confidence is uniform on [0, 1] (3 decimals, as stored)
    and which agree with probability agreement_at(confidence); per repetition, the chosen threshold (None: none)
    and the agreement the chosen threshold truly has on fresh ratings (`truth`, worked out from agreement_at)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(repetitions):
        confidence = np.round(rng.random(n), 3)
        agrees = rng.random(n) < agreement_at(confidence)
        threshold = calibrate(confidence, agrees, target, risk)["threshold"]
        out.append((threshold, None if threshold is None else truth(threshold)))
    return out


def test_the_chosen_threshold_gives_the_target_on_fresh_ratings_in_at_least_1_minus_risk_of_repetitions():
    # P(agree | c) = 0.5 + 0.5 c with c uniform: among ratings at or above t, agreement is 0.75 + 0.25 t — at
    # least 0.9 from t = 0.6 on. Taking the point estimate instead of the bound misses it about half of the time.
    target, risk = 0.9, 0.1
    runs = simulate(lambda c: 0.5 + 0.5 * c, lambda t: 0.75 + 0.25 * t, target, risk, n=400, repetitions=600, seed=1)
    chosen = [truth for threshold, truth in runs if threshold is not None]
    misses = sum(truth < target for truth in chosen) / len(runs)
    assert misses <= risk + 3 * math.sqrt(risk * (1 - risk) / len(runs)), misses
    # Not vacuous: a threshold is found in most repetitions (the sequence stops for good at its first failure, so
    # a miss among the few surest ratings ends it early: about a quarter of the time here)...
    assert len(chosen) >= 0.6 * len(runs)
    assert np.median([t for t, _ in runs if t is not None]) < 0.92  # ...and it is not the strictest (about 0.945)


def test_a_model_never_good_enough_gets_no_threshold_in_at_least_1_minus_risk_of_repetitions():
    # Agreement 0.89 at every confidence: every threshold is below the 0.9 target, so accepting any is an error.
    # Testing every threshold and keeping the lowest that passes errs far more often than risk (about a quarter of
    # the time here): the fixed sequence is what keeps the family-wise error within it.
    target, risk, repetitions = 0.9, 0.1, 600
    rng = np.random.default_rng(2)
    fixed = unguarded = 0
    for _ in range(repetitions):
        confidence, agrees = np.round(rng.random(300), 3), rng.random(300) < 0.89
        result = calibrate(confidence, agrees, target, risk)
        fixed += result["threshold"] is not None
        unguarded += any(r["bound"] >= target for r in result["curve"] if r["kept"] >= result["min_kept"])
    slack = 3 * math.sqrt(risk * (1 - risk) / repetitions)
    assert fixed / repetitions <= risk + slack, fixed
    assert unguarded / repetitions > risk + slack, unguarded  # the test above can fail


def test_the_p_value_and_the_lower_bound_say_the_same():
    rng = np.random.default_rng(0)
    n = rng.integers(1, 300, size=2000)
    k = rng.integers(0, n + 1)
    for target, risk in ((0.9, 0.1), (0.8, 0.05), (0.5, 0.2)):
        assert np.array_equal(binomial_tail(k, n, target) <= risk, lower_bound(k, n, risk) >= target - 1e-12)
    assert binomial_tail(np.array([30]), np.array([30]), 0.9)[0] == pytest.approx(0.9 ** 30)


def test_fewest_ratings_that_can_pass():
    assert min_kept(0.9, 0.1) == 22 and 0.9 ** 22 <= 0.1 < 0.9 ** 21
    assert min_kept(0.5, 0.25) == 2  # 0.5^2 = 0.25 exactly passes


def test_fixed_sequence_stops_at_the_first_failure():
    # The fourth candidate passes, but the third failed first: it is never reached.
    assert fixed_sequence([0.01, 0.05, 0.2, 0.01], [30, 40, 50, 60], risk=0.1, least=22) == (1, 0)
    # Candidates keeping too few to pass are not tested (they could not pass): the sequence starts after them.
    assert fixed_sequence([0.5, 0.01, 0.2], [5, 30, 40], risk=0.1, least=22) == (1, 1)
    assert fixed_sequence([0.5, 0.3], [30, 40], risk=0.1, least=22) == (None, 0)


def test_a_set_worked_by_hand():
    # 30 ratings at 0.9, all agreeing: p = 0.9^30 = 0.042 <= 0.1, accepted. Then 10 at 0.5, 2 agreeing: 32 of 40,
    # p = P(Bin(40, .9) >= 32) = 0.96, failed; the 5 at 0.2 (all agreeing) come after the failure: never tested.
    confidence = [0.9] * 30 + [0.5] * 10 + [0.2] * 5
    agrees = [True] * 30 + [True, True] + [False] * 8 + [True] * 5
    result = calibrate(confidence, agrees, 0.9, 0.1)
    assert (result["threshold"], result["kept"], result["coverage"], result["agreement"]) == (0.9, 30, 30 / 45, 1.0)
    assert [(r["threshold"], r["kept"], r["accepted"], r["tested"]) for r in result["curve"]] == [
        (0.9, 30, True, True), (0.5, 40, False, True), (0.2, 45, False, False)]
    assert result["curve"][0]["p_value"] == pytest.approx(0.9 ** 30)
    assert result["verdict"].startswith("threshold 0.900: 30 of 45 ratings (67%)")


def test_a_set_too_small_says_so():
    result = calibrate([0.9] * 15, [True] * 15, 0.9, 0.1)
    assert result["threshold"] is None and result["min_kept"] == 22
    assert "too few ratings: 15" in result["verdict"] and "22 or more" in result["verdict"]
    failed = calibrate([0.9] * 40, [True] * 30 + [False] * 10, 0.9, 0.1)
    assert failed["threshold"] is None and failed["verdict"].startswith("no threshold holds")
    assert "75.0%" in failed["verdict"]
    for bad in (0, 1, 1.5, -0.1):
        with pytest.raises(DataError, match="between 0 and 1"):
            calibrate([0.9], [True], bad, 0.1)


# --- the config it writes ---------------------------------------------------------------------------------


def scoring_of(text: str, tmp_path) -> dict:
    path = tmp_path / "written.yaml"
    path.write_text(text)
    return load_config(path).model_dump()


@pytest.mark.parametrize(("given", "kept"), [
    (None, "# the overall score's interval covers"),  # the default config, its comments kept
    ("model:\n  max_length: 2048  # short\ntraining:\n  seed: 42\n", "# short"),  # no scoring section: added
    ("scoring:\n  # mine\n  confidence_threshold: 0.5  # old\n  interval_level: 0.8\n", "# mine"),
    ("scoring:\n  interval_level: 0.8\nmodel:\n  num_ctx: 4096\n", "num_ctx: 4096"),  # added under scoring
    ("scoring: {confidence_threshold: 0.5, interval_level: 0.8}\n", "interval_level: 0.8"),  # flow: re-dumped
])
def test_the_written_config_changes_the_threshold_and_nothing_else(tmp_path, given, kept):
    source = None
    if given is not None:
        source = tmp_path / "given.yaml"
        source.write_text(given)
    text = config_text(source, 0.734, "hcp evaluate: 0.9, risk 0.1")
    assert kept in text
    written = scoring_of(text, tmp_path)
    before = load_config(source).model_dump()
    assert written["scoring"].pop("confidence_threshold") == 0.734
    before["scoring"].pop("confidence_threshold")
    assert written == before
    if given is None:
        assert text.count("\n") == DEFAULT_CONFIG_PATH.read_text().count("\n")  # one line changed in place


# --- through the commands ---------------------------------------------------------------------------------


class Sure(FakeBackend):
    """Exact and sure (0.95) on the first `right` transcripts; two points off on empathy and less sure (0.6) on
    the rest."""

    def __init__(self, labels: dict[str, dict], right: int) -> None:
        super().__init__(model="sure")
        self.labels, self.right = labels, right

    def generate(self, messages, schema, options):  # noqa: ANN001, ANN201
        self.calls.append((messages, options))
        human = self.labels[messages[-1]["content"].split("Transcript:\n", 1)[1]]
        good = human["n"] < self.right
        scores = {n: human[n] for n in DIMENSIONS}
        if not good:
            scores["empathy"] = human["empathy"] + 2 if human["empathy"] <= 3 else human["empathy"] - 2
        sure = 0.95 if good else 0.6
        dists = {n: {s: sure if s == scores[n] else (1 - sure) / 4 for s in range(1, 6)} for n in DIMENSIONS}
        quotes = {k: v for k, v in human.items() if k.endswith("_evidence")}
        return Generation(json.dumps({**GOOD_ANSWER, **quotes, **scores}), "stop", 100, 40, 0.01,
                          score_distribution=dists)


def labelled_set(tmp_path, count: int):
    samples = generate_samples(count, seed=8)
    data = tmp_path / "labelled.jsonl"
    data.write_text("".join(json.dumps({"id": f"s{n}", **s}) + "\n" for n, s in enumerate(samples)))
    return data, {normalize_transcript(s["transcript"]): {**s, "n": n} for n, s in enumerate(samples)}


@pytest.fixture
def backend(monkeypatch):
    def install(engine):  # noqa: ANN001, ANN202
        monkeypatch.setattr(hcp.scoring.backends, "open_backend", lambda *a, **k: engine)
        return engine

    return install


def run(*args: object):  # noqa: ANN201
    return CliRunner().invoke(cli, [*map(str, args)])


def test_write_config_then_needs_review_means_below_the_guaranteed_threshold(tmp_path, backend):
    data, labels = labelled_set(tmp_path, 40)
    backend(Sure(labels, right=30))
    given = tmp_path / "mine.yaml"
    given.write_text("model:\n  temperature: 0.0\nscoring:\n  interval_level: 0.8  # narrower\n")
    written = tmp_path / "out" / "guaranteed.yaml"
    result = run("evaluate", "--data", data, "--report", tmp_path / "report", "--target-agreement", "0.9",
                 "--risk", "0.1", "--write-config", written, "--config", given)
    assert result.exit_code == 0, result.output
    assert yaml.safe_load(written.read_text()) == {  # the given config, its comment kept, the threshold added
        "model": {"temperature": 0.0}, "scoring": {"interval_level": 0.8, "confidence_threshold": 0.95}}
    assert "# narrower" in written.read_text()
    threshold = json.loads((tmp_path / "report" / "metrics.json").read_text())["threshold"]
    assert (threshold["threshold"], threshold["kept"], threshold["n"]) == (0.95, 30, 40)
    assert "threshold 0.950: 30 of 40 ratings (75%)" in result.output
    assert f"wrote {written}" in result.output
    assert load_config(written).scoring.confidence_threshold == 0.95
    report = (tmp_path / "report" / "report.md").read_text()
    assert "A confidence threshold with a guarantee" in report and "![coverage against agreement" in report
    assert (tmp_path / "report" / "threshold.png").read_bytes()[:4] == b"\x89PNG"

    # A rating sure at 0.8 on every dimension lies between the default threshold (0.5) and the guaranteed one:
    # flagged only under the written config. One sure at 0.95, the threshold itself, is kept, as calibrated.
    def answer(sure: float) -> Generation:
        dists = {n: {s: sure if s == GOOD_ANSWER[n] else (1 - sure) / 4 for s in range(1, 6)} for n in DIMENSIONS}
        return Generation(json.dumps(GOOD_ANSWER), "stop", 100, 40, 0.01, score_distribution=dists)

    flags = {}
    for sure in (0.8, 0.95):
        for name, config in (("default", None), ("written", written)):
            backend(FakeBackend(answer(sure)))
            out = run("score", "RD: I understand how you feel. Patient: Thanks.", "--json", *(
                ["--config", config] if config else []))
            assert out.exit_code == 0, out.output
            flags[sure, name] = json.loads(out.output)["needs_review"]
    assert flags == {(0.8, "default"): False, (0.8, "written"): True, (0.95, "default"): False,
                     (0.95, "written"): False}
    rubric = Rubric.from_config(load_config(written))  # the same through the library
    scored = score_transcript("RD: I understand how you feel. Patient: Thanks.", FakeBackend(answer(0.8)), rubric,
                              ScoreOptions())
    assert scored.review_reasons == [f"low_confidence:{n}" for n in DIMENSIONS]


def test_no_threshold_holds_reports_it_and_writes_no_config(tmp_path, backend):
    data, labels = labelled_set(tmp_path, 15)
    backend(Sure(labels, right=15))
    result = run("evaluate", "--data", data, "--report", tmp_path / "report", "--target-agreement", "0.9")
    assert result.exit_code == 0, result.output
    assert "too few ratings: 15" in result.output
    written = tmp_path / "c.yaml"
    result = run("evaluate", "--data", data, "--report", tmp_path / "report", "--target-agreement", "0.9",
                 "--write-config", written)
    assert result.exit_code == 1 and not written.exists()
    errors = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "not written" in errors[0] and "too few ratings" in errors[0], result.output
    assert json.loads((tmp_path / "report" / "metrics.json").read_text())["threshold"]["threshold"] is None
