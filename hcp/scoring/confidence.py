"""A distribution over each dimension's scores, and what follows from it: the expected score, a confidence,
an interval for the overall score, and whether a rating needs a person's review.

The backends give, per dimension, the probability of each allowed score at the position where the score was
written (`Generation.score_distribution`): llama.cpp from the raw logits, Ollama and OpenAI-compatible servers
from `top_logprobs`. Either way the probabilities are renormalised over the score tokens the schema allows (the
model's own belief at temperature 1, before the repeat penalty and the sampler), so they sum to 1 over the scale.

Definitions (README "Confidence and needs_review"):
- expected score: sum of score x probability (G-Eval's probability-weighted score);
- confidence of a dimension: the probability of the score that was chosen (rounded to 3 decimals);
- confidence of a rating: the lowest of its dimensions' (`rating_confidence`). A rating needs review for low
  confidence exactly when it is below `scoring.confidence_threshold` — one reason per dimension below it — so a
  threshold that `hcp evaluate --target-agreement` guarantees (`hcp.evaluate.threshold`) keeps exactly the
  ratings at or above it;
- overall interval: the central `level` interval of the weighted sum of the dimension scores, with the
  dimensions taken as independent (an exact convolution: 5^4 combinations for four dimensions on 1..5).
No library we looked at (scipy.stats, numpy) convolves discrete distributions on arbitrary supports with a
quantile, so the few lines are written here.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

Distribution = dict[int, float]  # score -> probability, summing to 1 over the scores seen

LOW_CONFIDENCE = "low_confidence"  # the reason code of a dimension whose confidence is under the threshold


def renormalise(logprobs: Mapping[int, float]) -> Distribution:
    """Softmax over the given scores' log-probabilities (or raw logits): probabilities that sum to 1."""
    if not logprobs:
        return {}
    top = max(logprobs.values())
    weights = {score: math.exp(value - top) for score, value in logprobs.items()}
    total = sum(weights.values())
    return {score: weights[score] / total for score in sorted(weights)}


def logsumexp(values: Iterable[float]) -> float:
    values = list(values)
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def expected_score(distribution: Mapping[int, float]) -> float:
    return sum(score * p for score, p in distribution.items())


def chosen_confidence(distribution: Mapping[int, float], chosen: int) -> float:
    """The probability of the score that was chosen (0 when the distribution gives it none)."""
    return distribution.get(chosen, 0.0)


def rating_confidence(confidence: Mapping[str, float]) -> float:
    """A rating's confidence: the lowest of its dimensions' confidences."""
    return min(confidence.values())


def low_confidence_reasons(confidence: Mapping[str, float], threshold: float) -> list[str]:
    """`low_confidence:<dimension>` for each dimension whose confidence is below the threshold: none exactly when
    the rating's confidence is at or above it."""
    return [f"{LOW_CONFIDENCE}:{name}" for name, c in confidence.items() if c < threshold]


def weighted_sum_distribution(distributions: Sequence[Mapping[int, float]],
                              weights: Sequence[float]) -> dict[float, float]:
    """The distribution of sum(weight_i * score_i), the scores independent (an exact convolution)."""
    result: dict[float, float] = {0.0: 1.0}
    for distribution, weight in zip(distributions, weights, strict=True):
        step: dict[float, float] = {}
        for total, p in result.items():
            for score, q in distribution.items():
                value = round(total + weight * score, 9)  # merge sums equal but for float rounding
                step[value] = step.get(value, 0.0) + p * q
        result = step
    return result


def central_interval(distribution: Mapping[float, float], level: float) -> tuple[float, float]:
    """The smallest values whose cumulative probability reaches (1-level)/2 and (1+level)/2."""
    tail = (1 - level) / 2
    values = sorted(distribution)
    cumulative, low, high = 0.0, values[0], values[-1]
    found_low = False
    for value in values:
        cumulative += distribution[value]
        if not found_low and cumulative >= tail - 1e-12:
            low, found_low = value, True
        if cumulative >= 1 - tail - 1e-12:
            high = value
            break
    return low, high


@dataclass(frozen=True)
class Summary:
    distribution: dict[str, Distribution]
    expected: dict[str, float]
    confidence: dict[str, float]
    overall_expected: float
    overall_interval: tuple[float, float]
    review_reasons: list[str]


