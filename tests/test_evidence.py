"""Quoted evidence: the check of each quote against the transcript, and what scoring does with it."""

from __future__ import annotations

import json
import logging

import pytest

from hcp.errors import InvalidOutputError
from hcp.evidence import ASSUMED_EVERY_LABEL, PROBLEMS, check_evidence, check_quote, normalize, speakers, turns
from hcp.scoring.score import ScoreOptions, score_transcript
from tests.fakes import GOOD_ANSWER, FakeBackend

TRANSCRIPT = """RD: Good morning, I'm Sam, a registered dietitian. Is it okay if we talk about your diet today?
Patient: Yes. I'm worried about my blood sugar, to be honest.
RD: I understand this can be hard — it's  a lot to take in.
Let's take it one step at a time.
Dr Lee: Your HbA1c was 58 last month.
Patient: Okay.
RD: Could you tell me, in your own words, what you'll try this week?"""


@pytest.mark.parametrize("quote, verified, problem, reason", [
    ("RD: I understand this can be hard", True, None, "exact words, part of a turn"),
    ("RD:   I understand   this can\tbe hard", True, None, "whitespace differs"),
    ("rd: I UNDERSTAND this can be HARD", True, None, "case differs, the speaker's too"),
    ("RD: I understand this can be hard, it's a lot to take in", True, None, "punctuation differs (dash, comma)"),
    ("RD: Its a lot", False, "not_found", "a word changed by dropping its apostrophe is another word"),
    ("RD: it’s a lot to take in", True, None, "a curly apostrophe is punctuation too"),
    ("RD: a lot to take in. Let's take it one step", True, None, "a turn that runs over two lines is one turn"),
    ("Patient: I understand this can be hard", False, "wrong_speaker", "the words are the RD's"),
    ("RD: Your HbA1c was 58 last month", False, "wrong_speaker", "said by another provider, Dr Lee"),
    ("Dr Lee: your HbA1c was 58 last month.", True, None, "a two-word speaker"),
    ("RD: nderstand this can be har", False, "not_found", "partial words at both ends"),
    ("RD: I understand this can be difficult", False, "not_found", "one word changed"),
    ("RD: I will refer you to a cardiologist", False, "not_found", "an invented quote"),
    ("RD: one step at a time. Dr Lee: Your HbA1c", False, "not_found", "a quote spanning two turns"),
    ("Patient: to be honest. RD: I understand", False, "not_found", "a quote spanning two turns' lines"),
    ("I understand this can be hard", False, "no_speaker", "no speaker given"),
    ("RD: I", False, "too_short", "under three words: matches almost any turn"),
    ("Patient: Okay.", True, None, "a short quote that is a whole turn"),
    ("Patient: Yes", False, "too_short", "short and only part of a turn"),
    ("RD:", False, "too_short", "a speaker and no words"),
    ("", False, "no_speaker", "empty"),
])
def test_quote_check(quote, verified, problem, reason):
    check = check_quote(quote, turns(TRANSCRIPT))
    assert (check.verified, check.problem) == (verified, problem), reason
    assert problem is None or problem in PROBLEMS


def test_a_verified_quote_gives_the_line_of_its_turn():
    assert check_quote("RD: Let's take it one step at a time", turns(TRANSCRIPT)).line == 3
    assert check_quote("Patient: Okay.", turns(TRANSCRIPT)).line == 6


def test_a_transcript_on_one_line_is_split_at_every_speaker():
    one_line = "RD: Hello, how are you feeling today? Patient: I'm struggling with my diet."
    assert [t.speaker for t in turns(one_line)] == ["rd", "patient"]
    assert check_quote("Patient: struggling with my diet", turns(one_line)).verified
    assert check_quote("RD: struggling with my diet", turns(one_line)).problem == "wrong_speaker"


def test_a_colon_inside_a_turn_of_a_multiline_transcript_is_not_a_speaker():
    text = "RD: Remember Sunday: no sweets at all.\nPatient: Fine."
    assert check_quote("RD: Remember Sunday: no sweets", turns(text)).verified


def test_normalize():
    assert normalize("I’m  SO\nsorry…") == normalize("i'm so sorry") == "i'm so sorry"
    assert normalize("Drink 1.5 litres, not 2,300 mg; non-fat (5–10%)") == "drink 1.5 litres not 2,300 mg non-fat 5-10%"


