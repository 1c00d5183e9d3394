"""Tiny, random, llama-family models with real tokenizers, built in-process (no model hub here).

Two families, each written to a folder like a hub checkpoint (config.json, model.safetensors,
generation_config.json, tokenizer files with the chat template), so that `AutoModelForCausalLM` and
`AutoTokenizer.from_pretrained(folder)` load them exactly as they would load the real thing:

- `build_tiny_mistral`: `MistralForCausalLM` + a SentencePiece BPE tokenizer with byte fallback (as Mistral-7B
  and Llama 2 use), `tokenizer.model` kept beside `tokenizer.json` for GGUF converters, and the Mistral v0.3
  chat template (the system text folded into the *last* `[INST]`, BOS from `bos_token`, answer then `</s>`).
- `build_tiny_llama_bpe`: `LlamaForCausalLM` + a byte-level BPE tokenizer (GPT-2 style, as Llama 3 and
  SmolLM2 use) with SmolLM2's ChatML template (`<|im_start|>role\\ncontent<|im_end|>\\n`, eos `<|im_end|>`).

`initializer_range` is transformers' default (0.02) unless asked: at that scale a random lm_head keeps every
logit within about ±1.3, so no fine-tune can move the output distribution far; tests that train to a
visibly lower loss build with 0.1.

Both are seeded (same seed, same bytes) and take a few seconds; the vocabulary (~800 pieces) is trained on
sample RD / patient transcripts, the rubric prompt and rating JSON, so the prompts hcp builds tokenize into
real multi-character pieces rather than bytes. Other tests (merge, GGUF conversion, scoring) reuse these
builders through the session fixtures `tiny_mistral_dir` / `tiny_llama_dir` in conftest.py.

`make_adapter` puts a random LoRA adapter on such a model (or any llama-family one): the merge and export tests
use it, and so does scripts/bench_export.py on a 1B model.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

# Mistral-7B-Instruct-v0.3's template without the tool-calling branches. Note the real template's quirk,
# kept on purpose: the system message is folded into the user turn only when that turn is the *last*
# message, so a rendered conversation that ends with an answer has no system text at all.
MISTRAL_V03_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('After the optional system message, conversation roles must alternate "
    "user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.last and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + '[/INST]' }}"
    "{%- else %}"
    "{{- '[INST] ' + message['content'] + '[/INST]' }}"
    "{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content']|trim + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Only user and assistant roles are supported, with the exception of an initial "
    "optional system message!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

# SmolLM2-135M-Instruct's template, verbatim.
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHATML_SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")  # ids 0, 1, 2 as in SmolLM2

# Shapes of both tiny models: what transformers' own model tests use, a little wider so that LoRA has room.
TINY_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 4096,
}
TINY_VOCAB = 800


def tiny_corpus(samples: int = 60, seed: int = 7) -> list[str]:
    """Lines of text like those hcp trains on: the rubric prompt, sample transcripts and their rating JSON.

    Split on newlines so that no training sentence holds a newline: the SentencePiece model then encodes
    '\\n' through byte fallback (`<0x0A>`), as Mistral's does.
    """
    from hcp.config import load_config
    from hcp.data.sample import generate_samples
    from hcp.rubric import Rubric

    rubric = Rubric.from_config(load_config())
    texts = [rubric.system_prompt, rubric.user_prompt("RD: Hello. Patient: Hi.")]
    for record in generate_samples(samples, seed):
        texts += [record["transcript"], rubric.answer_text(record)]
    return [line for text in texts for line in text.split("\n") if line.strip()]


def _save_model(model: object, folder: Path, bos_id: int, eos_id: int, pad_id: int | None) -> None:
    from transformers import GenerationConfig

    model.save_pretrained(folder)  # type: ignore[attr-defined]  # safetensors: the only format in transformers v5
    GenerationConfig(bos_token_id=bos_id, eos_token_id=eos_id, pad_token_id=pad_id).save_pretrained(folder)


def _check_vocab(tokenizer: object, folder: Path) -> None:
    # transformers v5: a SentencePiece tokenizer built the wrong way comes out with an empty vocabulary, silently.
    size = len(tokenizer)  # type: ignore[arg-type]
    if size <= 100:
        raise RuntimeError(f"{folder}: tokenizer has only {size} tokens — the vocabulary did not load")


def build_tiny_mistral(
    folder: str | Path, seed: int = 0, vocab_size: int = TINY_VOCAB, initializer_range: float = 0.02
) -> Path:
    """A random 2-layer `MistralForCausalLM` with a SentencePiece BPE tokenizer and Mistral v0.3's chat template.

    Writes config.json, model.safetensors, generation_config.json, tokenizer.model (the SentencePiece proto),
    tokenizer.json and tokenizer_config.json / chat template into `folder` and returns it.
    """
    import sentencepiece as spm
    import torch
    from transformers import AutoTokenizer, MistralConfig, MistralForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()), model_writer=proto, model_type="bpe", vocab_size=vocab_size,
        byte_fallback=True, character_coverage=1.0, split_digits=True,
        # Mistral's specials: <unk> 0, <s> 1, </s> 2, then the control pieces of its chat format.
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=["[INST]", "[/INST]"],
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=True,
        num_threads=1, minloglevel=2,  # BPE training is deterministic for a given corpus
    )
    (folder / "tokenizer.model").write_bytes(proto.getvalue())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": True, "add_eos_token": False, "legacy": False, "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
        # Without this, [INST] would be a normal piece split by the pre-tokenizer; in Mistral it is one token.
        "additional_special_tokens": ["[INST]", "[/INST]"],
    }))
    # from_pretrained(folder) converts tokenizer.model (needs sentencepiece + protobuf); constructing
    # LlamaTokenizer(vocab_file=...) directly gives an empty vocabulary in transformers v5.
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = MISTRAL_V03_TEMPLATE
    _check_vocab(tokenizer, folder)
    tokenizer.save_pretrained(folder)  # adds tokenizer.json and the chat template; tokenizer.model stays

    config = MistralConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        rope_theta=1_000_000.0, sliding_window=None, tie_word_embeddings=False, initializer_range=initializer_range,
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = MistralForCausalLM(config).eval()
    _save_model(model, folder, tokenizer.bos_token_id, tokenizer.eos_token_id, None)
    return folder


def _train_byte_level_bpe(lines: Iterator[str] | list[str], vocab_size: int, pre_tokenizer: object = None) -> object:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer or pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=list(CHATML_SPECIAL_TOKENS), min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def build_tiny_llama_bpe(
    folder: str | Path, seed: int = 0, vocab_size: int = TINY_VOCAB, initializer_range: float = 0.02,
    attention_bias: bool = False, rope_parameters: dict | None = None,
) -> Path:
    """A random 2-layer `LlamaForCausalLM` (tied embeddings, like SmolLM2) with a byte-level BPE tokenizer and
    SmolLM2's ChatML chat template (eos `<|im_end|>`). Writes the model and tokenizer into `folder`, returns it.

    `attention_bias`: q/k/v/o projections carry biases (as Qwen2-style llama checkpoints do), drawn from
    N(0, 0.5) rather than transformers' zeros, so that a converter or merge that mishandles them shows in
    the logits. `rope_parameters`: e.g. Llama 3.1's `llama3` rope scaling (LLAMA31_ROPE).
    """
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    # Newlines matter here (ChatML puts one after every role), so train on whole texts, not lines.
    corpus = tiny_corpus()
    corpus += ["<|im_start|>system\n" + corpus[0], "\n".join(corpus[:20])]
    fast = PreTrainedTokenizerFast(
        tokenizer_object=_train_byte_level_bpe(corpus, vocab_size),
        bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>", pad_token="<|im_end|>",
        model_max_length=8192, clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHATML_TEMPLATE
    fast.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)  # what users of the folder will get
    _check_vocab(tokenizer, folder)

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True, initializer_range=initializer_range,
        attention_bias=attention_bias, rope_parameters=rope_parameters or {"rope_type": "default", "rope_theta": 1e5},
        **TINY_SHAPE,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).eval()
    if attention_bias:
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("_proj.bias"):
                    param.normal_(std=0.5)  # [out_features]
    _save_model(model, folder, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return folder


# --- beyond the llama family -------------------------------------------------------------------------------
#
# Tiny Qwen2, Qwen3, Gemma 2, Gemma 3 and Phi-3 models, each with its family's tokenizer kind and chat template,
# trained in-process like the two above. llama.cpp's converter cannot recognise such a tokenizer by the hash of
# its tokens; hcp tells it the pre-tokenizer it reads from tokenizer.json's structure (convert.py), which is
# what these models check.

# Llama 3.1's rope scaling (its config.json), on the tiny model's 16-wide heads. The original context is cut to
# 256 so that the blended band of frequencies, not only the two extremes, falls inside a 16-wide head.
LLAMA31_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                "high_freq_factor": 4.0, "original_max_position_embeddings": 256}

# Qwen2.5-Instruct's template without its tool-calling branches (a default system text when none is given).
QWEN25_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}"
    "{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- if (message.role == 'user') or (message.role == 'system' and not loop.first) or "
    "(message.role == 'assistant') %}"
    "{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)

# Gemma 2's template, verbatim: it refuses a system turn (hcp folds the system text into the first user turn,
# as Gemma 3's template does itself) and trims every turn's text.
GEMMA2_TEMPLATE = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
    "{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
    "{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}"
    "{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"
)

# Gemma 3's template for text (its image branches left out): the system text opens the first user turn.
GEMMA3_TEMPLATE = (
    "{{ bos_token }}"
    "{%- if messages[0]['role'] == 'system' -%}"
    "{%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}"
    "{%- set loop_messages = messages[1:] -%}"
    "{%- else -%}"
    "{%- set first_user_prefix = '' -%}"
    "{%- set loop_messages = messages -%}"
    "{%- endif -%}"
    "{%- for message in loop_messages -%}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif -%}"
    "{%- if (message['role'] == 'assistant') -%}{%- set role = 'model' -%}{%- else -%}"
    "{%- set role = message['role'] -%}{%- endif -%}"
    "{{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else '') }}"
    "{{ message['content'] | trim }}"
    "{{ '<end_of_turn>\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{'<start_of_turn>model\n'}}{%- endif -%}"
)

# Phi-3.5-mini-instruct's template, verbatim (eos after the last turn when no generation prompt follows).
PHI3_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}"
    "{{'<|system|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'user' %}"
    "{{'<|user|>\n' + message['content'] + '<|end|>\n'}}{% elif message['role'] == 'assistant' %}"
    "{{'<|assistant|>\n' + message['content'] + '<|end|>\n'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% else %}{{ eos_token }}{% endif %}"
)
PHI3_SPECIAL_TOKENS = ("<|endoftext|>", "<|assistant|>", "<|system|>", "<|end|>", "<|user|>")

# Phi-4's template, verbatim: ChatML with <|im_sep|> after the role and no newlines.
PHI4_TEMPLATE = (
    "{% for message in messages %}{% if (message['role'] == 'system') %}"
    "{{'<|im_start|>system<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'user') %}"
    "{{'<|im_start|>user<|im_sep|>' + message['content'] + '<|im_end|>'}}{% elif (message['role'] == 'assistant') %}"
    "{{'<|im_start|>assistant<|im_sep|>' + message['content'] + '<|im_end|>'}}{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant<|im_sep|>' }}{% endif %}"
)

# Qwen2's pre-tokenizer regex (tokenizer.json), which llama.cpp knows as "qwen2".
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")

ARCHITECTURES = ("qwen2", "qwen3", "gemma2", "gemma3", "phi3", "phi4")


def build_tiny(architecture: str, folder: str | Path, seed: int = 0, initializer_range: float = 0.1) -> Path:
    """A random 2-layer model of `architecture` (one of ARCHITECTURES) with its family's tokenizer kind and chat
    template, written like a hub checkpoint into `folder`:

    - qwen2 / qwen3: byte-level BPE with Qwen2's split regex and NFC normalizer, ChatML (Qwen2.5's template),
      eos `<|im_end|>`, no BOS; Qwen2's q/k/v biases drawn from N(0, 0.5); Qwen3's q/k norms;
    - gemma2 / gemma3: SentencePiece without a dummy prefix (`<pad>` 0, `<eos>` 1, `<bos>` 2, `<unk>` 3),
      `<start_of_turn>` / `<end_of_turn>`, BOS added, tied embeddings, Gemma's templates (GEMMA2_TEMPLATE refuses
      a system turn); Gemma 2's attention and final logit soft-capping;
    - phi3: a Llama-style SentencePiece (prefix space, byte fallback, non-legacy) with Phi-3's `<|user|>` ...
      `<|end|>` tokens added after it, which strip the whitespace after them, eos `<|endoftext|>`, no BOS; fused
      qkv_proj and gate_up_proj;
    - phi4: the same architecture (Phi3ForCausalLM) with a byte-level BPE and Phi-4's `<|im_sep|>` template.

    Weights are drawn with `initializer_range` 0.1 (not 0.02): at 0.02 a mishandled tensor hides inside the
    logit tolerances of the conversion tests.
    """
    import torch
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = {"qwen2": _qwen_tokenizer, "qwen3": _qwen_tokenizer, "gemma2": _gemma_tokenizer,
                 "gemma3": _gemma_tokenizer, "phi3": _phi3_tokenizer, "phi4": _phi4_tokenizer}[architecture](
        folder, GEMMA2_TEMPLATE if architecture == "gemma2" else GEMMA3_TEMPLATE)
    config = _tiny_config(architecture, tokenizer, initializer_range)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config).eval()
    if architecture == "qwen2":
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("_proj.bias"):
                    param.normal_(std=0.5)  # [out_features]
    _save_model(model, folder, tokenizer.bos_token_id if tokenizer.bos_token_id is not None else
                tokenizer.eos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
    return folder


def _tiny_config(architecture: str, tokenizer: object, initializer_range: float) -> object:
    from transformers import Gemma2Config, Gemma3TextConfig, Phi3Config, Qwen2Config, Qwen3Config

    ids = {"vocab_size": len(tokenizer), "bos_token_id": tokenizer.bos_token_id,  # type: ignore[arg-type,attr-defined]
           "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,  # type: ignore[attr-defined]
           "initializer_range": initializer_range, **TINY_SHAPE}
    head_dim = TINY_SHAPE["hidden_size"] // TINY_SHAPE["num_attention_heads"]
    if architecture == "qwen2":
        return Qwen2Config(**ids, tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    if architecture == "qwen3":
        return Qwen3Config(**ids, head_dim=head_dim, tie_word_embeddings=True,
                           rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    gemma = {"head_dim": head_dim, "query_pre_attn_scalar": head_dim, "sliding_window": 512,
             "hidden_activation": "gelu_pytorch_tanh", "tie_word_embeddings": True}
    if architecture == "gemma2":
        return Gemma2Config(**ids, **gemma, attn_logit_softcapping=50.0, final_logit_softcapping=30.0)
    if architecture == "gemma3":
        config = Gemma3TextConfig(**ids, **gemma)
        config.architectures = ["Gemma3ForCausalLM"]
        return config
    return Phi3Config(**ids, original_max_position_embeddings=4096, sliding_window=None,
                      tie_word_embeddings=False)  # phi3 and phi4


def _qwen_tokenizer(folder: Path, _: str) -> object:
    from tokenizers import Regex, normalizers, pre_tokenizers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = tiny_corpus()
    corpus += ["<|im_start|>system\n" + corpus[0], "\n".join(corpus[:20])]
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok = _train_byte_level_bpe(corpus, TINY_VOCAB, pre)
    tok.normalizer = normalizers.NFC()  # type: ignore[attr-defined]
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token=None, model_max_length=32768, clean_up_tokenization_spaces=False)
    fast.chat_template = QWEN25_TEMPLATE
    fast.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _check_vocab(tokenizer, folder)
    return tokenizer


def _phi4_tokenizer(folder: Path, _: str) -> object:
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    corpus = tiny_corpus()
    corpus += ["<|im_start|>system<|im_sep|>" + corpus[0], "\n".join(corpus[:20])]
    tok = _train_byte_level_bpe(corpus, TINY_VOCAB)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   bos_token="<|endoftext|>", model_max_length=16384,
                                   clean_up_tokenization_spaces=False)
    fast.add_special_tokens({"additional_special_tokens": ["<|im_sep|>"]})
    fast.chat_template = PHI4_TEMPLATE
    fast.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    _check_vocab(tokenizer, folder)
    return tokenizer


def _train_sentencepiece(folder: Path, **options: object) -> None:
    """tokenizer.model: a SentencePiece BPE with byte fallback trained on tiny_corpus()."""
    import sentencepiece as spm

    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(tiny_corpus()), model_writer=proto, model_type="bpe", vocab_size=TINY_VOCAB,
        byte_fallback=True, character_coverage=1.0, split_digits=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, num_threads=1, minloglevel=2, **options,
    )
    (folder / "tokenizer.model").write_bytes(proto.getvalue())


def _gemma_tokenizer(folder: Path, template: str) -> object:
    from transformers import AutoTokenizer

    _train_sentencepiece(folder, pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>",
                         bos_piece="<bos>", unk_piece="<unk>", control_symbols=["<start_of_turn>", "<end_of_turn>"],
                         add_dummy_prefix=False)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "GemmaTokenizer", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>",
        "pad_token": "<pad>", "add_bos_token": True, "add_eos_token": False, "model_max_length": 8192,
        "clean_up_tokenization_spaces": False, "additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"],
    }))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = template
    _check_vocab(tokenizer, folder)
    tokenizer.save_pretrained(folder)  # tokenizer.model stays beside tokenizer.json
    return AutoTokenizer.from_pretrained(folder)


def _phi3_tokenizer(folder: Path, _: str) -> object:
    from tokenizers import AddedToken
    from transformers import AutoTokenizer

    _train_sentencepiece(folder, unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "LlamaTokenizer", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
        "add_bos_token": False, "add_eos_token": False, "legacy": False, "model_max_length": 4096,
        "clean_up_tokenization_spaces": False,
    }))
    tokenizer = AutoTokenizer.from_pretrained(folder)
    # As in Phi-3's tokenizer.json, the chat tokens swallow the whitespace after them (rstrip); <|endoftext|> not.
    tokenizer.add_special_tokens({"additional_special_tokens": [
        AddedToken(token, rstrip=token != "<|endoftext|>", lstrip=False, normalized=False, special=True)
        for token in PHI3_SPECIAL_TOKENS]})
    tokenizer.eos_token = "<|endoftext|>"
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.chat_template = PHI3_TEMPLATE
    _check_vocab(tokenizer, folder)
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


# Every linear layer of a llama-family block: what hcp's training adapts, so what merge and export must handle.
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def make_adapter(
    base: str | Path, folder: str | Path, *, r: int = 4, alpha: int = 8, dtype: str = "float32", std: float = 0.05,
    bias: str = "none", seed: int = 0, lora_bias: bool = False, modules_to_save: tuple[str, ...] = (),
    ensure_weight_tying: bool = False, targets: tuple[str, ...] = LORA_TARGETS,
) -> Path:
    """A peft LoRA adapter on `targets` (by default every linear layer) of the model in `base`, saved into `folder`
    and returned.

    lora_B (its bias too with `lora_bias`; with `bias` other than "none", the trained biases) are drawn from
    N(0, std): peft starts B at zero, and an adapter that changes nothing would let a broken merge pass. Modules in
    `modules_to_save` (peft saves them whole, e.g. "lm_head") get N(0, std) noise added for the same reason.
    `dtype` is the torch dtype's name, for loading the base: "float16" halves the memory a large base needs.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias=bias, target_modules=list(targets),
                        lora_bias=lora_bias, modules_to_save=list(modules_to_save) or None,
                        ensure_weight_tying=ensure_weight_tying)
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if ".modules_to_save." in name:
                param.add_(torch.randn_like(param) * std)
            elif "lora_B" in name or (bias != "none" and name.endswith(".bias")):
                torch.nn.init.normal_(param, std=std)
    peft_model.save_pretrained(folder)
    return Path(folder)
