"""The model versions a server rates with: the current one, a canary that rates a share of the transcripts, and a
shadow that rates them again for comparison only; which version rates a transcript; and drift, the population
stability index of a version's recent scores against its scores on its validation set.

The split is by content: a transcript's content id (`hcp.batch.inputs.content_id`, the id the reviews file keys
it by) hashed with the canary's label and read as a number in [0, 1); below the share, the canary rates it. The
same transcript always gets the same version while the canary and its share stay (a reviewer never sees it
flip), and another canary label draws a new, independent split.
"""

from __future__ import annotations

import hashlib
import math
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from hcp.batch.inputs import content_id
from hcp.scoring.backends import Backend

CURRENT, CANARY, SHADOW = "current", "canary", "shadow"  # a version's role, a label of its metrics
# Empty bins get this share before the logarithm: PSI is infinite otherwise. 1e-4 is a common choice; it only
# matters when a score the reference never gave (or never saw) turns up.
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class Deployed:
    """A model version as the server holds it: an opened backend, the label each of its ratings carries
    (`model_version`: a registry's 'NAME:N', else the model as given), and its score distribution on its
    validation set, {dimension: [count of score 1, 2, ...]}, when it has one (for drift)."""

    label: str
    backend: Backend
    reference: dict[str, list[int]] | None = None


def canary_draw(transcript: str, canary_label: str) -> float:
    """A number in [0, 1) fixed by the transcript's content id and the canary's label: the transcript goes to the
    canary when it is below the canary's share."""
    key = f"{content_id(transcript)}\n{canary_label}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64


def goes_to_canary(transcript: str, canary_label: str, share: float) -> bool:
    return canary_draw(transcript, canary_label) < share


def psi(observed: Sequence[float], expected: Sequence[float], epsilon: float = PSI_EPSILON) -> float:
    """Population stability index of two histograms over the same bins (counts or shares):
    sum((a - e) * ln(a / e)) over the bins, with a and e the shares and an empty bin given `epsilon`.
    0: the same distribution; by a common rule of thumb under 0.1 stable, 0.1-0.25 a moderate shift, over 0.25
    a large one. (No well-kept Python library computes it on binned counts: it is three lines.)"""
    if len(observed) != len(expected):
        raise ValueError(f"PSI needs the same bins: {len(observed)} observed, {len(expected)} expected")
    a, e = _shares(observed, epsilon), _shares(expected, epsilon)
    return sum((ai - ei) * math.log(ai / ei) for ai, ei in zip(a, e, strict=True))


def _shares(counts: Sequence[float], epsilon: float) -> list[float]:
    total = sum(counts)
    if total <= 0:
        raise ValueError("PSI of an empty histogram")
    return [max(c / total, epsilon) for c in counts]


def histogram(scores: Iterable[int], levels: Sequence[int]) -> list[int]:
    """How many of `scores` fall on each level, in the order of `levels`."""
    counts = dict.fromkeys(levels, 0)
    for score in scores:
        if score in counts:
            counts[score] += 1
    return list(counts.values())


class Drift:
    """A version's last `window` ratings, per dimension, against its reference distribution."""

    def __init__(self, reference: dict[str, list[int]], levels: Sequence[int], window: int) -> None:
        self.reference, self.levels = reference, list(levels)
        self.recent: dict[str, deque[int]] = {dim: deque(maxlen=window) for dim in reference}

    def add(self, rating: dict[str, Any]) -> None:
        for dim, recent in self.recent.items():
            if isinstance(rating.get(dim), int):
                recent.append(rating[dim])

    def index(self, dim: str) -> float:
        """The PSI of the recent scores of `dim` against the reference; NaN before the first rating."""
        recent = self.recent[dim]
        if not recent or sum(self.reference[dim]) <= 0:
            return math.nan
        return psi(histogram(recent, self.levels), self.reference[dim])