# What the RD said, and quotes of it: a quote verifies only when it is made of the RD's own whole words. A number,
# a hyphenated word and a contraction is one word, so a piece of one ("5" of "1.5") is never passed off as said.
@pytest.mark.parametrize("quote, said, verified, reason", [
    ("RD: 5 litres of water a day", "Drink 1.5 litres of water a day.", False, "a decimal's last digit is not a dose"),
    ("RD: 1.5 litres of water a day", "Drink 1.5 litres of water a day.", True, "the decimal, whole"),
    ("RD: 1 litres of water", "Drink 1.5 litres of water a day.", False, "a decimal's first digit"),
    ("RD: 300 mg daily", "Keep sodium under 2,300 mg daily.", False, "the end of a number with a thousands comma"),
    ("RD: under 2,300 mg daily", "Keep sodium under 2,300 mg daily.", True, "the number with its comma"),
    ("RD: under 2 300 mg daily", "Keep sodium under 2,300 mg daily.", False, "two numbers are not one"),
    ("RD: 10 mg twice a day", "Take 5-10 mg twice a day.", False, "the top of a range is not the dose"),
    ("RD: Take 5 mg twice", "Take 5-10 mg twice a day.", False, "nor the bottom of it"),
    ("RD: Take 5-10 mg twice a day", "Take 5–10 mg twice a day.", True, "a hyphen and an en dash are one dash"),
    ("RD: Take 5–10 mg twice a day", "Take 5-10 mg twice a day.", True, "and the other way round"),
    ("RD: Take 5—10 mg twice", "Take 5-10 mg twice a day.", True, "an em dash between digits is a range too"),
    ("RD: 10 mg twice a day", "Take 5—10 mg twice a day.", False, "so it never leaves the top of the range alone"),
    ("RD: fat milk every day", "Have non-fat milk every day.", False, "a hyphenated word is one word"),
    ("RD: non-fat milk every day", "Have non‑fat milk every day.", True, "a non-breaking hyphen is a hyphen"),
    ("RD: t eat sugar", "You shouldn't eat sugar.", False, "the end of a contraction"),
    ("RD: shouldn’t eat sugar", "You shouldn't eat sugar.", True, "curly and straight apostrophes fold"),
    ("RD: do not eat sugar", "You don't eat sugar at night.", False, "do not is not don't: never conflated"),
    ("RD: don't eat sugar", "Do not eat sugar at night.", False, "and don't is not do not"),
    ("RD: not eat sugar at night", "Don't eat sugar at night.", False, "a negation's piece is not a word"),
    ("RD: Don't eat sugar at night", "Don't eat sugar at night.", True, "the negation, whole"),
    ("RD: cut salt by 5 this week", "Cut salt by 5% this week.", False, "5% is not 5"),
    ("RD: cut salt by 5 % this week", "Cut salt by 5% this week.", True, "a space before % folds"),
    ("RD: by 15% this week", "Cut salt by 5% this week.", False, "another percentage"),
    ("RD: 5% this week", "Cut salt by 15% this week.", False, "the end of a percentage"),
    ("RD: 5 mmol/L before meals", "Keep it <5 mmol/L before meals.", False, "a bound is part of its number"),
    ("RD: keep it < 5 mmol/L", "Keep it <5 mmol/L before meals.", True, "a space after < folds"),
    ("RD: keep it 5 mmol/L", "Keep it ≤5 mmol/L before meals.", False, "nor is ≤ dropped"),
    ("RD: Eat 5 portions a day", "Eat 5+ portions a day.", False, "at least five is not five"),
    ("RD: at 7:30 every morning", "Eat at 7:30 every morning.", True, "a time, whole"),
    ("RD: 30 every morning", "Eat at 7:30 every morning.", False, "a piece of a time"),
    ("RD: half a cup at lunch", "Have ½ cup at lunch, half a cup at lunch.", True, "plain words beside a fraction"),
    ("RD: 2 cup at lunch", "Have 1/2 cup at lunch.", False, "a piece of a fraction"),
    ("RD: KEEP SODIUM UNDER 2,300 MG", "Keep sodium under 2,300 mg daily.", True, "case folds"),
    ("RD: keep   sodium\tunder 2,300 mg", "Keep sodium under 2,300 mg daily.", True, "whitespace folds"),
    ("RD: sodium, under 2,300 mg!", "Keep sodium under 2,300 mg daily.", True, "ordinary punctuation folds"),
    ("RD: Keep sodium under 2,300 mg daily.", "Keep sodium under 2,300 mg daily.", True, "a sentence's full stop"),
    ("RD: nutrition is key for you", "Good nutri\u00adtion is key for you.", True, "a soft hyphen is invisible"),
    ("RD: good nutri\u200btion is key", "Good nutrition is key for you.", True, "a zero-width space in the quote"),
    ("RD: good nutrition is key", "Good nu\u200ctri\u200dtion\u2060 is key\ufeff for you.", True,
     "zero-width (non-)joiners, word joiner, byte-order mark"),
])
def test_a_quote_verifies_only_as_whole_words_numbers_and_contractions(quote, said, verified, reason):
    transcript = f"RD: Hello, I'm the dietitian.\nPatient: Hi.\nRD: {said}\nPatient: Okay."
    assert check_quote(quote, turns(transcript)).verified is verified, reason


