"""A scripted backend for unit tests of the scorer and the commands (no model, no daemon)."""

from __future__ import annotations

import json
from typing import Any

from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages

GOOD_ANSWER = {
    "reasoning": "The RD acknowledged the patient's worry and gave concrete, correct steps.",
    "strengths": ["Validates feelings", "Concrete plan"],
    "areas_for_improvement": ["Check understanding earlier"],
    "empathy": 5, "clarity": 4, "accuracy": 4, "professionalism": 5,
}


class FakeBackend(Backend):
    """Answers from a script: each item is a dict (valid JSON answer), a str (raw text) or a Generation.
    The last item repeats. Tokens are counted as characters, so context limits are easy to reach."""

    name = "fake"

    def __init__(self, *script: Any, model: str = "fake-model", context: int | None = None) -> None:
        self.model = model
        self.script = list(script) or [GOOD_ANSWER]
        self.calls: list[tuple[Messages, GenerateOptions]] = []
        self.context = context
        self.closed = False

    def count_prompt_tokens(self, messages: Messages) -> int:
        return sum(len(m["content"]) for m in messages)

    def context_length(self) -> int | None:
        return self.context

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        item = self.script[min(len(self.calls), len(self.script) - 1)]
        self.calls.append((messages, options))
        if isinstance(item, Generation):
            return item
        text = json.dumps(item) if isinstance(item, dict) else item
        return Generation(text, "stop", self.count_prompt_tokens(messages), len(text) // 4, 0.01)

    def close(self) -> None:
        self.closed = True
