"""Tests for the synthetic RD-patient conversation generator."""

from __future__ import annotations

import hashlib
import json
import re
import statistics

import pytest

from hcp.data.sample import CLASSIC_LABELS, SAMPLE_DIMENSIONS, TOPICS, generate_samples
from hcp.evidence import check_quote, turns

EVIDENCE = [f"{dim}_evidence" for dim in SAMPLE_DIMENSIONS]
TOPIC_NAMES = " ".join(topic.name for topic in TOPICS)
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


@pytest.fixture(scope="module")
def many_seeds() -> list[dict]:
    """50 seeds of 200 records: what holds for every record here holds for the generator, not one lucky seed."""
    return [s for seed in range(50) for s in generate_samples(200, seed=seed)]


def labels_of(transcript: str) -> tuple[str, str]:
    """The provider's and the patient's labels: the first two lines' (the RD speaks first, the patient next)."""
    provider, patient = (line.split(": ", 1)[0] for line in transcript.split("\n")[:2])
    return provider, patient


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
        provider, patient = labels_of(s["transcript"])
        assert provider.casefold() != patient.casefold()
        for line in lines:
            assert line.startswith((f"{provider}: ", f"{patient}: ")), line
        # the evidence check reads the same turns: one per line, the speakers the lines name
        assert [(t.label, t.line) for t in turns(s["transcript"])] == [
            (line.split(": ", 1)[0], number) for number, line in enumerate(lines, start=1)]


def test_speaker_labels_vary_as_real_transcripts_label_them(many_seeds):
    """A model trained on `RD:` / `Patient:` only wrote `RD:` before its quotes of `Provider:` transcripts (issue 19,
    item 14): the sample labels its speakers as real transcripts do, each transcript its own way."""
    pairs = [labels_of(s["transcript"]) for s in many_seeds]
    providers = {provider for provider, _ in pairs}
    patients = {patient for _, patient in pairs}
    assert {"RD", "Dietitian", "Provider", "Clinician", "Speaker 1"} <= providers
    assert any(re.fullmatch(r"Dr\. [A-Z][a-z]+", p) for p in providers)  # a title and the RD's surname
    assert any(re.fullmatch(r"[A-Z][a-z]+", p) and p not in {"RD", "Dietitian", "Provider", "Clinician"}
               for p in providers)  # the RD's first name
    assert {"Patient", "Client", "Pt", "Speaker 2"} <= patients
    assert len(patients) > 20  # first names
    assert all((provider == "Speaker 1") == (patient == "Speaker 2") for provider, patient in pairs)
    assert pairs.count(CLASSIC_LABELS) < len(pairs) / 20  # RD: / Patient: is one way among many
    assert max(pairs.count(pair) for pair in set(pairs)) < len(pairs) / 7  # Speaker 1 / 2 the commonest: 1 in 8


def test_classic_labels_are_rd_and_patient_and_change_nothing_else():
    varied, classic = generate_samples(60, seed=3), generate_samples(60, seed=3, classic_labels=True)
    for v, c in zip(varied, classic, strict=True):
        assert labels_of(c["transcript"]) == CLASSIC_LABELS
        provider, patient = labels_of(v["transcript"])
        relabelled = [("RD" if line.startswith(f"{provider}: ") else "Patient") + ": " + line.split(": ", 1)[1]
                      for line in v["transcript"].split("\n")]
        assert "\n".join(relabelled) == c["transcript"]
        assert {d: v[d] for d in SAMPLE_DIMENSIONS} == {d: c[d] for d in SAMPLE_DIMENSIONS}


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