# --- speakers: the labels a transcript alternates between ----------------------------------------------------


@pytest.mark.parametrize("transcript, expected, reason", [
    ("RD: Here's a day to try.\nBreakfast: oats with berries\nLunch: a salad\nPatient: Sounds good.\nRD: Great.",
     ["rd", "patient", "rd"], "a meal plan's 'Breakfast:' inside the RD's turn is words, not a speaker"),
    ("Speaker 1: How have you been eating?\nSpeaker 2: Badly, honestly.\nSpeaker 1: Tell me more.",
     ["speaker 1", "speaker 2", "speaker 1"], "numbered speakers, as transcription tools write them"),
    ("SPEAKER_00: How are you?\nSPEAKER_01: Fine thanks.", ["speaker 00", "speaker 01"], "diarisation output"),
    ("Dr. Lee: Your results are back.\nMaria: Are they okay?\nDr. Lee: Mostly.\nMaria: Good.",
     ["dr lee", "maria", "dr lee", "maria"], "a title and a name; a first name that recurs"),
    ("Nurse Ana Lopez: Any allergies?\nClient: None.", ["nurse ana lopez", "client"], "three words, a role"),
    ("RD: Hello, how are you feeling today? Patient: Not great. RD: Remember Sunday: no sweets at all.",
     ["rd", "patient", "rd"], "one line: a capitalised word before a colon is not a speaker when speakers are known"),
    ("RD: My name is Sam Patient: Hi Sam. RD: Good.", ["rd", "patient", "rd"],
     "one line: the usual label inside a longer capitalised run"),
    ("Dietitian: What do you eat?\nPatient: Toast.\nDietitian: And then?\nMum: He skips lunch.\n"
     "Dietitian: I see.\nPatient: Yes.", ["dietitian", "patient", "dietitian", "mum", "dietitian", "patient"],
     "a relative who speaks once, between two of the dietitian's turns"),
    ("Provider: Here's the plan.\nNote: take it with food\nProvider: Any questions?\nPatient: No.",
     ["provider", "note", "provider", "patient"], "alone between two turns of one speaker, a label is a speaker"),
])
def test_turns_are_the_speakers_the_transcript_alternates_between(transcript, expected, reason):
    assert [t.speaker for t in turns(transcript)] == expected, reason


def test_a_line_with_a_colon_inside_the_rds_turn_is_quoted_as_the_rds():
    text = ("RD: Let's plan a day.\nBreakfast: oats with berries and milk\nLunch: a salad with beans\n"
            "Patient: That sounds doable.\nRD: Good.")
    assert check_quote("RD: Breakfast: oats with berries and milk", turns(text)).verified
    assert check_quote("RD: oats with berries and milk", turns(text)).line == 1
    assert speakers(text).labels == ("RD", "Patient")
    assert speakers(text).note == "2 label(s) used once were read as words, not as speakers"
    assert speakers(text + "\nRd: Bye.").labels == ("RD", "Patient")  # one speaker, spelt as first written


def test_numbered_speakers_are_quoted_by_their_number():
    text = "Speaker 1: How much water do you drink?\nSpeaker 2: About 1.5 litres a day."
    assert check_quote("Speaker 2: About 1.5 litres a day", turns(text)).verified
    assert check_quote("Speaker 1: About 1.5 litres a day", turns(text)).problem == "wrong_speaker"
    assert speakers(text) == speakers(text.replace("\n", " "))  # the same, written on one line


def test_when_no_label_is_sure_every_label_is_a_speaker_and_that_is_said():
    text = "Sam: How is the diet going?\nJo: Not well."
    assert [t.speaker for t in turns(text)] == ["sam", "jo"]
    assert speakers(text).note == ASSUMED_EVERY_LABEL and "Sam" not in ASSUMED_EVERY_LABEL
    assert speakers("RD: Hello.\nPatient: Hi.").note is None


