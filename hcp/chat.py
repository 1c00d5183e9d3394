"""Rendering a chat with a model's own Jinja chat template, as transformers does.

Scoring renders the template stored in the GGUF (`tokenizer.chat_template`), training renders the HF
tokenizer's template, and export writes the same template into the GGUF: one format from training to serving.

A template that refuses a system turn (Gemma 2's raises "System role not supported") gets the system text at the
start of the first user turn, followed by a blank line: what Gemma 3's own template does with it. Training
(`fold_system`), scoring and the Modelfile's TEMPLATE all fall back the same way, so they still agree.

A template that prints today's date (Llama 3.1-3.3: "Today Date: ..." from `strftime_now`) gets one fixed date,
TEMPLATE_DATE, wherever it is rendered: training (transformers would render the day of training), scoring, the
Modelfile and an OpenAI-compatible server (`date_string`, which those templates read first). The prompt then never
depends on the day, and the export's token check holds on any day. Training records the date in
training_config.json. A template that calls strftime_now without reading `date_string` still gets today's date
from transformers in training; the export's token check refuses such a model rather than let the prompts differ.
"""

from __future__ import annotations

from datetime import date
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hcp.errors import BackendError

TEMPLATE_DATE = date(2024, 7, 26)  # the Llama 3.x templates' own fallback, so a bare jinja2 render agrees too


def template_strftime(fmt: str) -> str:
    """`strftime_now` for chat templates: TEMPLATE_DATE, never the day of rendering."""
    return TEMPLATE_DATE.strftime(fmt)


# What a template's renderer is given besides the chat, for the templates that print a date: Llama 3.x's read
# `date_string` before they call strftime_now. transformers' apply_chat_template and servers (chat_template_kwargs)
# take it as a string; transformers would turn a function given for strftime_now into an inert string.
TEMPLATE_VARIABLES: dict[str, Any] = {"date_string": template_strftime("%d %b %Y")}


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    # The same environment settings as transformers' apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    env.globals.update(TEMPLATE_VARIABLES, strftime_now=template_strftime)
    return env.from_string(template)


def fold_system(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The chat with its leading system message moved into the first user message ("system\\n\\nuser")."""
    if not messages or messages[0]["role"] != "system":
        return messages
    rest = [dict(m) for m in messages[1:]]
    for message in rest:
        if message["role"] == "user":
            message["content"] = messages[0]["content"] + "\n\n" + message["content"]
            return rest
    return messages


def render_chat(
    template: str,
    messages: list[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The prompt text for `messages`, ready to tokenize with special tokens parsed; a template that refuses the
    system turn gets it folded into the first user turn (`fold_system`)."""

    def render(chat: list[dict[str, str]]) -> str:
        return _compile(template).render(messages=chat, bos_token=bos_token, eos_token=eos_token,
                                         add_generation_prompt=add_generation_prompt, **extra)

    try:
        return render(messages)
    except jinja2.TemplateError as exc:
        folded = fold_system(messages)
        if folded is not messages:
            try:
                return render(folded)
            except jinja2.TemplateError:
                pass
        raise BackendError(f"the model's chat template failed: {exc}") from None
