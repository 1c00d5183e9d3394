"""A scripted backend for unit tests of the scorer and the commands (no model, no daemon); a stand-in of
llama-cpp-python's source archive."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

from hcp.scoring.backends import Backend, GenerateOptions, Generation, Messages, ParallelGenerator

FAKE_EVIDENCE = ["RD: I understand how you feel"]
GOOD_ANSWER = {  # the default rubric's schema: evidence before each score
    "reasoning": "The RD acknowledged the patient's worry and gave concrete, correct steps.",
    "strengths": ["Validates feelings", "Concrete plan"],
    "areas_for_improvement": ["Check understanding earlier"],
    "empathy_evidence": FAKE_EVIDENCE, "empathy": 5, "clarity_evidence": FAKE_EVIDENCE, "clarity": 4,
    "accuracy_evidence": FAKE_EVIDENCE, "accuracy": 4, "professionalism_evidence": FAKE_EVIDENCE, "professionalism": 5,
}


def with_evidence(answer: dict[str, Any], schema: dict[str, Any], quotes: list[str] | None = None) -> dict[str, Any]:
    """The answer fitted to the schema's evidence keys: `quotes` (FAKE_EVIDENCE) for each it asks for and the
    answer lacks, and none it does not ask for (a config with scoring.evidence off)."""
    properties = schema.get("properties", {})
    kept = {k: v for k, v in answer.items() if not k.endswith("_evidence") or k in properties}
    wanted = [k for k in properties if k.endswith("_evidence") and k not in answer]
    return {**kept, **dict.fromkeys(wanted, quotes or FAKE_EVIDENCE)}


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
        text = json.dumps(with_evidence(item, schema)) if isinstance(item, dict) else item
        return Generation(text, "stop", self.count_prompt_tokens(messages), len(text) // 4, 0.01)

    def close(self) -> None:
        self.closed = True

    def parallel(self, slots: int, context: int) -> ParallelGenerator:
        self.engines.append(FakeParallel(self, slots, context))
        return self.engines[-1]


class QuotingBackend(FakeBackend):
    """A model that repeats the transcript back: every answer quotes it (in the reasoning and a strength), the
    way a real model may copy patient details into its rating. Each script item is a kind of answer:
    'valid'; 'out_of_range' (a score of 9); 'extra_key' (a key of its own, named with transcript text: without a
    grammar a model can write one); 'cut' (done_reason 'length'). The last kind repeats; a transcript that
    contains '#<kind>' gets that kind of answer every time instead."""

    KINDS = ("valid", "out_of_range", "extra_key", "cut")

    def __init__(self, *kinds: str, model: str = "quoting-model", name: str = "fake") -> None:
        assert all(k in self.KINDS for k in kinds), kinds
        super().__init__(*(kinds or ("valid",)), model=model)
        self.name = name

    def generate(self, messages: Messages, schema: dict[str, Any], options: GenerateOptions) -> Generation:
        transcript = messages[-1]["content"].split("Transcript:\n", 1)[-1]
        kind = next((k for k in self.KINDS if f"#{k}" in transcript),
                    self.script[min(len(self.calls), len(self.script) - 1)])
        self.calls.append((messages, options))
        quote = " ".join(transcript.split())
        answer: dict[str, Any] = {**GOOD_ANSWER, "reasoning": f"The patient said: {quote}"[:1000],
                                  "strengths": [quote[:200]]}
        answer = with_evidence({k: v for k, v in answer.items() if not k.endswith("_evidence")}, schema,
                               [quote[:200]])
        if kind == "out_of_range":
            answer["empathy"] = 9
        elif kind == "extra_key":
            answer[quote[:80]] = quote[:80]
        text = json.dumps(answer)
        if kind == "cut":
            text = text[: len(text) // 2]
        tokens = len(text) // 4
        return Generation(text, "length" if kind == "cut" else "stop", self.count_prompt_tokens(messages),
                          options.num_predict if kind == "cut" else tokens, 0.01)


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


def fake_sdist(path: Path, version: str, files: dict[str, str]) -> Path:
    """A llama_cpp_python-<version>.tar.gz holding `files` (paths inside the package's folder) at `path`."""
    with tarfile.open(path, "w:gz") as tar:
        for name, text in files.items():
            info = tarfile.TarInfo(f"llama_cpp_python-{version}/{name}")
            info.size = len(text.encode())
            tar.addfile(info, io.BytesIO(text.encode()))
    return path
