"""The rubric's derived pieces: prompt, schema, answer text and the overall score."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from hcp.config import load_config
from hcp.rubric import Rubric

RATING = {"reasoning": "Warm and clear.", "strengths": ["Warm"], "areas_for_improvement": ["Ask more"],
          "empathy": 5, "clarity": 4, "accuracy": 3, "professionalism": 2}


def test_schema_is_flat_and_explains_before_scoring(rubric):
    schema = rubric.json_schema
    assert "$defs" not in schema and "$ref" not in json.dumps(schema) and "anyOf" not in json.dumps(schema)
    keys = list(schema["properties"])
    assert keys == ["reasoning", "strengths", "areas_for_improvement", "empathy", "clarity", "accuracy",
                    "professionalism"]
    assert schema["required"] == keys
    for name in rubric.names:
        assert schema["properties"][name]["type"] == "integer"
        assert schema["properties"][name]["enum"] == [1, 2, 3, 4, 5]
    for name in ("strengths", "areas_for_improvement"):
        prop = schema["properties"][name]
        assert (prop["minItems"], prop["maxItems"], prop["items"]["maxLength"]) == (1, 5, 200)
    assert schema["properties"]["reasoning"]["maxLength"] == 1000


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
    assert list(rub.json_schema["properties"])[-2:] == ["a", "b"]


def test_answer_text_is_schema_order_and_round_trips(rubric):
    shuffled = dict(reversed(list(RATING.items())))
    text = rubric.answer_text(shuffled)
    assert text.startswith('{"reasoning": "Warm and clear.", "strengths": ["Warm"]')
    assert rubric.validate_json(text).model_dump() == RATING


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
    ],
)
def test_validation_rejects(rubric, change, reason):
    with pytest.raises(ValidationError):
        rubric.validate_json(json.dumps({**RATING, **change}))


def test_missing_key_rejected(rubric):
    data = dict(RATING)
    del data["accuracy"]
    with pytest.raises(ValidationError):
        rubric.validate_json(json.dumps(data))


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
