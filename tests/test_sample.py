"""Tests for the synthetic RD-patient conversation generator."""

from __future__ import annotations

import hashlib
import json
import statistics

import pytest

from hcp.data.sample import SAMPLE_DIMENSIONS, generate_samples

KEYS = ["transcript", *SAMPLE_DIMENSIONS, "reasoning", "strengths", "areas_for_improvement"]

# Phrases taken from the generator's unsafe / incorrect advice (accuracy 1-2).
UNSAFE_PHRASES = (
    "Potassium isn't a worry for you",
    "A glass or two of wine a few times a week is fine in pregnancy",
    "live on about 600 calories a day",
    "you can stop taking your diabetes medication",
    "Take a double dose on competition day",
    "you can stop your blood pressure tablets straight away",
    "you can go back to eating gluten normally",
    "Give a little peanut butter each day at home",
)
INCORRECT_PHRASES = UNSAFE_PHRASES + (
    "you should cut protein right down",
    "Coconut oil is a healthy fat",
    "Fruit is off limits now",
    "Stay low-FODMAP for life",
)


@pytest.fixture(scope="module")
def samples() -> list[dict]:
    return generate_samples(1000, seed=7)


def test_dimensions_constant():
    assert SAMPLE_DIMENSIONS == ("empathy", "clarity", "accuracy", "professionalism")


def test_rejects_non_positive_n():
    with pytest.raises(ValueError):
        generate_samples(0)
    with pytest.raises(ValueError):
        generate_samples(-5)


def test_single_sample():
    assert len(generate_samples(1, seed=1)) == 1


def test_deterministic_for_same_seed():
    assert generate_samples(60, seed=11) == generate_samples(60, seed=11)


def test_different_seeds_differ():
    a = generate_samples(60, seed=11)
    b = generate_samples(60, seed=12)
    assert [s["transcript"] for s in a] != [s["transcript"] for s in b]


def test_default_arguments():
    out = generate_samples()
    assert len(out) == 200
    assert out == generate_samples(200, 42)


@pytest.mark.parametrize("n,seed", [(50, 0), (50, 1), (100, 42), (173, 9)])
def test_every_dimension_covers_all_scores(n, seed):
    out = generate_samples(n, seed=seed)
    for dim in SAMPLE_DIMENSIONS:
        assert {s[dim] for s in out} == {1, 2, 3, 4, 5}, dim


def test_fields_types_and_bounds(samples):
    for s in samples:
        assert list(s) == KEYS
        assert isinstance(s["transcript"], str) and s["transcript"]
        for dim in SAMPLE_DIMENSIONS:
            assert type(s[dim]) is int and 1 <= s[dim] <= 5
        assert isinstance(s["reasoning"], str) and 0 < len(s["reasoning"]) <= 800
        for key in ("strengths", "areas_for_improvement"):
            items = s[key]
            assert isinstance(items, list) and 1 <= len(items) <= 4
            assert all(isinstance(x, str) and 0 < len(x) <= 160 for x in items)


def test_transcripts_unique():
    out = generate_samples(2000, seed=5)
    assert len({s["transcript"] for s in out}) == 2000


def test_lines_are_speaker_turns(samples):
    for s in samples:
        lines = s["transcript"].split("\n")
        assert len(lines) >= 8
        for line in lines:
            assert line.startswith(("RD: ", "Patient: ")), line
        assert lines[0].startswith("RD: ")
        assert any(line.startswith("Patient: ") for line in lines)


def test_word_count_bounds(samples):
    for s in samples:
        assert 100 <= len(s["transcript"].split()) <= 600


def test_no_unfilled_placeholders(samples):
    for s in samples:
        text = " ".join([s["transcript"], s["reasoning"], *s["strengths"], *s["areas_for_improvement"]])
        assert "{" not in text and "}" not in text


def test_dimensions_only_loosely_correlated(samples):
    for i, a in enumerate(SAMPLE_DIMENSIONS):
        for b in SAMPLE_DIMENSIONS[i + 1 :]:
            r = statistics.correlation([s[a] for s in samples], [s[b] for s in samples])
            assert abs(r) < 0.6, (a, b, r)


def test_reasoning_states_each_score(samples):
    for s in samples:
        for dim in SAMPLE_DIMENSIONS:
            assert f"{dim.capitalize()} {s[dim]}:" in s["reasoning"]


def test_unsafe_advice_is_scored_accuracy_1(samples):
    flagged = [s for s in samples if any(p in s["transcript"] for p in UNSAFE_PHRASES)]
    assert len(flagged) >= 20
    assert all(s["accuracy"] == 1 for s in flagged)


def test_inaccurate_advice_lowers_mean_accuracy(samples):
    bad = [s["accuracy"] for s in samples if any(p in s["transcript"] for p in INCORRECT_PHRASES)]
    rest = [s["accuracy"] for s in samples if not any(p in s["transcript"] for p in INCORRECT_PHRASES)]
    assert bad and rest
    assert statistics.mean(bad) + 1.5 < statistics.mean(rest)


def test_teach_back_appears_exactly_when_clarity_is_5(samples):
    for s in samples:
        assert ("in your own words" in s["transcript"]) == (s["clarity"] == 5)


def test_blaming_language_means_low_empathy(samples):
    flagged = [s for s in samples if "willpower" in s["transcript"]]
    assert flagged
    assert all(s["empathy"] == 1 for s in flagged)


def test_professional_introduction_tracks_professionalism(samples):
    for s in samples:
        first_line = s["transcript"].split("\n")[0]
        assert ("registered dietitian" in first_line) == (s["professionalism"] == 5)
    selling = [s for s in samples if "discount code" in s["transcript"]]
    assert selling and all(s["professionalism"] == 1 for s in selling)


def test_strengths_and_areas_follow_scores(samples):
    for s in samples:
        scores = [s[d] for d in SAMPLE_DIMENSIONS]
        if min(scores) == 5:
            assert len(s["areas_for_improvement"]) == 1
        low = sum(score <= 3 for score in scores)
        if low:
            assert len(s["areas_for_improvement"]) == min(low, 4)


def test_output_is_unchanged_since_the_phrases_moved_to_a_data_file():
    """The phrase banks live in sample_banks.json now; for a given seed the generator writes what it wrote when
    they were Python literals (digest taken from that version: 300 samples, seed 7)."""
    digest = hashlib.sha256(json.dumps(generate_samples(300, 7)).encode()).hexdigest()
    assert digest == "eeab2cb83bea7b1d92dedbc1d03682e3e1f09e77a98b151af02c0f61ac454c88"
