"""Typed configuration: the rubric, the model and the training defaults.

`configs/config.yaml` (packaged as `hcp/config.yaml`) holds the defaults. A user's file overrides only the
keys it names, merged key by key, except `scoring.dimensions`, which a user's file replaces whole so that
dimensions can be removed or renamed. Every section forbids unknown keys, and every error names the file
and the key path: `my.yaml: training.lora.r: input should be greater than 0`.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hcp.errors import ConfigError

DEFAULT_CONFIG_PATH = Path(__file__).with_name("config.yaml")

# A dimension's score sits beside other fields wherever a rating goes: the Rating schema's own fields, a data
# row's, and a results record's (`hcp batch`: hcp/batch/run.py, whose CSV row spreads the rating over the
# record), so a dimension named like one of them would overwrite it. tests/test_batch.py checks that every key
# of a real record and every column of its CSV is reserved here.
RATING_FIELDS = ("reasoning", "strengths", "areas_for_improvement")
ROW_FIELDS = ("id", "transcript")
RECORD_FIELDS = (
    "status", "rating", "overall", "evidence", "evidence_verified", "error", "reason", "source",  # the outcome
    "backend", "model", "model_digest", "server", "model_note", "rubric", "transcript_sha256",  # who rated what
    "model_version",
    "seed", "temperature", "num_ctx", "repeat_penalty", "max_retries", "answer_tokens", "strict_evidence",
    "prompt_tokens", "output_tokens", "seconds", "attempts",
    "needs_review", "review_reasons", "distribution", "expected", "confidence", "overall_expected",
    "overall_interval", "overall_low", "overall_high",  # the score distribution, and the CSV's interval columns
)
RESERVED_NAMES = frozenset({*RATING_FIELDS, *ROW_FIELDS, *RECORD_FIELDS})
EVIDENCE_SUFFIX = "_evidence"  # '<dimension>_evidence': the rating's quotes for that dimension
CONFIDENCE_SUFFIX = "_confidence"  # '<dimension>_confidence': a results CSV's column of its confidence
DIMENSION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
# Room for the answer when scoring. SmolLM2-135M's answers to the sample transcripts under the default rubric
# measured 84-277 tokens at temperature 0 (see README); 1024 leaves a wide margin and still lets a transcript of
# ~6,400 tokens into an 8,192-token context. The schema's longest answer is ~3,170 tokens.
DEFAULT_ANSWER_TOKENS = 1024


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Section):
    name: str = Field("mistralai/Mistral-7B-Instruct-v0.3", description="Base model: HF dir, hub id or .gguf file")
    max_length: int = Field(4096, gt=0, description="Longest training example in tokens (prompt + answer)")
    temperature: float = Field(0.0, ge=0, le=2, description="Sampling temperature when scoring")
    load_in_4bit: bool = Field(False, description="QLoRA: load the base in 4 bits (bitsandbytes, CUDA only)")
    device_map: str = Field("auto", description="Where to put the model: auto, cpu, cuda, ...")
    num_ctx: int = Field(8192, ge=512, description="Context window (tokens) used when scoring")
    repeat_penalty: float = Field(1.1, ge=1.0, le=2.0, description="Penalty on repeated tokens when scoring")
    answer_tokens: int = Field(
        DEFAULT_ANSWER_TOKENS, ge=32,
        description="Tokens reserved in the context for the answer, and the most it may run to (num_predict); "
                    "an answer cut off at it is invalid: retried, then reported")
    allow_remote: bool = Field(
        False, description="Allow an Ollama host off this machine: transcripts, and an exported model, are sent there")
    gradient_checkpointing: bool = Field(True, description="Trade compute for memory in training")


class LoraSection(Section):
    r: int = Field(8, gt=0, description="LoRA rank")
    lora_alpha: float = Field(16, gt=0, description="LoRA scaling numerator (scale = alpha / r)")
    lora_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout on the LoRA input")
    bias: Literal["none", "all", "lora_only"] = Field("none", description="Which biases to train")
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        min_length=1,
        description="Names of the linear layers to adapt",
    )


class TrainingConfig(Section):
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate")
    num_epochs: float = Field(3, gt=0, description="Passes over the training data")
    batch_size: int = Field(2, gt=0, description="Examples per device per step")
    gradient_accumulation_steps: int = Field(4, gt=0, description="Steps accumulated before an update")
    # Unset (null): derived from the run's length, so that a short run still warms up, evaluates and saves.
    warmup_steps: int | None = Field(
        None, ge=0, description="Linear warm-up of the learning rate, in steps (null: ~5% of the run's steps)")
    save_steps: int | None = Field(
        None, gt=0, description="Checkpoint every N optimizer steps (null: eval_steps, else ~10% of the run's steps)")
    eval_steps: int | None = Field(
        None, gt=0, description="Evaluate on the validation split every N steps (null: save_steps, else ~10% of "
                                "the run's steps)")
    logging_steps: int = Field(10, gt=0, description="Log the loss every N steps")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="Share of the data held out for validation")
    seed: int = Field(42, ge=0, le=2**32 - 1,  # numpy's seeds, which transformers' set_seed sets too
                      description="Seed for shuffling, splits and initialisation")
    lora: LoraSection = Field(default_factory=LoraSection)


class DimensionConfig(Section):
    weight: float = Field(gt=0, description="Weight in the overall score (normalised over all dimensions)")
    description: str = Field(min_length=1, description="What the dimension measures, in one line")
    levels: dict[int, str] = Field(default_factory=dict, description="Descriptors of some score levels")

    @field_validator("description")
    @classmethod
    def _one_line(cls, value: str) -> str:
        return _rubric_text(value)

    @field_validator("levels")
    @classmethod
    def _level_texts(cls, levels: dict[int, str]) -> dict[int, str]:
        texts = {}
        for level, text in sorted(levels.items()):
            try:
                texts[level] = _rubric_text(text)
            except ValueError as exc:  # the error's key path ends at 'levels': name the level
                raise ValueError(f"level {level}: {exc}") from None
        return texts


def modelfile_drops(char: str) -> bool:
    """Whether Ollama's Modelfile parser drops `char` from a triple-quoted block: it keeps only what Go's IsPrint
    (strconv) calls printable (letters, marks, numbers, punctuation, symbols, the ASCII space), tabs, line breaks."""
    return char not in " \t\n\r" and unicodedata.category(char)[0] not in "LMNPS"


def _rubric_text(value: str) -> str:
    """Rubric text goes into the system prompt and a Modelfile SYSTEM block: one line, no triple quote, and
    nothing Ollama's Modelfile parser would drop, so that the prompt Ollama gives the model is training's."""
    text = " ".join(value.split())  # a no-break, thin or ideographic space becomes a plain one
    # Invisible format characters (zero-width spaces and joiners, soft hyphens, a BOM, direction marks) go.
    text = "".join(char for char in text if unicodedata.category(char) != "Cf")
    dropped = next((char for char in text if modelfile_drops(char)), None)
    if dropped is not None:
        raise ValueError(f"holds the character U+{ord(dropped):04X}, which an Ollama Modelfile cannot carry — "
                         "remove it")
    if not text:
        raise ValueError("must not be blank")
    if '"""' in text:
        raise ValueError('must not contain three double quotes in a row (a Modelfile SYSTEM block cannot hold them)')
    return text


