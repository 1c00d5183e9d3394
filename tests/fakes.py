"""A scripted backend for unit tests of the scorer and the commands (no model, no daemon)."""

from __future__ import annotations

import json
from typing import Any

from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages, ParallelGenerator

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
        self.engines: list[FakeParallel] = []

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

    def parallel(self, slots: int, context: int) -> ParallelGenerator:
        self.engines.append(FakeParallel(self, slots, context))
        return self.engines[-1]


class FakeParallel(ParallelGenerator):
    """Decodes up to `slots` of the backend's scripted answers together, as the embedded engine schedules them:
    an answer ends after 1 to 3 steps (its prompt's length mod 3, plus 1). Keeps what happened, to check."""

    def __init__(self, backend: FakeBackend, slots: int, context: int) -> None:
        self.backend, self.slots, self.context = backend, slots, context
        self.busy: dict[int, list[Any]] = {}  # slot -> [steps left, messages, schema, options]
        self.starts: list[tuple[int, str, int]] = []  # (slot, transcript, seed) of every answer begun
        self.busy_at_step: list[tuple[int, int]] = []  # (answers begun so far, slots busy) at each step
        self.closed = False

    def start(self, slot: int, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> None:
        assert 0 <= slot < self.slots and slot not in self.busy and not self.closed
        self.busy[slot] = [1 + len(messages[-1]["content"]) % 3, messages, schema, options]
        self.starts.append((slot, messages[-1]["content"], options.seed))

    def step(self) -> list[tuple[int, Generation]]:
        self.busy_at_step.append((len(self.starts), len(self.busy)))
        ended = []
        for slot, entry in list(self.busy.items()):
            entry[0] -= 1
            if entry[0] == 0:
                del self.busy[slot]
                ended.append((slot, self.backend.generate(*entry[1:])))
        return ended

    def close(self) -> None:
        self.closed = True
