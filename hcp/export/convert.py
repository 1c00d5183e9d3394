"""Converting an HF model folder to GGUF: hcp's own writer for the llama family, llama.cpp's converter for the rest.

Two engines, one result:
- **hcp's writer** (this module, with gguf-py) for the llama family (Llama 2/3/3.1+, Mistral, SmolLM): it
  writes the same tensors as llama.cpp's converter, bit for bit (tests/test_export_arch.py checks it), and reads
  a SentencePiece vocabulary known only from tokenizer.json with scores llama.cpp tokenizes by, where the
  converter's equal scores change the tokens. It needs no download and is a little faster (bench_export.py:
  7.4 s against 11.6 s for a 1.7 GB model, peak RSS 495 against 456 MB). Tensors are streamed: the header and
  tensor index are written first from shapes alone, then one tensor at a time.
- **llama.cpp's converter** (`convert_hf_to_gguf.py`, reference.py) for every other architecture it knows
  (Qwen2/2.5/3, Gemma 2/3, Phi-3/4, ...), and for a llama-family model that hcp's writer does not cover (a rope
  scaling or tokenizer it does not know), with hcp's additions on top: `tokenizer_overrides`.

Two details decide whether the GGUF behaves like the HF model:
- Q and K projections (weights and biases) are permuted back from HF's rotate-half layout to the interleaved
  rotary layout llama.cpp's llama graph expects;
- the vocabulary keeps the HF tokenizer's behaviour: SentencePiece pieces, scores and types (with byte
  fallback), or byte-level BPE tokens, merges and the pre-tokenizer name that selects llama.cpp's matching
  split regex; special tokens, add-BOS/EOS flags and the chat template the model was trained with.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hcp import __version__
from hcp.errors import ExportError
from hcp.files import atomic_path

HCP_ARCHITECTURES = ("LlamaForCausalLM", "MistralForCausalLM")  # what hcp's own writer converts
HCP_ROPE_TYPES = ("default", "linear", "llama3")
OUT_TYPES = ("f32", "f16", "bf16")
ENGINES = ("auto", "hcp", "reference")
SKIPPED_TENSORS = ("rotary_emb.inv_freq",)


@dataclass
class ConvertResult:
    path: Path
    outtype: str
    tensors: int
    bytes: int
    seconds: float
    tokenizer: str | None  # "llama" (SentencePiece) or "gpt2" (byte-level BPE)
    pre: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    engine: str = "hcp"  # "hcp" (hcp's writer) or "reference" (llama.cpp's converter, hcp's additions on top)
    architecture: str = ""  # the HF architecture, e.g. Qwen2ForCausalLM


# --- hyperparameters --------------------------------------------------------------------------------------


def read_config(model_dir: Path) -> dict[str, Any]:
    path = model_dir / "config.json"
    if not path.is_file():
        raise ExportError(f"{model_dir}: no config.json — expected an HF model folder (e.g. from 'hcp merge')")
    config = json.loads(path.read_text())
    if not config.get("architectures"):
        raise ExportError(f"{path}: no 'architectures' — the converter cannot tell which model this is")
    return config


def architecture(config: dict[str, Any]) -> str:
    return str(config["architectures"][0])


def rope_settings(config: dict[str, Any]) -> tuple[float, str, dict[str, Any]]:
    """(theta, rope type, all rope parameters). transformers v5 keeps them in `rope_parameters`; v4 in
    rope_theta / rope_scaling."""
    params = dict(config.get("rope_parameters") or config.get("rope_scaling") or {})
    theta = float(params.get("rope_theta", config.get("rope_theta", 10000.0)))
    return theta, str(params.get("rope_type", params.get("type", "default"))), params


LLAMA3_ROPE_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama3_rope_factors(config: dict[str, Any]) -> np.ndarray:
    """Llama 3.1's 'llama3' rope scaling as llama.cpp takes it: the `rope_freqs` tensor, [head_dim / 2] float32,
    one divisor per rotary frequency (transformers' `_compute_llama3_parameters` divides the frequency itself).
    Frequencies with a wavelength beyond the original context are divided by `factor`, those shorter than
    original / high_freq_factor are kept, and those between are blended smoothly; computed in float32 like
    llama.cpp's converter, so the tensor is the same bit for bit."""
    import math

    import torch

    theta, _, params = rope_settings(config)
    missing = [key for key in LLAMA3_ROPE_KEYS if key not in params]
    if missing:
        raise ExportError(f"config.json: llama3 rope scaling without {', '.join(missing)} — is the config complete?")
    dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    freqs = 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))  # [dim / 2]
    factor, low, high = (float(params[k]) for k in LLAMA3_ROPE_KEYS[:3])
    context = float(params["original_max_position_embeddings"])
    wavelength = 2 * math.pi / freqs
    smooth = (context / wavelength - low) / (high - low)
    blended = 1 / ((1 - smooth) / factor + smooth)
    factors = torch.where(wavelength < context / high, torch.ones_like(freqs),
                          torch.where(wavelength > context / low, torch.full_like(freqs, factor), blended))
    return factors.to(torch.float32).numpy()