class ScoringConfig(Section):
    score_min: int = Field(1, description="Lowest score of every dimension")
    score_max: int = Field(5, description="Highest score of every dimension")
    dimensions: dict[str, DimensionConfig] = Field(min_length=1, description="The rubric's dimensions, in order")
    reasoning_max_chars: int = Field(1000, ge=50, description="Longest reasoning the rating schema allows")
    list_max_items: int = Field(5, ge=1, le=20, description="Most strengths / areas for improvement")
    item_max_chars: int = Field(200, ge=10, description="Longest single strength or area for improvement")
    evidence: bool = Field(
        True, description="The rating quotes, before each score, the transcript lines it rests on "
                          "('<dimension>_evidence'); training data must then carry them too. false: no evidence")
    evidence_max_items: int = Field(3, ge=1, le=10, description="Most quotes per dimension")
    evidence_max_chars: int = Field(200, ge=20, description="Longest single quote, speaker included")
    strict_evidence: bool = Field(
        False, description="A rating with a quote not found in the transcript is invalid: retried with a new "
                           "seed, then reported (as --strict-evidence)")
    confidence_threshold: float = Field(
        0.5, ge=0, le=1, description="A rating needs review when a dimension's confidence (the probability of its "
        "chosen score) is below this")
    interval_level: float = Field(0.9, gt=0, lt=1, description="Coverage of the overall score's interval")

    @field_validator("dimensions")
    @classmethod
    def _names(cls, dims: dict[str, DimensionConfig]) -> dict[str, DimensionConfig]:
        for name in dims:
            if not DIMENSION_NAME.match(name):
                raise ValueError(f"dimension name {name!r} must be lowercase letters, digits and '_'")
            if name in RESERVED_NAMES:
                raise ValueError(f"dimension name {name!r} is reserved for a field of every rating, data row or "
                                 f"results record — rename it (reserved: {', '.join(sorted(RESERVED_NAMES))})")
            for suffix, what in ((EVIDENCE_SUFFIX, "evidence"), (CONFIDENCE_SUFFIX, "confidence column")):
                if name.endswith(suffix) and name[: -len(suffix)] in dims:
                    raise ValueError(f"dimension name {name!r} is taken by the {what} of dimension "
                                     f"{name[: -len(suffix)]!r} — rename it")
        return dims

    @model_validator(mode="after")
    def _levels_in_range(self) -> ScoringConfig:
        if not 0 <= self.score_min < self.score_max <= 10:
            raise ValueError(f"score range {self.score_min}..{self.score_max} must satisfy 0 <= min < max <= 10")
        for name, dim in self.dimensions.items():
            for level in dim.levels:
                if not self.score_min <= level <= self.score_max:
                    raise ValueError(
                        f"dimensions.{name}.levels: level {level} is outside {self.score_min}..{self.score_max}"
                    )
        return self


