"""Config loading: defaults, partial overrides, and one clear line per mistake."""

from __future__ import annotations

import pytest

from hcp.config import load_config
from hcp.errors import ConfigError


def write(tmp_path, text: str):
    path = tmp_path / "custom.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_follow_the_training_guide(config):
    assert config.training.learning_rate == 2e-4
    assert config.training.lora.r == 8 and config.training.lora.lora_alpha == 16
    assert list(config.scoring.dimensions) == ["empathy", "clarity", "accuracy", "professionalism"]
    weights = {k: d.weight for k, d in config.scoring.dimensions.items()}
    assert weights == {"empathy": 0.3, "clarity": 0.25, "accuracy": 0.25, "professionalism": 0.2}


def test_custom_file_overrides_only_what_it_names(tmp_path):
    cfg = load_config(write(tmp_path, "training:\n  lora:\n    r: 16\n  num_epochs: 5\n"))
    assert cfg.training.lora.r == 16 and cfg.training.num_epochs == 5
    assert cfg.training.lora.lora_alpha == 16  # untouched sibling keeps its default
    assert cfg.training.learning_rate == 2e-4
    assert len(cfg.scoring.dimensions) == 4


def test_dimensions_are_replaced_whole(tmp_path):
    cfg = load_config(write(tmp_path, """
scoring:
  dimensions:
    warmth: {weight: 2, description: "Is warm"}
    structure: {weight: 1, description: "Has structure", levels: {1: "None", 5: "Clear agenda"}}
"""))
    assert list(cfg.scoring.dimensions) == ["warmth", "structure"]
    assert cfg.scoring.dimensions["structure"].levels == {1: "None", 5: "Clear agenda"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("training:\n  lora:\n    r: 0\n", "training.lora.r: input should be greater than 0"),
        ("training:\n  learning_rate: -1\n", "training.learning_rate: input should be greater than 0"),
        ("training:\n  batch_size: two\n", "training.batch_size: input should be a valid integer"),
        ("training:\n  seed: -1\n", "training.seed: input should be greater than or equal to 0"),  # numpy's range
        ("training:\n  seed: 4294967296\n", "training.seed: input should be less than or equal to 4294967295"),
        ("training:\n  lerning_rate: 0.1\n", "training.lerning_rate: unknown key"),
        ("model:\n  temprature: 0.1\n", "model.temprature: unknown key"),
        ("scoring:\n  dimensions: {}\n", "scoring.dimensions: dictionary should have at least 1 item"),
        ("scoring:\n  dimensions:\n    empathy: {weight: 0, description: x}\n",
         "scoring.dimensions.empathy.weight: input should be greater than 0"),
        ("scoring:\n  dimensions:\n    empathy: {weight: -0.3, description: x}\n",
         "scoring.dimensions.empathy.weight: input should be greater than 0"),
        ("scoring:\n  dimensions:\n    empathy: {weight: 1}\n",
         "scoring.dimensions.empathy.description: field required"),
        ("scoring:\n  dimensions:\n    Empathy Score: {weight: 1, description: x}\n", "must be lowercase letters"),
        ("scoring:\n  dimensions:\n    reasoning: {weight: 1, description: x}\n", "is reserved"),
        ("scoring:\n  dimensions:\n    e: {weight: 1, description: 'say \"\"\"hi\"\"\"'}\n", "three double quotes"),
        ("scoring:\n  dimensions:\n    e: {weight: 1, description: x, levels: {9: nine}}\n", "level 9 is outside 1..5"),
        ("training:\n  lora:\n    bias: some\n", "training.lora.bias: input should be 'none', 'all' or 'lora_only'"),
        ("training: [1, 2]\n", "training: input should be a valid dictionary"),
        ("- just\n- a list\n", "the top level must be a mapping"),
        ("training:\n  lora: {r: 8\n", "line"),
    ],
)
def test_errors_name_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(str(path)), message
    assert expected in message, message
    assert "\n" not in message


@pytest.mark.parametrize("name", ["status", "seed", "evidence", "id", "model", "confidence", "overall_low",
                                  "transcript_sha256", "error"])
def test_a_dimension_may_not_take_the_name_of_a_record_field(tmp_path, name):
    """A dimension named like a results record's field would overwrite it (in the CSV row) or break the batch."""
    path = write(tmp_path, f"scoring:\n  dimensions:\n    {name}: {{weight: 1, description: x}}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert message.startswith(f"{path}: scoring.dimensions: dimension name '{name}' is reserved"), message
    assert "reserved: " in message and "status" in message and "\n" not in message


def test_a_dimension_may_not_take_the_confidence_column_of_another(tmp_path):
    path = write(tmp_path, "scoring:\n  dimensions:\n    tact: {weight: 1, description: x}\n"
                           "    tact_confidence: {weight: 1, description: y}\n")
    with pytest.raises(ConfigError, match="'tact_confidence' is taken by the confidence column of dimension 'tact'"):
        load_config(path)


def test_rubric_text_with_a_control_character_is_refused_naming_its_key(tmp_path):
    path = write(tmp_path, 'scoring:\n  dimensions:\n    tact:\n      weight: 1\n      description: "x"\n'
                           '      levels: {2: "rude\\x07 bell"}\n')
    with pytest.raises(ConfigError, match=r"scoring.dimensions.tact.levels: level 2: holds the character U\+0007, "
                                          "which an Ollama Modelfile cannot carry — remove it"):
        load_config(path)


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")


def test_empty_file_means_defaults(tmp_path):
    assert load_config(write(tmp_path, "")).training.lora.r == 8