def test_a_soft_hyphen_or_zero_width_character_never_breaks_a_label_or_a_line_number():
    text = "\ufeffR\u200bD: Good morning.\nPa\u00adtient: Hi there, I am well.\nRD: Lovely to hear."
    assert [(t.speaker, t.line) for t in turns(text)] == [("rd", 1), ("patient", 2), ("rd", 3)]
    assert check_quote("\u200bPatient: Hi there, I am well", turns(text)).verified



def test_a_transcript_with_numbered_speakers_is_valid_training_data(tmp_path, rubric):
    from hcp.data.dataset import load_dataset, write_jsonl

    transcript = ("Speaker 1: Good morning, I'm Sam, the dietitian. How can I help?\n"
                  "Speaker 2: I've been told to cut down on salt but I don't know where to start.\n"
                  "Speaker 1: Keep sodium under 2,300 mg daily. Start by checking bread and soup labels.\n"
                  "Speaker 2: Okay, I can do that.")
    quote = "Speaker 1: Keep sodium under 2,300 mg daily."
    record = {"transcript": transcript, "empathy": 3, "clarity": 4, "accuracy": 4, "professionalism": 4,
              "reasoning": "Concrete advice on salt.", "strengths": ["Clear target"], "areas_for_improvement": ["Ask"],
              **{f"{dim}_evidence": [quote] for dim in rubric.names}}
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", [record]), rubric)
    assert data.ok, [p.message for p in data.problems]

# --- scoring: statuses in the result, --strict-evidence -------------------------------------------------------

QUOTED = {"empathy_evidence": ["RD: I understand this can be hard"],
          "clarity_evidence": ["RD: in your own words, what you'll try this week"],
          "accuracy_evidence": ["Dr Lee: Your HbA1c was 58 last month."],
          "professionalism_evidence": ["RD: I'm Sam, a registered dietitian", "RD: Is it okay if we talk"]}
INVENTED = {**QUOTED, "clarity_evidence": ["RD: Please write down everything you eat"]}


