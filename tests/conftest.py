"""Shared fixtures. Heavy ones (tiny models, the Ollama double) live in their own modules and are built once."""

from __future__ import annotations

from pathlib import Path

import pytest

from hcp.config import load_config
from hcp.rubric import Rubric

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def config():
    return load_config()


@pytest.fixture(scope="session")
def rubric(config) -> Rubric:
    return Rubric.from_config(config)


@pytest.fixture(scope="session")
def sample_transcript() -> str:
    return (ROOT / "data" / "sample_transcript.txt").read_text(encoding="utf-8")
