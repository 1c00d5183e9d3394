"""The Ollama Modelfile of an exported rater: one spec, rendered as a Modelfile and as an /api/create request.

The TEMPLATE is derived from the model's own HF chat template, not written by hand per family: the HF
template is rendered with placeholder system and user texts, and the placeholders become `{{ .System }}` and
`{{ .Prompt }}`. The prompt Ollama renders is then, character for character, the prompt the model was trained
on (Mistral: system folded into the last [INST]; ChatML; Llama 3 headers), with BOS left to the GGUF's
add-BOS flag as Ollama expects.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.chat import render_chat
from hcp.config import modelfile_drops
from hcp.errors import BackendError, ExportError
from hcp.files import atomic_write_text, make_folder

SYSTEM_MARK = "\x02HCP-SYSTEM\x03"
USER_MARK = "\x02HCP-USER\x03"
ANSWER_MARK = "\x02HCP-ANSWER\x03"
TRIPLE = '"""'


@dataclass(frozen=True)
class ChatFormat:
    template: str  # Go template for Ollama: literal text with {{ .System }}, {{ .Prompt }}, {{ .Response }}
    stops: tuple[str, ...]


def _go_literal(text: str) -> str:
    # Go's text/template reads "{{" as an action; a literal one must be written as an action printing it.
    return text.replace("{{", '{{ "{{" }}')


def ollama_chat_format(hf_template: str, *, bos: str, eos: str, add_bos: bool,
                       special_tokens: tuple[str, ...] = ()) -> ChatFormat:
    """The Ollama TEMPLATE and stop words equivalent to an HF chat template for a system + user turn."""
    messages = [{"role": "system", "content": SYSTEM_MARK}, {"role": "user", "content": USER_MARK}]
    prompt = render_chat(hf_template, messages, bos_token=bos, eos_token=eos, add_generation_prompt=True)
    if prompt.count(SYSTEM_MARK) != 1 or prompt.count(USER_MARK) != 1 or \
            prompt.index(SYSTEM_MARK) > prompt.index(USER_MARK):
        raise ExportError("the chat template does not place one system text before one user text — hcp needs a "
                          "template with a system turn (or one that folds the system text into the user turn)")
    if add_bos and bos and prompt.startswith(bos):
        prompt = prompt[len(bos):]  # BOS comes from the GGUF (add_bos_token), never from the template text
    end_of_turn = _end_of_turn(hf_template, bos, eos)
    head, rest = prompt.split(SYSTEM_MARK)
    middle, tail = rest.split(USER_MARK)
    template = (_go_literal(head) + "{{ .System }}" + _go_literal(middle) + "{{ .Prompt }}" + _go_literal(tail)
                + "{{ .Response }}" + _go_literal(end_of_turn))
    stops = [eos, end_of_turn.strip()]
    stops += [tok for tok in special_tokens if tok and tok in head + middle + tail]
    return ChatFormat(template, tuple(dict.fromkeys(s for s in stops if s)))


def _end_of_turn(hf_template: str, bos: str, eos: str) -> str:
    """What the template writes after an assistant's answer before the next turn. A template that closes the whole
    chat with eos after its last answer (Phi-3's: `<|end|>\\n<|endoftext|>`) does not write that eos between turns,
    so it is left out: a rendering with a user turn after the answer shows which."""
    def after_answer(extra: list[dict[str, str]]) -> str | None:
        chat = [{"role": "user", "content": USER_MARK}, {"role": "assistant", "content": ANSWER_MARK}, *extra]
        text = render_chat(hf_template, chat, bos_token=bos, eos_token=eos, add_generation_prompt=False)
        return text.split(ANSWER_MARK, 1)[1] if ANSWER_MARK in text else None

    last = after_answer([])
    if last is None:
        return eos
    if eos and last.endswith(eos) and last != eos:
        try:
            between = after_answer([{"role": "user", "content": USER_MARK}])
        except BackendError:  # a template that takes a single exchange only
            between = None
        if between is not None and not between.startswith(last):
            return last[: -len(eos)]
    return last


@dataclass
class ModelfileSpec:
    """Everything `ollama create` needs; `render` and `create_request` cannot disagree."""

    name: str
    gguf: Path
    template: str
    system: str
    parameters: dict[str, Any] = field(default_factory=dict)  # Ollama option names; lists repeat (stop)
    license: str | None = None
    header: dict[str, str] = field(default_factory=dict)  # provenance, rendered as comments

    def __post_init__(self) -> None:
        if self.license:  # shown, never read by the model: what Ollama would drop (a form feed) goes here already
            self.license = "".join(char for char in self.license if not modelfile_drops(char))
        for label, text in (("TEMPLATE", self.template), ("SYSTEM", self.system), ("LICENSE", self.license or "")):
            if TRIPLE in text or text.endswith('"'):
                raise ExportError(f"the {label} text contains three double quotes in a row (or ends with a quote), "
                                  "which a Modelfile block cannot hold — remove them from the rubric or template")
            # Ollama would read the Modelfile without them: the model would get another prompt than training's.
            dropped = next(((i, char) for i, char in enumerate(text) if modelfile_drops(char)), None)
            if dropped is not None:
                raise ExportError(f"the {label} text holds U+{ord(dropped[1]):04X} at character {dropped[0]}, which "
                                  "Ollama drops when it reads a Modelfile, so the model would not get its training "
                                  "prompt — remove it from the config's scoring texts (or the chat template)")
        for value in self.parameters.get("stop", []):
            if '"' in value or "\n" in value:
                raise ExportError(f"stop word {value!r} cannot be written in a Modelfile (quote or newline)")

    def render(self, folder: Path) -> str:
        """The Modelfile text, with FROM relative to `folder` (where the Modelfile will live)."""
        lines = [f"# {key}: {value}" for key, value in self.header.items()]
        lines.append(f"FROM {_relative(self.gguf, folder)}")
        lines.append(f'TEMPLATE {TRIPLE}{self.template}{TRIPLE}')
        lines.append(f'SYSTEM {TRIPLE}{self.system}{TRIPLE}')
        for key, value in self.parameters.items():
            for item in value if isinstance(value, list) else [value]:
                lines.append(f'PARAMETER {key} "{item}"' if isinstance(item, str) else f"PARAMETER {key} {item}")
        if self.license:
            lines.append(f"LICENSE {TRIPLE}{self.license}{TRIPLE}")
        return "\n".join(lines) + "\n"

    def write(self, path: Path) -> Path:
        """The Modelfile at `path`, its owner's alone like the model it points to (its folder too, if new)."""
        make_folder(path.parent, private=True)
        return atomic_write_text(path, self.render(path.parent), private=True)

    def create_request(self, digest: str) -> dict[str, Any]:
        """Keyword arguments for `ollama.Client.create` once the GGUF is uploaded as blob `digest`."""
        request: dict[str, Any] = {
            "model": self.name, "files": {self.gguf.name: digest}, "template": self.template,
            "system": self.system, "parameters": dict(self.parameters),
        }
        if self.license:
            request["license"] = self.license
        return request


def _relative(target: Path, folder: Path) -> str:
    import os

    rel = os.path.relpath(target.resolve(), folder.resolve())
    rel = rel if rel.startswith(".") else f"./{rel}"
    if re.search(r"\s", rel):  # Ollama reads FROM's argument up to whitespace
        return str(target.resolve())
    return rel
