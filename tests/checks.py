"""Assertions that several test modules make about real generations."""

from __future__ import annotations

import json

import pytest

from hcp.rubric import Rubric
from hcp.scoring.backends import Generation


def assert_distributions_fit_the_rating(generation: Generation, rubric: Rubric) -> None:
    """Each dimension's score distribution covers scores the rubric allows (more than one), sums to 1, and has
    the rating's score as its most likely (true when nothing after the reading, such as a repeat penalty,
    moves the choice)."""
    rating = json.loads(generation.text)
    assert generation.score_distribution is not None
    assert generation.score_distribution.keys() == set(rubric.names)
    for dim, distribution in generation.score_distribution.items():
        assert set(distribution) <= set(rubric.scores) and len(distribution) > 1
        assert sum(distribution.values()) == pytest.approx(1.0, abs=1e-9)
        assert max(distribution, key=distribution.get) == rating[dim]