def write_hparams(writer: Any, config: dict[str, Any], n_vocab: int) -> None:
    import gguf

    n_head = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // n_head
    theta, kind, params = rope_settings(config)
    scaling = params if kind == "linear" else {}  # llama3: the rope_freqs tensor, no metadata
    writer.add_vocab_size(n_vocab)
    writer.add_context_length(config.get("max_position_embeddings", 4096))
    writer.add_embedding_length(config["hidden_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(config.get("num_key_value_heads") or n_head)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(theta)
    writer.add_layer_norm_rms_eps(config.get("rms_norm_eps", 1e-5))
    if head_dim != config["hidden_size"] // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    if scaling:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))


# --- vocabulary -------------------------------------------------------------------------------------------


@dataclass
class Vocab:
    model: str  # tokenizer.ggml.model
    tokens: list[bytes]
    scores: list[float]
    types: list[int]
    pre: str | None = None
    merges: list[str] = field(default_factory=list)
    space_prefix: bool = True  # SentencePiece: prefix a space to text after BOS and special tokens


def _sentencepiece_vocab(model_dir: Path, tokenizer_json: dict[str, Any] | None) -> Vocab:
    import gguf

    if not (model_dir / "tokenizer.model").is_file():
        assert tokenizer_json is not None  # read_vocab sends only one or the other here
        return _sentencepiece_json_vocab(tokenizer_json)
    reader = gguf.vocab.SentencePieceVocab(model_dir)
    tokens, scores, types = [], [], []
    for text, score, kind in reader.all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(kind))
    # Tokens the HF tokenizer treats as special (e.g. [INST]) must be CONTROL, or llama.cpp splits them.
    for item in (tokenizer_json or {}).get("added_tokens") or []:
        if item.get("special") and item["id"] < len(types) and types[item["id"]] == int(gguf.TokenType.NORMAL):
            types[item["id"]] = int(gguf.TokenType.CONTROL)
    return Vocab("llama", tokens, scores, types, space_prefix=_space_prefix(tokenizer_json))


def _sentencepiece_json_vocab(tokenizer_json: dict[str, Any]) -> Vocab:
    """A SentencePiece-style BPE (byte fallback) known only from tokenizer.json, as `save_pretrained` writes
    it in transformers v5. llama.cpp's SPM tokenizer merges the pair whose result has the highest score, so
    each piece scores minus the rank of the merge that makes it (gguf-py's LlamaHfVocab gives every piece
    the same score, and llama.cpp then tokenizes differently)."""
    import gguf

    model = tokenizer_json["model"]
    vocab: dict[str, int] = model["vocab"]
    added = {item["id"]: item for item in tokenizer_json.get("added_tokens") or []}
    rank: dict[str, int] = {}
    for i, merge in enumerate(model.get("merges", [])):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank.setdefault(left + right, i)
    size = max([*vocab.values(), *added.keys()]) + 1
    by_id = {i: t for t, i in vocab.items()}
    tokens, scores, types = [], [], []
    for i in range(size):
        text = added[i]["content"] if i in added else by_id.get(i, f"[PAD{i}]")
        tokens.append(text.encode())
        scores.append(-float(rank.get(text, len(rank) + i)))
        if text == model.get("unk_token"):
            kind = gguf.TokenType.UNKNOWN
        elif i in added:
            kind = gguf.TokenType.CONTROL if added[i].get("special") else gguf.TokenType.USER_DEFINED
        elif len(text) == 6 and text.startswith("<0x") and text.endswith(">"):
            kind = gguf.TokenType.BYTE
        elif i not in by_id:
            kind = gguf.TokenType.UNUSED
        else:
            kind = gguf.TokenType.NORMAL
        types.append(int(kind))
    return Vocab("llama", tokens, scores, types, space_prefix=_space_prefix(tokenizer_json))


def _space_prefix(tokenizer_json: dict[str, Any] | None) -> bool:
    """Whether llama.cpp should prefix '▁' to each text fragment after a special token.

    HF's Metaspace with prepend_scheme 'first' (transformers' non-legacy Llama/Mistral tokenizers) prefixes
    only the very start of the input, so text after [INST] or BOS gets none; 'always' (legacy) prefixes every
    fragment. llama.cpp can only do all or nothing after specials; chat prompts always begin with special
    tokens, so matching the after-special behaviour makes the rendered chat tokenize identically."""
    if tokenizer_json is None:
        return True  # a bare tokenizer.model: sentencepiece adds its dummy prefix to every piece of text
    steps = [tokenizer_json.get("pre_tokenizer") or {}, tokenizer_json.get("normalizer") or {}]
    for step in steps:
        for item in step.get("pretokenizers", step.get("normalizers", [step])):
            if item.get("type") == "Metaspace":
                return item.get("prepend_scheme", "always") == "always"
            if item.get("type") == "Prepend" and item.get("prepend") == "▁":
                return True
    return False


# The split regexes of tokenizer.json's Split pre-tokenizer, as the model families write them, and the name of the
# llama.cpp pre-tokenizer that splits the same way (src/llama-vocab.cpp).
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_SPLIT_START = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"


def bpe_pre(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """Name of llama.cpp's pre-tokenizer that splits text like this HF pre_tokenizer, from its structure; None
    when hcp does not know it (llama.cpp's converter may, from the hash of a sample's tokens)."""
    steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
    kinds = [(s.get("type"), s) for s in steps]
    if [k for k, _ in kinds] == ["ByteLevel"] and kinds[0][1].get("use_regex", True):
        return "gpt-2"
    if [k for k, _ in kinds] == ["Digits", "ByteLevel"] and kinds[0][1].get("individual_digits"):
        return "smollm"
    if [k for k, _ in kinds] == ["Split", "ByteLevel"] and not kinds[1][1].get("use_regex", True):
        pattern = kinds[0][1].get("pattern", {}).get("Regex", "")
        if pattern == QWEN2_SPLIT:
            return "qwen2"
        if pattern.startswith(LLAMA3_SPLIT_START):
            return "llama-bpe"
    return None


def _bpe_pre(pre_tokenizer: dict[str, Any] | None) -> str:
    name = bpe_pre(pre_tokenizer)
    if name is None:
        steps = pre_tokenizer.get("pretokenizers", [pre_tokenizer]) if pre_tokenizer else []
        raise ExportError("the tokenizer's pre-tokenizer is not one hcp's writer converts "
                          f"({[s.get('type') for s in steps]}) — supported: GPT-2 byte-level, SmolLM, Llama 3, Qwen2")
    return name


def _bpe_vocab(tokenizer_json: dict[str, Any]) -> Vocab:
    import gguf

    vocab: dict[str, int] = tokenizer_json["model"]["vocab"]
    added = {item["id"]: item for item in tokenizer_json.get("added_tokens") or []}
    size = max([*vocab.values(), *added.keys()]) + 1
    by_id: dict[int, str] = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i in added:
            tokens.append(added[i]["content"].encode())
            special = added[i].get("special", False)
            types.append(int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED))
        elif i in by_id:
            tokens.append(by_id[i].encode())
            types.append(int(gguf.TokenType.NORMAL))
        else:
            tokens.append(f"[PAD{i}]".encode())
            types.append(int(gguf.TokenType.UNUSED))
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer_json["model"].get("merges", [])]
    return Vocab("gpt2", tokens, [0.0] * size, types, _bpe_pre(tokenizer_json.get("pre_tokenizer")), merges)


