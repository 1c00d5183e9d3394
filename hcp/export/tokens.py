"""The exported model must be given the tokens it was trained on: checked in llama.cpp before anything is shipped.

Training tokenizes the rating prompt with the HF tokenizer; scoring renders the chat template stored in the GGUF
and lets llama.cpp tokenize it. Any difference between the two (a pre-tokenizer, a space prefix, whitespace after
special tokens, a BOS) means the exported model sees a prompt it never saw in training, silently. After
conversion, export renders a rating prompt both ways and refuses a GGUF whose tokens differ.
"""

from __future__ import annotations

from pathlib import Path

from hcp.chat import render_chat
from hcp.errors import ExportError


def llama_cpp_prompt_ids(gguf: Path, messages: list[dict[str, str]]) -> list[int]:
    """The tokens hcp's llama.cpp backend feeds for `messages` (scoring/backends/llama_cpp.py), from the GGUF's
    vocabulary and chat template alone (no weights loaded)."""
    from llama_cpp import Llama

    try:
        llm = Llama(str(gguf), vocab_only=True, verbose=False)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"{gguf.name}: llama.cpp cannot load its vocabulary ({exc}) — please report this with the "
                          "base model's name") from None
    try:
        meta = llm.metadata

        def piece(token: int) -> str:
            return llm.detokenize([token], special=True).decode("utf-8", errors="ignore") if token >= 0 else ""

        bos, eos = piece(llm.token_bos()), piece(llm.token_eos())
        text = render_chat(meta.get("tokenizer.chat_template", ""), messages, bos_token=bos, eos_token=eos)
        add_bos = meta.get("tokenizer.ggml.add_bos_token", "true") == "true"
        return llm.tokenize(text.encode("utf-8"), add_bos=add_bos and not (bos and text.startswith(bos)),
                            special=True)
    finally:
        llm.close()


def check_prompt_tokens(gguf: Path, model_dir: Path, messages: list[dict[str, str]]) -> int:
    """Raise ExportError unless llama.cpp, reading `gguf`, turns `messages` into the tokens training gave the model
    (the HF tokenizer and chat template in `model_dir`). Returns the number of tokens."""
    from transformers import AutoTokenizer

    from hcp.train.trainer import prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trained = prompt_ids(tokenizer, messages)
    given = llama_cpp_prompt_ids(gguf, messages)
    if given == trained:
        return len(given)
    at = next((i for i, (a, b) in enumerate(zip(given, trained, strict=False)) if a != b),
              min(len(given), len(trained)))

    def pieces(ids: list[int]) -> list[str]:
        return tokenizer.convert_ids_to_tokens(ids[at:at + 3])

    raise ExportError(f"{gguf.name}: llama.cpp tokenizes the rating prompt differently from training ({len(given)} "
                      f"tokens against {len(trained)}; from token {at}: {pieces(given)} against {pieces(trained)}), "
                      "so the exported model would not see the prompt it learned — please report this with the "
                      "base model's name")