def summarize(rating: Mapping[str, object], distributions: Mapping[str, Mapping[int, float]],
              weights: Mapping[str, float], *, threshold: float, level: float) -> Summary | None:
    """What a rating's distributions say, or None when any dimension has none (the backend gave none)."""
    if any(not distributions.get(name) for name in weights):
        return None
    dists = {name: {int(s): float(p) for s, p in sorted(distributions[name].items())} for name in weights}
    expected = {name: round(expected_score(d), 3) for name, d in dists.items()}
    confidence = {name: round(chosen_confidence(d, int(rating[name])), 3) for name, d in dists.items()}  # type: ignore[call-overload]
    overall = weighted_sum_distribution(list(dists.values()), [weights[n] for n in dists])
    low, high = central_interval(overall, level)
    reasons = low_confidence_reasons(confidence, threshold)
    return Summary(
        distribution={n: {s: round(p, 4) for s, p in d.items()} for n, d in dists.items()},
        expected=expected, confidence=confidence,
        overall_expected=round(sum(weights[n] * e for n, e in expected.items()), 2),
        overall_interval=(round(low, 2), round(high, 2)), review_reasons=reasons,
    )


# --- reading score distributions off a list of generated tokens (Ollama, OpenAI-compatible servers) ----------


@dataclass(frozen=True)
class TokenStep:
    """One generated token as an engine reports it: its text, log-probability, and the top alternatives."""

    text: str
    logprob: float
    top: tuple[tuple[str, float], ...]


_SCORE_TOKEN = re.compile(r"^(\s*)(\d+)$")


def score_fields(schema: Mapping[str, object]) -> dict[str, list[int]]:
    """The rating schema's score fields and their allowed scores (integer enums, in generation order), when
    every score is one digit: a score of 10 would be written '1' then '0', and the '1' would be read as a 1."""
    properties = schema.get("properties")
    fields: dict[str, list[int]] = {}
    for name, spec in (properties.items() if isinstance(properties, Mapping) else ()):
        enum = spec.get("enum") if isinstance(spec, Mapping) else None
        if isinstance(enum, list) and enum and all(isinstance(v, int) and not isinstance(v, bool) for v in enum):
            fields[name] = sorted(enum)
    if any(not 0 <= v <= 9 for values in fields.values() for v in values):
        return {}
    return fields


def key_before(text: str, names: Iterable[str]) -> tuple[str, str] | None:
    """(dimension, whitespace after its colon) when `text` ends with a dimension's key and colon outside a
    string — `..., "empathy": ` — else None. A key in the answer's JSON follows '{', ',' or whitespace; a quote
    inside a string is escaped, so `\\"empathy\\":` in a reasoning never matches."""
    match = re.search(r'(?:^|[{,\s])"([a-z0-9_]+)"\s*:(\s*)$', text)
    if match and match.group(1) in set(names):
        return match.group(1), match.group(2)
    return None


def allowed_whitespace(before: str, own: str) -> bool:
    """Whether whitespace `own` in a token may follow whitespace `before` after a key's colon: JSON grammars
    (llama.cpp's converter, which Ollama's follows) allow at most one space, or a newline and indentation."""
    ws = before + own
    return ws in ("", " ") or ws.startswith("\n")


def distributions_from_steps(steps: Sequence[TokenStep], names: Sequence[str],
                             scores: Sequence[int]) -> dict[str, Distribution]:
    """Per dimension, the distribution over `scores` at the token that wrote its score: the alternatives among
    the top log-probabilities that spell an allowed score (a digit, or a space and a digit where the grammar
    allows a space), with the chosen token's own log-probability, renormalised. Dimensions whose score token
    is not found are left out."""
    wanted = {str(s): s for s in scores}
    found: dict[str, Distribution] = {}
    text = ""
    for step in steps:
        where = key_before(text, names)
        chosen = _SCORE_TOKEN.match(step.text)
        if where and chosen and chosen.group(2) in wanted and where[0] not in found:
            name, before = where
            alternatives = {step.text: step.logprob, **dict(step.top)}  # the chosen token is often in top too
            spelled: dict[int, list[float]] = {}
            for token, logprob in alternatives.items():
                match = _SCORE_TOKEN.match(token)
                if match and match.group(2) in wanted and allowed_whitespace(before, match.group(1)):
                    spelled.setdefault(wanted[match.group(2)], []).append(logprob)
            found[name] = renormalise({s: logsumexp(v) for s, v in spelled.items()})
        text += step.text
    return found