def is_byte_level_bpe(tokenizer_json: dict[str, Any]) -> bool:
    """GPT-2-style BPE over bytes (Llama 3, SmolLM, Qwen, Phi-4), as opposed to SentencePiece-style BPE."""
    model = tokenizer_json.get("model") or {}
    return model.get("type") == "BPE" and not model.get("byte_fallback") and \
        (tokenizer_json.get("decoder") or {}).get("type") == "ByteLevel"


def read_vocab(model_dir: Path) -> Vocab:
    """The vocabulary in llama.cpp's terms, from tokenizer.json (read once) and/or tokenizer.model."""
    path = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(path.read_text()) if path.is_file() else None
    model = (tokenizer_json or {}).get("model", {})
    if tokenizer_json and is_byte_level_bpe(tokenizer_json):
        return _bpe_vocab(tokenizer_json)
    if (model_dir / "tokenizer.model").is_file() or (model.get("type") == "BPE" and model.get("byte_fallback")):
        return _sentencepiece_vocab(model_dir, tokenizer_json)
    raise ExportError(f"{model_dir}: no tokenizer hcp can convert (expected tokenizer.model, or a tokenizer.json "
                      "with SentencePiece-style or byte-level BPE)")


def chat_template(model_dir: Path) -> str:
    """The chat template the model was trained with (transformers v5 writes chat_template.jinja)."""
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text()
    config = model_dir / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.is_file() else None
    if isinstance(template, str) and template:
        return template
    raise ExportError(f"{model_dir}: no chat template — the exported model must format prompts exactly as in "
                      "training; export the folder written by 'hcp train' or 'hcp merge'")