class Config(Section):
    model: ModelConfig = Field(default_factory=ModelConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    scoring: ScoringConfig


def _merge(base: dict[str, Any], override: dict[str, Any], path: str = "") -> dict[str, Any]:
    """Override `base` key by key; `scoring.dimensions` is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        here = f"{path}.{key}" if path else key
        if isinstance(value, dict) and isinstance(base.get(key), dict) and here != "scoring.dimensions":
            merged[key] = _merge(base[key], value, here)
        else:
            merged[key] = value
    return merged


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found — check the path given to --config") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.__class__.__name__})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid YAML"
        raise ConfigError(f"{path}:{where}: {problem} — fix the YAML syntax") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping with keys model, training, scoring")
    return data


def format_validation_error(source: str, error: ValidationError) -> str:
    """One line per problem, joined: `file: key.path: message`."""
    parts = []
    for item in error.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        message = item["msg"]
        message = message[0].lower() + message[1:]
        if item["type"] == "extra_forbidden":
            message = "unknown key — check its spelling against configs/config.yaml"
        elif message.startswith("value error, "):
            message = message[len("value error, ") :]
        parts.append(f"{loc}: {message}")
    return f"{source}: " + "; ".join(parts)


def load_config(path: str | Path | None = None) -> Config:
    """Load the default config, with the file at `path` (if any) merged on top."""
    if path is None:
        return config_from_data({}, str(DEFAULT_CONFIG_PATH))
    return config_from_data(_read_yaml(Path(path)), str(path))


def config_from_data(data: dict[str, Any], source: str) -> Config:
    """The config that a file holding `data` (parsed YAML) gives: the defaults with it merged on top."""
    try:
        return Config.model_validate(_merge(_read_yaml(DEFAULT_CONFIG_PATH), data))
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc)) from None
