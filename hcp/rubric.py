"""The rubric, and everything derived from it.

`scoring` in the config is the one source of truth. From it come:
- the system prompt (the same text in training, in the Modelfile's SYSTEM and in embedded scoring),
- the pydantic `Rating` model, whose JSON schema constrains generation and whose validator checks answers,
- the answer text a model is trained to produce (`Rubric.answer_text`: the JSON the grammar will force),
- the weighted overall score.

The schema is flat and ordered as the model should write it: first the reasoning, strengths and areas for
improvement, then one integer score per dimension, so the model explains before it scores. With
`scoring.evidence` on, each score is preceded by its own evidence, `<dim>_evidence`: a list of transcript lines
written as 'Speaker: words' (`hcp/evidence.py` checks them). A flat list of strings, not objects with a speaker
and a quote: Ollama's and llama.cpp's grammars need a flat schema, and a line copied as the transcript writes it
is what a small model copies most faithfully. With evidence off, prompt and schema are exactly what they were
before evidence existed, so models trained then keep their rubric digest.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from hcp.config import Config, ScoringConfig
from hcp.evidence import evidence_key

SYSTEM_INTRO = (
    "You are an expert evaluator of how healthcare providers communicate with patients. "
    "You read a transcript of a consultation and rate the provider's side of it: the lines spoken by the "
    "provider (for example 'RD:' for a registered dietitian), not the patient's."
)
SYSTEM_ANSWER = (
    "Answer with one JSON object and nothing else. Write its keys in this order: "
    '"reasoning" (a short explanation of the scores that points to what the provider said), '
    '"strengths" (1 to {n} short phrases), "areas_for_improvement" (1 to {n} short phrases), '
    "then one whole-number score from {lo} to {hi} for each dimension: {keys}."
)
SYSTEM_ANSWER_EVIDENCE = (
    "Answer with one JSON object and nothing else. Write its keys in this order: "
    '"reasoning" (a short explanation of the scores that points to what the provider said), '
    '"strengths" (1 to {n} short phrases), "areas_for_improvement" (1 to {n} short phrases), '
    'then for each dimension in turn: first "<dimension>_evidence" (1 to {m} lines of the transcript the score '
    "rests on, each copied word for word after its speaker's label as the transcript writes it, as "
    "'Label: words'), then \"<dimension>\" "
    "(a whole-number score from {lo} to {hi}). The dimensions, in order: {keys}."
)
USER_TEMPLATE = "Rate the provider in this transcript.\n\nTranscript:\n{transcript}"


@dataclass(frozen=True)
class Dimension:
    name: str
    weight: float  # normalised: the weights of a rubric sum to 1
    description: str
    levels: dict[int, str]


def normalize_transcript(text: str) -> str:
    """The transcript exactly as the model sees it, in training and in scoring."""
    return text.replace("\r\n", "\n").replace("\r", "\n").strip()


class Rubric:
    """The scoring rubric of a config, with the prompt, schema and arithmetic derived from it."""

    def __init__(self, scoring: ScoringConfig) -> None:
        total = sum(d.weight for d in scoring.dimensions.values())
        self.scoring = scoring
        self.score_min = scoring.score_min
        self.score_max = scoring.score_max
        self.dimensions = tuple(
            Dimension(name, d.weight / total, d.description, dict(d.levels)) for name, d in scoring.dimensions.items()
        )

    @classmethod
    def from_config(cls, config: Config) -> Rubric:
        return cls(config.scoring)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dimensions)

    @property
    def scores(self) -> tuple[int, ...]:
        return tuple(range(self.score_min, self.score_max + 1))

    def check_score(self, value: Any, *, from_text: bool = False, whole_floats: bool = False) -> int | str:
        """A human score as a whole number on the rubric's scale, or what is wrong with it (quoting at most a
        few characters). `from_text`: the value may be a number written as text (a CSV cell); `whole_floats`:
        4.0 counts as 4 (numbers from another program's output). A model's score needs neither: the `Rating`
        schema allows exactly `self.scores`."""
        lo, hi = self.score_min, self.score_max
        if value is None or (isinstance(value, str) and not value.strip()):
            return f"missing — give a whole number from {lo} to {hi}"
        if from_text and isinstance(value, str) and re.fullmatch(r"\s*[+-]?\d+\s*", value):
            value = int(value)
        elif whole_floats and isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, (int, float)):
                shown = str(value)
            else:
                shown = value.strip() if from_text and isinstance(value, str) else repr(value)
            return f"must be a whole number from {lo} to {hi}, got {shown[:20]}"
        if not lo <= value <= hi:
            return f"score {value} is outside {lo}..{hi}"
        return value

    @cached_property
    def system_prompt(self) -> str:
        lines = [SYSTEM_INTRO, "", "Rubric:"]
        for dim in self.dimensions:
            lines.append(f"- {dim.name} (weight {dim.weight:.2f}): {dim.description}.".replace("..", "."))
            lines.extend(f"  {level}: {text}" for level, text in sorted(dim.levels.items()))
        keys = ", ".join(f'"{n}"' for n in self.names)
        n = self.scoring.list_max_items
        answer = SYSTEM_ANSWER_EVIDENCE if self.scoring.evidence else SYSTEM_ANSWER
        lines += ["", answer.format(n=n, m=self.scoring.evidence_max_items, lo=self.score_min, hi=self.score_max,
                                    keys=keys)]
        return "\n".join(lines)

    def user_prompt(self, transcript: str) -> str:
        return USER_TEMPLATE.format(transcript=normalize_transcript(transcript))

    def messages(self, transcript: str) -> list[dict[str, str]]:
        """The chat a model sees for one transcript (training appends the answer as the assistant turn)."""
        return [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": self.user_prompt(transcript)},
        ]

    @cached_property
    def rating_model(self) -> type[BaseModel]:
        """The pydantic model of one rating; field order is generation order."""
        s = self.scoring
        item = Annotated[str, Field(min_length=1, max_length=s.item_max_chars)]
        phrases = Annotated[list[item], Field(min_length=1, max_length=s.list_max_items)]  # type: ignore[valid-type]
        score = Literal[self.scores]  # type: ignore[valid-type]
        fields: dict[str, Any] = {
            "reasoning": (str, Field(min_length=1, max_length=s.reasoning_max_chars)),
            "strengths": (phrases, ...),
            "areas_for_improvement": (phrases, ...),
        }
        quote = Annotated[str, Field(min_length=1, max_length=s.evidence_max_chars)]
        quotes = Annotated[list[quote], Field(min_length=1, max_length=s.evidence_max_items)]  # type: ignore[valid-type]
        for dim in self.dimensions:
            if s.evidence:  # right before the score it supports: key order is generation order
                fields[evidence_key(dim.name)] = (quotes, ...)
            fields[dim.name] = (score, Field(description=dim.description))
        return create_model("Rating", __config__=ConfigDict(extra="forbid"), **fields)

    @property
    def evidence_keys(self) -> dict[str, str]:
        """{dimension: its evidence key} when the schema asks for evidence, else {}."""
        return {n: evidence_key(n) for n in self.names} if self.scoring.evidence else {}

    @cached_property
    def json_schema(self) -> dict[str, Any]:
        return self.rating_model.model_json_schema()

    @cached_property
    def max_answer_chars(self) -> int:
        """Length of the longest answer the schema allows, in characters (an upper bound for output tokens)."""
        s = self.scoring
        keys = sum(len(k) + 6 for k in self.json_schema["properties"])
        lists = 2 * s.list_max_items * (s.item_max_chars + 4)
        scores = len(self.dimensions) * len(str(self.score_max))
        quotes = len(self.evidence_keys) * s.evidence_max_items * (s.evidence_max_chars + 4)
        return keys + s.reasoning_max_chars + lists + quotes + scores + 8

    def validate_json(self, text: str) -> BaseModel:
        """Parse and check a model's answer; raises pydantic.ValidationError."""
        return self.rating_model.model_validate_json(text)

    def answer_text(self, rating: dict[str, Any] | BaseModel) -> str:
        """The exact text a model is trained to answer with: the schema's key order, one space after ':' and ','."""
        data = rating.model_dump() if isinstance(rating, BaseModel) else rating
        ordered = {key: data[key] for key in self.json_schema["properties"]}
        return json.dumps(ordered, ensure_ascii=False)

    def overall(self, rating: dict[str, Any] | BaseModel) -> float:
        """Weighted mean of the dimension scores, rounded to two decimals."""
        data = rating.model_dump() if isinstance(rating, BaseModel) else rating
        return round(sum(d.weight * data[d.name] for d in self.dimensions), 2)

    @cached_property
    def digest(self) -> str:
        """Identifies the rubric (prompt and schema) in artifacts' provenance."""
        blob = self.system_prompt + USER_TEMPLATE + json.dumps(self.json_schema, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
