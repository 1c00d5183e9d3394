"""Rendering a chat with a model's own Jinja chat template, as transformers does.

Scoring renders the template stored in the GGUF (`tokenizer.chat_template`), training renders the HF
tokenizer's template, and export writes the same template into the GGUF: one format from training to serving.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from hcp.errors import BackendError


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=8)
def _compile(template: str) -> jinja2.Template:
    # The same environment settings as transformers' apply_chat_template.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.globals["raise_exception"] = _raise
    return env.from_string(template)


def render_chat(
    template: str,
    messages: list[dict[str, str]],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    **extra: Any,
) -> str:
    """The prompt text for `messages`, ready to tokenize with special tokens parsed."""
    try:
        return _compile(template).render(
            messages=messages, bos_token=bos_token, eos_token=eos_token,
            add_generation_prompt=add_generation_prompt, **extra,
        )
    except jinja2.TemplateError as exc:
        raise BackendError(f"the model's chat template failed: {exc}") from None