def test_reasoning_says_what_was_said_and_states_no_score(many_seeds):
    """The schema writes `reasoning` before the quotes and the scores: a reasoning that ends "..., so empathy 4" has
    the model commit to every number before it quotes anything (issue 24, item 5). It describes what the RD did;
    any number in it is a quantity the RD said ("a follow-up in 4 weeks") or the topic's ("type 2 diabetes")."""
    dims = "|".join(SAMPLE_DIMENSIONS)
    for s in many_seeds:
        reasoning = s["reasoning"]
        assert not re.search(rf"\b(?:{dims})\b\W{{0,3}}\d", reasoning, re.IGNORECASE), reasoning
        assert not re.search(r"\b(?:score[sd]?|rated|level)\W{0,3}\d|\d\s*/\s*5\b|out of 5", reasoning, re.IGNORECASE)
        for number in re.finditer(r"\b\d+(?:[.,]\d+)?\b(?: \w+)?", reasoning):
            assert number.group() in s["transcript"] or number.group() in TOPIC_NAMES, number.group()  # with its unit
        assert len(reasoning.split()) >= 4 * 8  # and it still says what happened, dimension by dimension


def test_every_quote_is_the_rds_own_words_under_the_transcripts_label(many_seeds):
    for s in many_seeds:
        provider, _ = labels_of(s["transcript"])
        transcript_turns = turns(s["transcript"])
        for key in EVIDENCE:
            assert 1 <= len(s[key]) <= 2
            for quote in s[key]:
                assert quote.startswith(f"{provider}: ") and len(quote) <= 150
                check = check_quote(quote, transcript_turns)
                assert check.verified, (key, check.problem)


# What a record's transcript shows, and the levels of a dimension whose descriptor (configs/config.yaml) it
# contradicts. A record with both teaches the model a score its own rubric rules out (issue 24, item 6: 18 of 200
# records paired the level-5 close, which recaps a concrete plan, with clarity 1-3).
RECAP = ("To sum up", "Let me summarise")  # the close sums up the agreed steps
BLAME = ("willpower", "aren't trying hard enough", "don't look after yourself", "down to you, not me",
         "didn't stick to it", "not going to follow it", "Couldn't stick to anything")


@pytest.mark.parametrize("shown, dim, ruled_out, reason", [
    (RECAP, "clarity", {1, 2, 3}, "a recap of concrete steps; clarity 1-3: 'no concrete plan', 'vague or missing "
                                   "next steps'"),
    (BLAME, "empathy", {2, 3, 4, 5}, "blaming the patient is empathy 1: 'dismissive or blaming'"),
    (("registered dietitian",), "professionalism", {1, 2, 3, 4}, "introduces role and asks consent: level 5"),
    (("in your own words",), "clarity", {1, 2, 3, 4}, "checks the patient's understanding: level 5"),
])
def test_no_record_contradicts_its_own_rubric_descriptors(many_seeds, rubric, shown, dim, ruled_out, reason):
    assert dim in rubric.names
    clashes = [s[dim] for s in many_seeds if s[dim] in ruled_out and any(words in s["transcript"] for words in shown)]
    assert not clashes, (reason, len(clashes))
    assert any(words in s["transcript"] for s in many_seeds for words in shown)  # the check saw it at least once


def test_the_level_5_close_recaps_the_plan_exactly_when_the_advice_made_one(many_seeds):
    for s in many_seeds:
        if s["professionalism"] == 5:
            recapped = any(words in s["transcript"] for words in RECAP)
            assert recapped == (s["clarity"] >= 4)
            assert ("summarised the agreed plan" in s["reasoning"]) == recapped  # the reasoning says which it was
            assert "follow-up" in s["reasoning"] and "weeks" in s["transcript"].split("\n")[-1]


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


def test_output_is_unchanged_since_labels_varied_and_reasoning_lost_its_scores():
    """For a given seed the generator writes what it wrote when the speaker labels began to vary, the reasoning
    stopped stating scores and the labels were made to agree with the descriptors: 300 samples, seed 7. It changed
    deliberately then; the digest before was 1adef8ef... (evidence-first labels)."""
    digest = hashlib.sha256(json.dumps(generate_samples(300, 7)).encode()).hexdigest()
    assert digest == "9e581c1581b17ddfd8efc3ae93912842f6f0cc3831eb91462017f84d40c0b71e"