def _hf_tokenizer(model_dir: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError, KeyError) as exc:
        raise ExportError(f"{model_dir}: transformers cannot load the tokenizer ({exc.__class__.__name__}) — export "
                          "the folder written by 'hcp train' or 'hcp merge', which holds the tokenizer") from None


def special_tokens(model_dir: Path) -> dict[str, Any]:
    """Token ids and add-BOS/EOS flags, read from the HF tokenizer's actual behaviour."""
    tokenizer = _hf_tokenizer(model_dir)
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    bare = tokenizer("a", add_special_tokens=False)["input_ids"]
    info: dict[str, Any] = {
        "add_bos": tokenizer.bos_token_id is not None and len(ids) > len(bare) and ids[0] == tokenizer.bos_token_id,
        "add_eos": tokenizer.eos_token_id is not None and len(ids) > len(bare) and ids[-1] == tokenizer.eos_token_id,
    }
    for kind in ("bos", "eos", "unk", "pad"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if token_id is not None:
            info[kind] = int(token_id)
    return info


# llama.cpp sets token attributes by the model's general.name (llama-vocab.cpp): a name containing "phi-3" or "phi3"
# makes special tokens strip the whitespace after them, as Phi-3's HF tokenizer does; no other name rule touches
# the tokens of a chat prompt.
PHI3_NAME = re.compile(r"phi-?3", re.IGNORECASE)


def gguf_name(name: str, model_dir: Path) -> str:
    """The general.name to write: `name`, adjusted so that llama.cpp strips whitespace after special tokens exactly
    when the HF tokenizer does (its added tokens' rstrip). A tokenizer that strips (Phi-3's) gets " (phi-3)"
    appended; one that does not, under a name that llama.cpp would take for Phi-3, gets "phi 3" instead."""
    tokenizer = _hf_tokenizer(model_dir)
    strips = any(t.special and t.rstrip for t in tokenizer.added_tokens_decoder.values())
    if strips and not PHI3_NAME.search(name):
        return f"{name} (phi-3)"
    if not strips:
        return PHI3_NAME.sub(lambda m: m[0][:-1] + " 3", name)
    return name


def write_vocab(writer: Any, vocab: Vocab, specials: dict[str, Any], template: str) -> None:
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for kind in ("bos", "eos", "unk", "pad"):
        if kind in specials:
            getattr(writer, f"add_{kind}_token_id")(specials[kind])
    writer.add_add_bos_token(bool(specials["add_bos"]))
    writer.add_add_eos_token(bool(specials["add_eos"]))
    if vocab.model == "llama":
        writer.add_add_space_prefix(vocab.space_prefix)
    writer.add_chat_template(template)


# --- tensors ----------------------------------------------------------------------------------------------


def permute_rotary(weights: Any, n_head: int) -> Any:
    """HF stores Q/K rows for rotate-half RoPE; llama.cpp's llama graph wants them interleaved.
    weights: [n_head * head_dim, hidden] (or a bias, [n_head * head_dim]) -> same shape, rows reordered within
    each head."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


Planned = tuple[Any, str, str, tuple[int, ...], Any]  # (load, hf name, gguf name, shape, ggml type)


def _plan(model_dir: Path, config: dict[str, Any], outtype: str) -> list[Planned]:
    """How to load, name and store every tensor, from the headers alone: `load()` reads one tensor (torch)."""
    import gguf
    import torch

    from hcp.export.safetensors_stream import ShardReader, shard_paths

    name_map = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config["num_hidden_layers"])
    wide = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
            "bf16": gguf.GGMLQuantizationType.BF16}[outtype]
    plan: list[Planned] = []
    for shard in shard_paths(model_dir, "no *.safetensors weights to convert"):
        reader = ShardReader(shard)
        for name in sorted(reader.entries):
            if name.endswith(SKIPPED_TENSORS):
                continue
            target = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
            if target is None:
                raise ExportError(f"{shard.name}: tensor {name} has no llama.cpp name — is this a plain "
                                  "llama-family model (no extra heads or adapters left in)?")
            shape = reader.shape(name)
            # Norms and biases stay F32, as llama.cpp's converter keeps them.
            qtype = wide if len(shape) > 1 else gguf.GGMLQuantizationType.F32
            # Plain reads of one tensor's bytes (no whole-file mmap), as a torch tensor: numpy cannot hold bfloat16.
            plan.append((lambda r=reader, n=name: r.get(n), name, target, shape, qtype))
    if rope_settings(config)[1] == "llama3":
        factors = torch.from_numpy(llama3_rope_factors(config))
        target = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight"
        plan.append((lambda: factors, "", target, tuple(factors.shape), gguf.GGMLQuantizationType.F32))
    return plan


def _tensor_data(tensor: Any, name: str, config: dict[str, Any], qtype: Any) -> np.ndarray:
    """One tensor as it is stored: Q/K rows reordered, then converted as llama.cpp's converter converts (bfloat16
    through float32, numpy's rounding to float16). A float16 tensor stays in its own buffer: about one tensor of
    memory at a time."""
    import gguf
    import torch

    n_head = config["num_attention_heads"]
    n_kv = config.get("num_key_value_heads") or n_head
    if tensor.dtype not in (torch.float16, torch.float32):
        tensor = tensor.float()  # exact for bfloat16
    # A bias is added to the projection's output rows before RoPE, so it is reordered with them (as llama.cpp's
    # convert_hf_to_gguf.py LlamaModel.modify_tensors does for q_proj/k_proj weight and bias alike).
    if name.endswith(("q_proj.weight", "q_proj.bias")):
        tensor = permute_rotary(tensor, n_head)
    elif name.endswith(("k_proj.weight", "k_proj.bias")):
        tensor = permute_rotary(tensor, n_kv)
    array = tensor.numpy()
    if qtype == gguf.GGMLQuantizationType.F16:
        return array.astype(np.float16, copy=False)
    if qtype == gguf.GGMLQuantizationType.BF16:
        return gguf.quants.quantize(array.astype(np.float32, copy=False), qtype)
    return array.astype(np.float32, copy=False)


def choose_engine(model_dir: Path, config: dict[str, Any], engine: str = "auto") -> str:
    """'hcp' where hcp's writer covers the model (llama family, a rope scaling and tokenizer it knows), else
    'reference'. `engine` other than auto forces one; 'hcp' on a model it does not cover is an error."""
    if engine not in ENGINES:
        raise ExportError(f"converter {engine!r}: use one of {', '.join(ENGINES)}")
    if engine == "reference":
        return engine
    reason = _not_covered(model_dir, config)
    if reason and engine == "hcp":
        raise ExportError(f"{model_dir}: hcp's writer does not convert this model ({reason}) — use llama.cpp's "
                          "converter (the default)")
    return "reference" if reason else "hcp"


def _not_covered(model_dir: Path, config: dict[str, Any]) -> str | None:
    if architecture(config) not in HCP_ARCHITECTURES:
        return f"architecture {architecture(config)}"
    kind = rope_settings(config)[1]
    if kind not in HCP_ROPE_TYPES:
        return f"rope scaling {kind!r}"
    try:
        read_vocab(model_dir)
    except ExportError as exc:
        return str(exc).split(" — ")[0]
    return None


def convert_to_gguf(
    model_dir: str | Path, out_path: str | Path, *, outtype: str = "f16", name: str | None = None,
    metadata: dict[str, Any] | None = None, engine: str = "auto",
) -> ConvertResult:
    """Write `out_path` (GGUF, F32/F16/BF16) from an HF model folder. `metadata`: extra `hcp.*` keys. `engine`:
    auto (hcp's writer for the llama family, llama.cpp's converter for the rest), hcp or reference."""
    started = time.perf_counter()
    model_dir, out_path = Path(model_dir), Path(out_path)
    if outtype not in OUT_TYPES:
        raise ExportError(f"output type {outtype!r}: use one of {', '.join(OUT_TYPES)}, then quantize")
    config = read_config(model_dir)
    name = gguf_name(name or model_dir.name, model_dir)
    if choose_engine(model_dir, config, engine) == "reference":
        return _convert_with_reference(model_dir, out_path, config, outtype, name, metadata, started)
    return _convert_with_hcp(model_dir, out_path, config, outtype, name, metadata, started)


def _convert_with_hcp(model_dir: Path, out_path: Path, config: dict[str, Any], outtype: str, name: str,
                      metadata: dict[str, Any] | None, started: float) -> ConvertResult:
    import gguf

    vocab = read_vocab(model_dir)
    _pad_vocab(vocab, config["vocab_size"], model_dir)
    tokenizer = {"specials": special_tokens(model_dir), "template": chat_template(model_dir)}
    plan = _plan(model_dir, config, outtype)
    with atomic_path(out_path, private=True) as tmp:  # trained weights: the owner's alone
        writer = gguf.GGUFWriter(tmp, gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.LLAMA])
        try:
            writer.add_name(name)
            _write_metadata(writer, config, vocab, tokenizer, outtype, metadata)
            _write_tensors(writer, plan, config)
        finally:
            writer.close()
    return ConvertResult(out_path, outtype, len(plan), out_path.stat().st_size,
                         round(time.perf_counter() - started, 2), vocab.model, vocab.pre, dict(metadata or {}),
                         "hcp", architecture(config))


# --- llama.cpp's converter, with hcp's additions ------------------------------------------------------------


def tokenizer_overrides(model_dir: Path, metadata: dict[str, Any] | None) -> dict[str, Any]:
    """What hcp sets on top of llama.cpp's converter (a request for reference_driver.py).

    - `bpe_pre`: the pre-tokenizer read from tokenizer.json's structure. The converter guesses it from the hash
      of a sample text's tokens, which is unknown for a tokenizer trained here, and wrong for the one
      transformers rebuilds from SmolLM2's GGUF (it hashes as 'smollm' but splits text as GPT-2 does).
    - the add-BOS/EOS flags, from what the HF tokenizer does rather than what its config files say;
    - for SentencePiece vocabularies, the space prefix after special tokens (see `_space_prefix`): the converter
      leaves llama.cpp's default (a prefix) for most architectures, so the text after Phi-3's `<|user|>` would
      gain a '▁' that training never saw;
    - the chat template the model was trained with, and the `hcp.*` provenance.
    """
    path = model_dir / "tokenizer.json"
    tokenizer_json = json.loads(path.read_text()) if path.is_file() else None
    specials = special_tokens(model_dir)
    kv = [["tokenizer.chat_template", "STRING", chat_template(model_dir), None],
          ["tokenizer.ggml.add_bos_token", "BOOL", bool(specials["add_bos"]), None],
          ["tokenizer.ggml.add_eos_token", "BOOL", bool(specials["add_eos"]), None]]
    kv += [[key, "STRING", value, None] for key, value in _hcp_keys(metadata).items()]
    for_tokenizer = {}
    if tokenizer_json is not None:
        for_tokenizer["llama"] = [["tokenizer.ggml.add_space_prefix", "BOOL", _space_prefix(tokenizer_json), None]]
    return {"bpe_pre": bpe_pre((tokenizer_json or {}).get("pre_tokenizer")), "kv": kv,
            "kv_for_tokenizer": for_tokenizer,
            "byte_level_bpe": bool(tokenizer_json and is_byte_level_bpe(tokenizer_json))}


def _convert_with_reference(model_dir: Path, out_path: Path, config: dict[str, Any], outtype: str, name: str,
                            metadata: dict[str, Any] | None, started: float) -> ConvertResult:
    from gguf import GGUFReader

    from hcp.export.reference import run_reference

    run = run_reference(model_dir, out_path, outtype=outtype, name=name,
                        overrides=tokenizer_overrides(model_dir, metadata))
    reader = GGUFReader(out_path)
    model_field = reader.fields.get("tokenizer.ggml.model")
    pre_field = reader.fields.get("tokenizer.ggml.pre")
    return ConvertResult(out_path, outtype, len(reader.tensors), out_path.stat().st_size,
                         round(time.perf_counter() - started, 2), model_field.contents() if model_field else None,
                         pre_field.contents() if pre_field else None, dict(metadata or {}), "reference",
                         run.architecture)


def _hcp_keys(metadata: dict[str, Any] | None) -> dict[str, str]:
    return {"hcp.version": __version__, **{f"hcp.{key}": str(value) for key, value in (metadata or {}).items()}}


def _pad_vocab(vocab: Vocab, embed_rows: int, model_dir: Path) -> None:
    """Embeddings padded beyond the tokenizer (common for GPU-friendly sizes) get unused pieces."""
    import gguf

    if len(vocab.tokens) > embed_rows:
        raise ExportError(f"{model_dir}: the tokenizer has {len(vocab.tokens)} tokens but the model's "
                          f"embedding only {embed_rows} rows")
    pad = embed_rows - len(vocab.tokens)
    vocab.tokens += [f"[PAD{i}]".encode() for i in range(len(vocab.tokens), embed_rows)]
    vocab.scores += [-1000.0] * pad
    vocab.types += [int(gguf.TokenType.UNUSED)] * pad


def _write_metadata(writer: Any, config: dict[str, Any], vocab: Vocab, tokenizer: dict[str, Any], outtype: str,
                    metadata: dict[str, Any] | None) -> None:
    import gguf

    writer.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                          "bf16": gguf.LlamaFileType.MOSTLY_BF16}[outtype])
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_hparams(writer, config, len(vocab.tokens))
    write_vocab(writer, vocab, tokenizer["specials"], tokenizer["template"])
    for key, value in _hcp_keys(metadata).items():
        writer.add_string(key, value)


def _write_tensors(writer: Any, plan: list[Planned], config: dict[str, Any]) -> None:
    import gguf

    for _, _, target, shape, qtype in plan:
        itemsize = {gguf.GGMLQuantizationType.F32: 4}.get(qtype, 2)
        nbytes = int(np.prod(shape)) * itemsize
        dtype = np.float32 if qtype == gguf.GGMLQuantizationType.F32 else np.float16
        writer.add_tensor_info(target, shape, np.dtype(dtype), nbytes,
                               raw_dtype=None if qtype != gguf.GGMLQuantizationType.BF16 else qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for load, hf_name, _, _, qtype in plan:
        writer.write_tensor_data(_tensor_data(load(), hf_name, config, qtype))