def test_every_quote_of_a_rating_is_checked_and_marked(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **INVENTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert list(result.evidence) == list(rubric.names)
    assert result.evidence["empathy"] == [{"speaker": "RD", "quote": "I understand this can be hard",
                                           "verified": True, "problem": None, "line": 3}]
    assert result.evidence["clarity"][0]["verified"] is False
    assert result.evidence["clarity"][0]["problem"] == "not_found"
    assert result.evidence_verified is False
    assert json.loads(json.dumps(result.to_json()))["evidence"]["professionalism"][1]["verified"] is True


def test_all_quotes_verified(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **QUOTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.evidence_verified is True


def test_without_evidence_in_the_schema_there_is_nothing_to_check(tmp_path):
    from hcp.config import load_config
    from hcp.rubric import Rubric

    rubric = Rubric(load_config().scoring.model_copy(update={"evidence": False}))
    backend = FakeBackend(GOOD_ANSWER)
    result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    assert "empathy_evidence" not in result.rating
    assert (result.evidence, result.evidence_verified, result.attempts) == ({}, None, 1)


def test_strict_evidence_retries_an_unverified_quote_with_a_new_seed(rubric, tmp_path):
    backend = FakeBackend({**GOOD_ANSWER, **INVENTED}, {**GOOD_ANSWER, **QUOTED})
    result = score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    assert result.attempts == 2 and result.evidence_verified is True
    assert [o.seed for _, o in backend.calls] == [42, 43]


def test_strict_evidence_reports_after_the_retries_without_quoting(rubric, tmp_path, caplog):
    backend = FakeBackend({**GOOD_ANSWER, **INVENTED})
    caplog.set_level(logging.DEBUG, logger="hcp")
    with pytest.raises(InvalidOutputError) as info:
        score_transcript(TRANSCRIPT, backend, rubric, ScoreOptions(raw_output_dir=tmp_path, strict_evidence=True))
    message = str(info.value)
    assert len(backend.calls) == 3
    assert "clarity_evidence[0]: quote not verified (not in the transcript)" in message
    assert "--strict-evidence" in message
    (saved,) = tmp_path.glob("hcp-invalid-output-*.json")
    assert "write down everything" in saved.read_text()  # the answers are kept for the user, in a private file
    said = message + "\n".join(r.getMessage() for r in caplog.records)
    for words in ("write down everything", "HbA1c", "understand this", "Sam"):
        assert words not in said


def test_without_strict_an_unverified_quote_is_a_rating_marked_unverified(rubric, tmp_path):
    result = score_transcript(TRANSCRIPT, FakeBackend({**GOOD_ANSWER, **INVENTED}), rubric,
                              ScoreOptions(raw_output_dir=tmp_path))
    assert result.attempts == 1 and result.evidence_verified is False


def test_check_evidence_reads_only_the_dimensions_asked(rubric):
    checks = check_evidence({**GOOD_ANSWER, **QUOTED}, TRANSCRIPT, ("empathy",))
    assert list(checks) == ["empathy"] and checks["empathy"][0].verified


def test_a_dimension_cannot_take_the_name_of_another_dimensions_evidence(tmp_path):
    from hcp.config import load_config
    from hcp.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  dimensions:\n    tone: {weight: 1, description: A}\n"
                    "    tone_evidence: {weight: 1, description: B}\n")
    with pytest.raises(ConfigError, match="tone_evidence.* taken by the evidence of dimension 'tone'"):
        load_config(path)


# --- the training target is exactly what the grammar forces, evidence on and off ----------------------------


@pytest.fixture(scope="module")
def vocab():
    """The embedded default model's vocabulary only (no weights, no threads): enough to run the grammar."""
    import llama_cpp

    from hcp.scoring.backends.llama_cpp import default_model_path

    return llama_cpp.Llama(str(default_model_path()), vocab_only=True, verbose=False)


def grammar_accepts(vocab, schema: dict, text: str) -> bool:
    """Whether llama.cpp's grammar for `schema` (the one scoring uses) lets a model write `text` and then stop:
    each token of the text is offered to the grammar sampler, then the end-of-generation token."""
    import ctypes

    import llama_cpp
    from llama_cpp import _internals

    from hcp.scoring.backends.sampling import _grammar

    checker = _internals.LlamaSampler()
    checker.add_grammar(vocab._model, _grammar(json.dumps(schema)))
    one = (llama_cpp.llama_token_data * 1)()
    candidates = llama_cpp.llama_token_data_array(data=ctypes.cast(one, llama_cpp.llama_token_data_p), size=1,
                                                  selected=-1, sorted=False)
    try:
        for token in [*vocab.tokenize(text.encode(), add_bos=False, special=False), vocab.token_eos()]:
            one[0].id, one[0].logit, one[0].p = token, 1.0, 0.0
            candidates.size, candidates.selected, candidates.sorted = 1, -1, False
            llama_cpp.llama_sampler_apply(checker.sampler, ctypes.byref(candidates))
            if one[0].logit == float("-inf"):
                return False
            llama_cpp.llama_sampler_accept(checker.sampler, token)
        return True
    finally:
        checker.close()


@pytest.mark.parametrize("evidence", [True, False])
def test_training_target_is_what_the_grammar_forces(vocab, tmp_path, evidence):
    from hcp.config import load_config
    from hcp.data.dataset import load_dataset, write_jsonl
    from hcp.data.sample import generate_samples
    from hcp.rubric import Rubric

    rubric = Rubric(load_config().scoring.model_copy(update={"evidence": evidence}))
    examples = load_dataset(write_jsonl(tmp_path / "s.jsonl", generate_samples(5, seed=3)), rubric).examples
    assert len(examples) == 5
    for example in examples:
        target = rubric.answer_text(example.rating())
        assert ("_evidence" in target) == evidence
        assert grammar_accepts(vocab, rubric.json_schema, target)
        # The check has teeth: the score before its quotes (evidence on), or quotes the schema does not ask for
        # (evidence off), are refused.
        data = json.loads(target)
        if evidence:
            wrong = {k: data[k] for k in ("reasoning", "strengths", "areas_for_improvement", "empathy")} | data
        else:
            keys = list(data)
            wrong = {**{k: data[k] for k in keys[:3]}, "empathy_evidence": ["RD: x y z"],
                     **{k: data[k] for k in keys[3:]}}
        assert not grammar_accepts(vocab, rubric.json_schema, json.dumps(wrong, ensure_ascii=False))


@pytest.mark.parametrize("command", ["score", "batch", "evaluate"])
def test_strict_evidence_is_an_option_of_every_command_that_rates(command):
    from click.testing import CliRunner

    from hcp.cli import cli

    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "--strict-evidence" in result.output
    assert "scoring.strict_evidence" in " ".join(result.output.split())
