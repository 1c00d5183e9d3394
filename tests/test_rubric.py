"""The rubric's derived pieces: prompt, schema, answer text and the overall score."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hcp.config import load_config
from hcp.rubric import Rubric

SCORES = {"empathy": 5, "clarity": 4, "accuracy": 3, "professionalism": 2}
RATING = {"reasoning": "Warm and clear.", "strengths": ["Warm"], "areas_for_improvement": ["Ask more"],
          **{f"{dim}_evidence": [f"RD: words for {dim}"] for dim in SCORES}, **SCORES}
PRE_EVIDENCE_DIGEST = "6e1006981b5dca07"  # the default rubric's digest before evidence existed


@pytest.fixture(scope="module")
def rubric_without_evidence() -> Rubric:
    config = load_config()
    return Rubric(config.scoring.model_copy(update={"evidence": False}))


def test_schema_is_flat_and_explains_before_scoring(rubric):
    schema = rubric.json_schema
    assert "$defs" not in schema and "$ref" not in json.dumps(schema) and "anyOf" not in json.dumps(schema)
    keys = list(schema["properties"])
    # Each dimension's quotes come right before its score: key order is generation order.
    assert keys == ["reasoning", "strengths", "areas_for_improvement", "empathy_evidence", "empathy",
                    "clarity_evidence", "clarity", "accuracy_evidence", "accuracy", "professionalism_evidence",
                    "professionalism"]
    assert schema["required"] == keys
    for name in rubric.names:
        prop = schema["properties"][f"{name}_evidence"]
        assert (prop["type"], prop["minItems"], prop["maxItems"]) == ("array", 1, 3)
        assert prop["items"] == {"type": "string", "minLength": 1, "maxLength": 200}  # flat: no object, no $ref
    for name in rubric.names:
        assert schema["properties"][name]["type"] == "integer"
        assert schema["properties"][name]["enum"] == [1, 2, 3, 4, 5]
    for name in ("strengths", "areas_for_improvement"):
        prop = schema["properties"][name]
        assert (prop["minItems"], prop["maxItems"], prop["items"]["maxLength"]) == (1, 5, 200)
    assert schema["properties"]["reasoning"]["maxLength"] == 1000


def test_evidence_off_gives_the_schema_and_prompt_from_before_evidence(rubric_without_evidence, rubric):
    """scoring.evidence: false is exactly the rubric that models trained before evidence existed were made for."""
    keys = list(rubric_without_evidence.json_schema["properties"])
    assert keys == ["reasoning", "strengths", "areas_for_improvement", "empathy", "clarity", "accuracy",
                    "professionalism"]
    assert rubric_without_evidence.digest == PRE_EVIDENCE_DIGEST != rubric.digest
    assert "_evidence" not in rubric_without_evidence.system_prompt
    assert '"<dimension>_evidence"' in rubric.system_prompt and "word for word" in rubric.system_prompt


def test_llama_cpp_accepts_the_schema(rubric):
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    gbnf = llama_grammar.json_schema_to_gbnf(json.dumps(rubric.json_schema))
    assert "root ::=" in gbnf
    grammar = llama_grammar.LlamaGrammar.from_string(gbnf, verbose=False)
    assert grammar is not None


@pytest.mark.parametrize(
    "scores, expected",
    [
        ({"empathy": 5, "clarity": 4, "accuracy": 3, "professionalism": 2}, 3.65),  # 1.5 + 1.0 + 0.75 + 0.4
        ({"empathy": 1, "clarity": 1, "accuracy": 1, "professionalism": 1}, 1.0),
        ({"empathy": 5, "clarity": 5, "accuracy": 5, "professionalism": 5}, 5.0),
        ({"empathy": 1, "clarity": 5, "accuracy": 5, "professionalism": 5}, 3.8),  # 0.3 + 3.5
    ],
)
def test_overall_is_the_weighted_mean(rubric, scores, expected):
    assert rubric.overall({**RATING, **scores}) == pytest.approx(expected)


def test_weights_are_normalised(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  dimensions:\n    a: {weight: 3, description: A}\n    b: {weight: 1, description: B}\n")
    rub = Rubric.from_config(load_config(path))
    assert [d.weight for d in rub.dimensions] == [0.75, 0.25]
    assert rub.overall({"a": 4, "b": 2}) == 3.5
    assert list(rub.json_schema["properties"])[-4:] == ["a_evidence", "a", "b_evidence", "b"]


def test_answer_text_is_schema_order_and_round_trips(rubric):
    shuffled = dict(reversed(list(RATING.items())))
    text = rubric.answer_text(shuffled)
    assert text.startswith('{"reasoning": "Warm and clear.", "strengths": ["Warm"]')
    assert '"empathy_evidence": ["RD: words for empathy"], "empathy": 5, "clarity_evidence"' in text
    assert rubric.validate_json(text).model_dump() == RATING


def test_answer_text_without_evidence_leaves_out_the_quotes_a_record_has(rubric_without_evidence):
    """A record that carries evidence still trains with scoring.evidence off: the target is what that schema
    forces, without the quotes."""
    text = rubric_without_evidence.answer_text(RATING)
    assert "_evidence" not in text
    assert rubric_without_evidence.validate_json(text).model_dump() == {
        k: v for k, v in RATING.items() if not k.endswith("_evidence")}


@pytest.mark.parametrize(
    "change, reason",
    [
        ({"empathy": 6}, "score above the range"),
        ({"empathy": 0}, "score below the range"),
        ({"empathy": 4.5}, "fractional score"),
        ({"strengths": []}, "no strengths"),
        ({"strengths": ["x"] * 6}, "too many strengths"),
        ({"reasoning": "x" * 1001}, "reasoning too long"),
        ({"extra": 1}, "unknown key"),
        ({"empathy_evidence": []}, "no quote for a dimension"),
        ({"empathy_evidence": ["RD: a"] * 4}, "too many quotes"),
        ({"empathy_evidence": ["RD: " + "x" * 197]}, "quote too long"),
        ({"empathy_evidence": [""]}, "empty quote"),
        ({"empathy_evidence": "RD: a"}, "a string, not a list"),
    ],
)
def test_validation_rejects(rubric, change, reason):
    with pytest.raises(ValidationError):
        rubric.validate_json(json.dumps({**RATING, **change}))


@pytest.mark.parametrize("key", ["accuracy", "accuracy_evidence"])
def test_missing_key_rejected(rubric, key):
    data = dict(RATING)
    del data[key]
    with pytest.raises(ValidationError):
        rubric.validate_json(json.dumps(data))


def test_the_longest_answer_counts_the_quotes(rubric, rubric_without_evidence):
    assert rubric.max_answer_chars - rubric_without_evidence.max_answer_chars >= 4 * 3 * 200


def test_system_prompt_carries_the_rubric(rubric):
    prompt = rubric.system_prompt
    for dim in rubric.dimensions:
        assert dim.name in prompt and dim.description in prompt
    assert "weight 0.30" in prompt and "1 to 5" not in prompt.split("Answer")[0]
    assert '"""' not in prompt
    messages = rubric.messages("  RD: Hi.\r\nPatient: Hello.  ")
    assert messages[0] == {"role": "system", "content": prompt}
    assert messages[1]["content"].endswith("Transcript:\nRD: Hi.\nPatient: Hello.")


def test_digest_changes_with_the_rubric(tmp_path, rubric):
    path = tmp_path / "c.yaml"
    path.write_text("scoring:\n  dimensions:\n    empathy: {weight: 1, description: Kind}\n")
    assert Rubric.from_config(load_config(path)).digest != rubric.digest
