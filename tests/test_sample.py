"""Tests for the synthetic RD-patient conversation generator."""

from __future__ import annotations

import hashlib
import json
import statistics

import pytest

from hcp.data.sample import SAMPLE_DIMENSIONS, generate_samples

EVIDENCE = [f"{dim}_evidence" for dim in SAMPLE_DIMENSIONS]
KEYS = ["transcript", *SAMPLE_DIMENSIONS, "reasoning", "strengths", "areas_for_improvement", *EVIDENCE]

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
        assert isinstance(s["reasoning"], str) and 0 < len(s["reasoning"]) <= 1000 and "..." not in s["reasoning"][-30:]
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


def test_reasoning_gives_the_evidence_before_each_score(samples):
    """The previous benchmark's small model wrote "Empathy 4: the RD acknowledged..." and then evidence that did not
    fit the digit: the sample reasoning now ends each dimension's sentence with its score ("..., so empathy 4.")."""
    for s in samples:
        sentences = s["reasoning"].split(". ")
        for dim in SAMPLE_DIMENSIONS:
            assert f"{dim.capitalize()} {s[dim]}:" not in s["reasoning"]
            (sentence,) = [x for x in sentences if f", so {dim} {s[dim]}" in x]
            assert sentence.rstrip(".").endswith(f", so {dim} {s[dim]}")
            assert len(sentence.split(", so ")[0].split()) >= 5  # the evidence, before the score


def test_every_quote_is_the_rds_own_words_from_its_transcript(samples):
    from hcp.evidence import check_quote, turns

    for s in samples:
        transcript_turns = turns(s["transcript"])
        for key in EVIDENCE:
            assert 1 <= len(s[key]) <= 2
            for quote in s[key]:
                assert quote.startswith("RD: ") and len(quote) <= 150
                check = check_quote(quote, transcript_turns)
                assert check.verified, (key, check.problem)


def test_clarity_quotes_how_the_advice_was_put_and_accuracy_the_advice(samples):
    for s in samples:
        assert not set(s["clarity_evidence"]) & set(s["accuracy_evidence"])
        if s["clarity"] == 5:
            assert "in your own words" in s["clarity_evidence"][-1]  # the teach-back


def test_samples_validate_under_the_default_rubric(tmp_path, rubric):
    from hcp.data.dataset import load_dataset, write_jsonl

    data = load_dataset(write_jsonl(tmp_path / "s.jsonl", generate_samples(200, seed=42)), rubric)
    assert data.ok, data.problems[:3]
    for example in data.examples:  # the training target is a valid answer under the grammar's schema
        rubric.validate_json(rubric.answer_text(example.rating()))


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


def test_output_is_unchanged_since_evidence_first_labels():
    """For a given seed the generator writes what it wrote when the labels became evidence-first (reasoning
    "..., so empathy 4", quotes per dimension): 300 samples, seed 7. It changed deliberately then; the digest
    before was eeab2cb8... (phrases moved to sample_banks.json, output unchanged)."""
    digest = hashlib.sha256(json.dumps(generate_samples(300, 7)).encode()).hexdigest()
    assert digest == "1adef8ef8204932272ed370a1eedf2842476941e9b5f464344a6895aed6afb44"


def test_quotes_took_no_randomness_transcripts_scores_and_lists_are_as_before():
    """Adding the quotes and rewording the reasoning changed nothing else: digest of everything but the reasoning
    and the quotes, taken before the change (300 samples, seed 7)."""
    kept = ["transcript", *SAMPLE_DIMENSIONS, "strengths", "areas_for_improvement"]
    projection = [{k: s[k] for k in kept} for s in generate_samples(300, 7)]
    digest = hashlib.sha256(json.dumps(projection).encode()).hexdigest()
    assert digest == "84bd5186f348d32ad5d237517e5b4b89bbd82a1882addc82fab6d09c4bf3601d"
