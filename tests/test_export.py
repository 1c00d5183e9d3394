"""Merge, GGUF conversion, quantization and the Modelfile, tested by behaviour on tiny models of both
tokenizer families: logits and tokenization must survive every step."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from hcp.chat import render_chat
from hcp.errors import ExportError
from tests.tiny import build_tiny_llama_bpe, make_adapter

pytest.importorskip("peft")

VARIED = [
    "Hello world",
    "RD: Hi.\nPatient: I eat 3 apples, 12 eggs!",
    "  two  spaces\n\n\ttab and trailing  ",
    "café naïve crème brûlée — 😀 emoji 🍎",
    '{"reasoning": "ok", "strengths": ["a"]}',
    "1234567 numbers 3.14 and 2,000 mg",
    "Über Straße ça 日本語 текст",
]


@pytest.fixture(scope="module")
def mistral_dir(tiny_mistral_dir) -> Path:
    return tiny_mistral_dir


@pytest.fixture(scope="module")
def llama_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


@pytest.fixture(scope="module")
def mistral_json_dir(mistral_dir, tmp_path_factory) -> Path:
    """The tiny Mistral as a trained adapter's folder has it: tokenizer.json only, no tokenizer.model."""
    import shutil

    folder = tmp_path_factory.mktemp("mistral_json")
    shutil.copytree(mistral_dir, folder, dirs_exist_ok=True)
    (folder / "tokenizer.model").unlink()
    return folder


@pytest.fixture(scope="module", params=["mistral", "mistral-json", "llama"])
def family(request, mistral_dir, mistral_json_dir, llama_dir) -> Path:
    return {"mistral": mistral_dir, "mistral-json": mistral_json_dir, "llama": llama_dir}[request.param]


@pytest.fixture(scope="module")
def f32_gguf(family, tmp_path_factory) -> Path:
    from hcp.export.convert import convert_to_gguf

    out = tmp_path_factory.mktemp("gguf") / "model.F32.gguf"
    convert_to_gguf(family, out, outtype="f32", name="tiny", metadata={"rubric_digest": "abc", "base_model": "t"})
    return out


def llama(path: Path, **kw):
    from llama_cpp import Llama

    return Llama(str(path), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False, **kw)


def hf_prompt_ids(tokenizer, messages) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


def cpp_prompt_ids(model, tokenizer, messages) -> list[int]:
    """What hcp's embedded backend feeds llama.cpp for the same chat."""

    template = model.metadata["tokenizer.chat_template"]
    text = render_chat(template, messages, bos_token=tokenizer.bos_token or "", eos_token=tokenizer.eos_token or "")
    bos = model.detokenize([model.token_bos()], special=True).decode()
    add_bos = model.metadata.get("tokenizer.ggml.add_bos_token") == "true"
    return model.tokenize(text.encode(), add_bos=add_bos and not text.startswith(bos), special=True)


# --- conversion -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", VARIED)
def test_chat_prompts_tokenize_like_hf(family, f32_gguf, rubric, text):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(family)
    model = llama(f32_gguf, vocab_only=True)
    messages = rubric.messages(text)
    assert cpp_prompt_ids(model, tokenizer, messages) == hf_prompt_ids(tokenizer, messages)


def test_plain_text_tokenizes_like_hf_for_byte_level_bpe(llama_dir, tmp_path):
    from transformers import AutoTokenizer

    from hcp.export.convert import convert_to_gguf

    out = convert_to_gguf(llama_dir, tmp_path / "m.gguf", outtype="f16").path
    tokenizer = AutoTokenizer.from_pretrained(llama_dir)
    model = llama(out, vocab_only=True)
    for text in VARIED:
        assert model.tokenize(text.encode(), add_bos=False, special=True) == \
            tokenizer(text, add_special_tokens=False)["input_ids"], text


def hf_and_gguf_logits(model_dir: Path, gguf: Path, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(HF float32 logits, llama.cpp logits) for the same tokens, each [tokens, vocab]."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = hf(torch.tensor([ids])).logits[0].numpy()
    model = llama(gguf, logits_all=True)
    model.eval(ids)
    return expected, np.array(model.scores[: len(ids)])


CHECK_TRANSCRIPT = "RD: How are you? Patient: Tired, my sugar is 11."


def chat_ids(model_dir: Path, rubric, transcript: str = CHECK_TRANSCRIPT) -> list[int]:
    """The last 200 tokens of the rendered rating prompt for `transcript`."""
    from transformers import AutoTokenizer

    return hf_prompt_ids(AutoTokenizer.from_pretrained(model_dir), rubric.messages(transcript))[-200:]


def assert_f32_logits_match(model_dir: Path, gguf: Path, ids: list[int]) -> None:
    expected, got = hf_and_gguf_logits(model_dir, gguf, ids)
    assert np.abs(got - expected).max() < 2e-3 * max(1.0, np.abs(expected).max())
    assert (got.argmax(-1) == expected.argmax(-1)).mean() > 0.99


def test_f32_logits_match_hf(family, f32_gguf, rubric):
    assert_f32_logits_match(family, f32_gguf, chat_ids(family, rubric))


def test_f32_logits_match_hf_with_attention_biases(tiny_llama_bias_dir, rubric, tmp_path):
    """q/k biases are rotated by RoPE with their rows, so the converter permutes them like the weights."""
    from hcp.export.convert import convert_to_gguf

    out = convert_to_gguf(tiny_llama_bias_dir, tmp_path / "bias.F32.gguf", outtype="f32").path
    assert_f32_logits_match(tiny_llama_bias_dir, out, chat_ids(tiny_llama_bias_dir, rubric))


def test_metadata_reads_back(family, f32_gguf):
    from gguf import GGUFReader

    from hcp.export.convert import chat_template

    reader = GGUFReader(f32_gguf)

    def value(key):
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode() if field.types[0].name == "STRING" else \
            field.parts[field.data[0]][0]

    assert value("general.architecture") == "llama" and value("general.name") == "tiny"
    assert value("hcp.rubric_digest") == "abc" and value("hcp.base_model") == "t"
    assert value("tokenizer.chat_template") == chat_template(family)
    assert value("llama.block_count") == 2 and value("llama.attention.head_count_kv") == 2


# Logits of each GGUF type against HF's float32, over every position of these prompts (~800 tokens). Measured on
# the tiny models with llama.cpp 0.3.36 (llama-cpp-python), as the largest |error| / max(1, largest |logit|),
# the lowest per-position correlation and the share of positions whose top-1 token agrees:
#
#   type     tiny llama (test below)        tiny mistral                   tiny llama, attention biases
#   f16      3.4e-4  1.000000  1.000        4.0e-4  1.000000  0.999        8.6e-4  0.999999  1.000
#   bf16     2.5e-3  0.999984  1.000        3.3e-3  0.999988  0.998        6.1e-3  0.999979  1.000
#   q8_0     7.2e-3  0.999856  0.999        9.9e-3  0.999890  0.986        2.1e-2  0.999810  0.993
#   q4_k_m   2.9e-2  0.997156  0.999        4.7e-2  0.996567  0.921        8.1e-2  0.996302  0.928
#   q5_k_m   2.6e-2  0.997665  0.998        4.3e-2  0.997642  0.925        7.9e-2  0.996375  0.974
#
# Hidden size 64 is below the k-quants' 256-wide blocks, so llama.cpp's fallbacks quantize "q4_k_m" to Q5_0/Q8_0
# and "q5_k_m" to Q5_1/Q8_0 here. Random tiny models have near-ties at the top (margins down to 0.002), so top-1
# flips under quantization noise (mistral's 0.92) say little; the tolerances below leave about 3x headroom over
# the model each test uses. For scale: an unpermuted q/k bias (fixed above) is a relative error of 0.21.
CHECK_TRANSCRIPTS = (
    CHECK_TRANSCRIPT,
    "RD: Any pain? Patient: A little, in my knee, when I walk.",
    "RD: What did you eat today? Patient: Toast, 2 eggs and coffee.",
    "RD: Hello. Patient: Hi.",
)
# type: (largest relative error, lowest correlation, lowest top-1 agreement)
GGUF_TOLERANCE = {
    "f16": (2e-3, 0.9999, 0.99),
    "bf16": (1e-2, 0.9999, 0.98),  # 0.988 measured on the evidence-era rating prompts: near-ties of a random model
    "q8_0": (2.5e-2, 0.999, 0.98),
    "q4_k_m": (0.1, 0.99, 0.98),
    "q5_k_m": (0.1, 0.99, 0.98),
}


def logit_gap(model_dir: Path, gguf: Path, rubric) -> tuple[float, float, float]:
    """(largest |error| / max(1, largest |logit|), lowest per-position correlation, top-1 agreement) of the GGUF
    in llama.cpp against the HF model in float32, over every position of CHECK_TRANSCRIPTS' rating prompts."""
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = llama(gguf, logits_all=True)
    expected, got = [], []
    for transcript in CHECK_TRANSCRIPTS:
        ids = chat_ids(model_dir, rubric, transcript)
        with torch.no_grad():
            expected.append(hf(torch.tensor([ids])).logits[0].numpy())  # [tokens, vocab]
        model.reset()
        model.eval(ids)
        got.append(np.array(model.scores[: len(ids)]))
    e, g = np.concatenate(expected), np.concatenate(got)
    relative = float(np.abs(g - e).max() / max(1.0, np.abs(e).max()))
    correlation = min(float(np.corrcoef(a, b)[0, 1]) for a, b in zip(e, g, strict=True))
    return relative, correlation, float((e.argmax(-1) == g.argmax(-1)).mean())


def assert_logits_close(model_dir: Path, gguf: Path, rubric, kind: str) -> None:
    relative, correlation, top1 = logit_gap(model_dir, gguf, rubric)
    max_relative, min_correlation, min_top1 = GGUF_TOLERANCE[kind]
    assert relative < max_relative, f"{kind}: logit error {relative:.2e} of the largest logit"
    assert correlation > min_correlation, f"{kind}: a position's logits correlate only {correlation:.6f}"
    assert top1 >= min_top1, f"{kind}: top-1 token agrees at {top1:.3f} of positions"


@pytest.mark.parametrize("quant", ["f16", "q8_0", "q4_k_m", "q5_k_m"])
def test_quantized_files_match_hf_and_generate(llama_dir, tmp_path, rubric, quant):
    from hcp.export.convert import convert_to_gguf
    from hcp.export.quantize import quantize_gguf

    wide = convert_to_gguf(llama_dir, tmp_path / "m.F16.gguf", outtype="f16").path
    path = wide if quant == "f16" else quantize_gguf(wide, tmp_path / f"m.{quant}.gguf", quant, threads=1).path
    assert_logits_close(llama_dir, path, rubric, quant)
    model = llama(path)
    out = model.create_completion("RD: Hello", max_tokens=8, temperature=0)
    assert out["usage"]["completion_tokens"] >= 1
    assert model.metadata["tokenizer.chat_template"]  # metadata survives quantization
    if quant != "f16":
        assert path.stat().st_size < wide.stat().st_size


def test_bf16_conversion_matches_hf(mistral_dir, tmp_path, rubric):
    from hcp.export.convert import convert_to_gguf

    out = convert_to_gguf(mistral_dir, tmp_path / "m.BF16.gguf", outtype="bf16").path
    assert_logits_close(mistral_dir, out, rubric, "bf16")
    assert llama(out).create_completion("RD:", max_tokens=4)["usage"]["completion_tokens"] >= 1


# --- merge ------------------------------------------------------------------------------------------------


def peft_logits(base: Path, adapter: Path, ids: list[int]) -> np.ndarray:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(model, adapter).eval()
    with torch.no_grad():
        return peft_model(torch.tensor([ids])).logits[0].numpy()


def test_streaming_merge_equals_peft(mistral_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from hcp.export.merge import merge_adapter

    adapter = make_adapter(mistral_dir, tmp_path / "adapter")
    result = merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert result.merged_modules == 14  # 7 modules x 2 layers
    ids = list(range(5, 60))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged", dtype=torch.float32).eval()
    base = AutoModelForCausalLM.from_pretrained(mistral_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        got = merged(torch.tensor([ids])).logits[0].numpy()
        before = base(torch.tensor([ids])).logits[0].numpy()
    expected = peft_logits(mistral_dir, adapter, ids)
    assert np.abs(expected - before).max() > 1e-3  # the adapter really changes the model
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # ... and tensor for tensor what peft's merge_and_unload gives
    from peft import PeftModel

    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(mistral_dir, dtype=torch.float32), adapter).merge_and_unload()
    ours = merged.state_dict()
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(ours[name], tensor, atol=1e-6, rtol=1e-5)
    provenance = json.loads((tmp_path / "merged" / "hcp_provenance.json").read_text())
    assert len(provenance["adapter_sha256"]) == 64


def assert_merged_like_peft(base: Path, adapter: Path, merged_dir: Path) -> None:
    """The merged folder gives the logits of peft's own merge_and_unload (and of the unmerged adapter), and
    those differ from the base's: the adapter really changes the model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = list(range(3, 40))
    merged = AutoModelForCausalLM.from_pretrained(merged_dir, dtype=torch.float32).eval()
    reference = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32), adapter).merge_and_unload().eval()
    original = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    with torch.no_grad():
        got, expected, before = (m(torch.tensor([ids])).logits[0].numpy() for m in (merged, reference, original))
    assert np.abs(expected - before).max() > 1e-3
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got, peft_logits(base, adapter, ids), atol=1e-5)


def test_merge_over_shards_with_trained_bias(tmp_path):
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    from hcp.export.merge import merge_adapter

    base = build_tiny_llama_bpe(tmp_path / "base", attention_bias=True, initializer_range=0.1)
    model = AutoModelForCausalLM.from_pretrained(base)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="100KB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (base / name).is_file():
            (tmp_path / "sharded" / name).write_bytes((base / name).read_bytes())
    sharded = tmp_path / "sharded"
    assert len(list(sharded.glob("*.safetensors"))) > 2
    adapter = make_adapter(sharded, tmp_path / "adapter", bias="lora_only", seed=3)
    # peft saves a wrapped layer's trained bias as `...q_proj.base_layer.bias`: q/k/v/o of 2 layers
    trained = [k for k in load_file(adapter / "adapter_model.safetensors") if k.endswith("_proj.base_layer.bias")]
    assert len(trained) == 8
    merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert len(list((tmp_path / "merged").glob("*.safetensors"))) == len(list(sharded.glob("*.safetensors")))
    assert_merged_like_peft(sharded, adapter, tmp_path / "merged")


@pytest.mark.parametrize("bias", ["none", "lora_only"])
def test_merge_adds_lora_bias_to_the_base_bias(tiny_llama_bias_dir, tmp_path, bias):
    """peft's lora_bias=True gives lora_B a bias; merging adds it, times the LoRA scale, to the layer's bias
    (over the trained bias when `bias` trains that too)."""
    from hcp.export.merge import merge_adapter

    adapter = make_adapter(tiny_llama_bias_dir, tmp_path / "adapter", lora_bias=True, bias=bias, alpha=12, seed=5,
                           targets=("q_proj", "k_proj", "v_proj", "o_proj"))  # the layers that have biases
    merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert_merged_like_peft(tiny_llama_bias_dir, adapter, tmp_path / "merged")


def test_merge_replaces_modules_saved_whole(mistral_dir, tmp_path):
    """modules_to_save (here lm_head and embed_tokens, untied in Mistral) are saved whole: merged, they replace
    the base's."""
    from hcp.export.merge import merge_adapter

    adapter = make_adapter(mistral_dir, tmp_path / "adapter", modules_to_save=("lm_head", "embed_tokens"))
    result = merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert result.replaced == ["lm_head.weight", "model.embed_tokens.weight"]
    assert_merged_like_peft(mistral_dir, adapter, tmp_path / "merged")


def test_merge_keeps_tied_embeddings_tied(llama_dir, tmp_path):
    """With ensure_weight_tying, peft trains one embedding shared by input and output, and saves it under both
    names; the tied base then takes it once."""
    from hcp.export.merge import merge_adapter

    adapter = make_adapter(llama_dir, tmp_path / "adapter", modules_to_save=("embed_tokens",),
                           ensure_weight_tying=True)
    result = merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert result.replaced == ["model.embed_tokens.weight"]
    assert_merged_like_peft(llama_dir, adapter, tmp_path / "merged")


def _add_tensor(adapter: Path, name: str, shape: tuple[int, ...]) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(adapter / "adapter_model.safetensors")
    save_file({**tensors, name: torch.zeros(shape)}, adapter / "adapter_model.safetensors")


@pytest.mark.parametrize(
    "model, options, extra, message",
    [
        ("mistral", {"lora_bias": True}, None, r"lora_B has a bias \(peft lora_bias=True\) but the base's "
         r"model.layers.0.mlp.down_proj has none"),
        ("llama", {"modules_to_save": ("lm_head",)}, None,
         "ties lm_head to embed_tokens, but the adapter saves its own lm_head.weight"),
        ("llama", {"modules_to_save": ("embed_tokens",)}, None,
         "ties lm_head to embed_tokens, but the adapter saves its own model.embed_tokens.weight"),
        ("mistral", {}, ("base_model.model.model.layers.0.mlp.extra.weight", (4, 4)),
         "model.layers.0.mlp.extra.weight, which the base .* does not have"),
        ("mistral", {}, ("base_model.model.lm_head.weight", (4, 4)), r"lm_head.weight is \[4, 4\] in the adapter"),
        ("mistral", {}, ("base_model.model.model.layers.0.mlp.up_proj.lora_magnitude_vector", (4,)),
         "not a tensor hcp merge knows"),
    ],
    ids=["lora-bias-without-base-bias", "tied-lm-head-alone", "tied-embeddings-alone", "unknown-module",
         "wrong-shape", "unknown-lora-tensor"],
)
def test_merge_refuses_what_it_cannot_merge(mistral_dir, llama_dir, tmp_path, model, options, extra, message):
    from hcp.export.merge import merge_adapter

    adapter = make_adapter({"mistral": mistral_dir, "llama": llama_dir}[model], tmp_path / "adapter", **options)
    if extra:
        _add_tensor(adapter, *extra)
    with pytest.raises(ExportError, match=message):
        merge_adapter(adapter, tmp_path / "merged")
    assert not (tmp_path / "merged").exists()


@pytest.mark.parametrize(
    "breakage, message",
    [
        ("no_config", "no adapter_config.json"),
        ("no_weights", "no adapter_model.safetensors"),
        ("dora", "DoRA adapters are not supported"),
        ("other_base", "adapter does not match the base"),
    ],
)
def test_merge_checks_before_writing(mistral_dir, llama_dir, tmp_path, breakage, message):
    from hcp.export.merge import merge_adapter

    adapter = make_adapter(mistral_dir, tmp_path / "adapter")
    base = None
    if breakage == "no_config":
        (adapter / "adapter_config.json").unlink()
    elif breakage == "no_weights":
        (adapter / "adapter_model.safetensors").unlink()
    elif breakage == "dora":
        config = json.loads((adapter / "adapter_config.json").read_text())
        (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_dora": True}))
    else:
        wide = build_tiny_llama_bpe(tmp_path / "wide", vocab_size=600)
        config = json.loads((wide / "config.json").read_text())
        config.update(hidden_size=96, intermediate_size=160)
        from transformers import AutoConfig, AutoModelForCausalLM

        (wide / "config.json").write_text(json.dumps(config))
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(wide)).save_pretrained(wide)
        base = wide
    with pytest.raises(ExportError, match=message):
        merge_adapter(adapter, tmp_path / "merged", base=base)
    assert not (tmp_path / "merged").exists() or not list((tmp_path / "merged").iterdir())


# --- Modelfile --------------------------------------------------------------------------------------------


def parse_modelfile(text: str) -> dict:
    """A small parser for Ollama's Modelfile grammar: INSTRUCTION args, triple-quoted multi-line values,
    double-quoted single-line values, # comments. PARAMETER repeats collect into lists."""
    result: dict = {"PARAMETER": {}, "comments": []}
    pos = 0
    pattern = re.compile(r'[ \t]*(?:#(?P<comment>[^\n]*)|(?P<cmd>[A-Za-z]+)[ \t]+(?P<arg>"""(?P<block>.*?)"""'
                         r'|"(?P<quoted>[^"\n]*)"|(?P<plain>[^\n]*)))[ \t]*(?:\n|$)', re.S)
    while pos < len(text):
        match = pattern.match(text, pos)
        assert match and match.end() > pos, f"unparsable Modelfile at: {text[pos:pos + 40]!r}"
        pos = match.end()
        if match["comment"] is not None:
            result["comments"].append(match["comment"].strip())
            continue
        cmd = match["cmd"].upper()
        value = match["block"] if match["block"] is not None else (
            match["quoted"] if match["quoted"] is not None else match["plain"].strip())
        if cmd == "PARAMETER":
            key, _, raw = value.partition(" ")
            raw = raw.strip()
            item = raw[1:-1] if raw.startswith('"') else (float(raw) if "." in raw else int(raw))
            result["PARAMETER"].setdefault(key, []).append(item)
        else:
            assert cmd not in result, f"{cmd} twice"
            result[cmd] = value
    return result


def render_go_prompt(template: str, system: str, prompt: str) -> str:
    """How Ollama renders a legacy (System/Prompt/Response) template for the turn being generated: every
    action substituted, and the text cut where the response begins."""
    text = template.split("{{ .Response }}")[0]
    text = text.replace('{{ "{{" }}', "\x00")
    assert re.findall(r"\{\{.*?\}\}", text.replace("{{ .System }}", "").replace("{{ .Prompt }}", "")) == []
    return text.replace("{{ .System }}", system).replace("{{ .Prompt }}", prompt).replace("\x00", "{{")


def test_template_renders_the_training_prompt(family, rubric):
    from transformers import AutoTokenizer

    from hcp.export.convert import chat_template, special_tokens
    from hcp.export.modelfile import ollama_chat_format

    tokenizer = AutoTokenizer.from_pretrained(family)
    add_bos = special_tokens(family)["add_bos"]
    chat = ollama_chat_format(chat_template(family), bos=tokenizer.bos_token, eos=tokenizer.eos_token,
                              add_bos=add_bos, special_tokens=tuple(tokenizer.all_special_tokens))
    messages = rubric.messages("RD: Hi {{ braces }}.\nPatient: Hello.")
    expected = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    rendered = render_go_prompt(chat.template, messages[0]["content"], messages[1]["content"])
    assert (tokenizer.bos_token + rendered if add_bos else rendered) == expected
    assert tokenizer.eos_token in chat.stops


def test_modelfile_round_trips(tmp_path, rubric):
    from hcp.export.modelfile import ModelfileSpec

    gguf = tmp_path / "out" / "m.Q4_K_M.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"GGUF")
    spec = ModelfileSpec("hcp-rater", gguf, "<|im_start|>system\n{{ .System }}<|im_end|>\n{{ .Response }}",
                         rubric.system_prompt + ' Say "quoted" words.',
                         {"num_ctx": 8192, "temperature": 0.0, "stop": ["<|im_end|>", "<|im_start|>"]},
                         "Apache License 2.0\nsecond line", {"rubric digest": rubric.digest})
    path = spec.write(tmp_path / "modelfiles" / "hcp-rater.Modelfile")
    parsed = parse_modelfile(path.read_text())
    assert parsed["FROM"] == "../out/m.Q4_K_M.gguf"
    assert (path.parent / parsed["FROM"]).resolve() == gguf.resolve()
    assert parsed["TEMPLATE"] == spec.template and parsed["SYSTEM"] == spec.system
    assert parsed["LICENSE"] == spec.license
    assert parsed["PARAMETER"] == {"num_ctx": [8192], "temperature": [0.0], "stop": ["<|im_end|>", "<|im_start|>"]}
    assert f"rubric digest: {rubric.digest}" in parsed["comments"]
    request = spec.create_request("sha256:" + "0" * 64)
    assert request["files"] == {"m.Q4_K_M.gguf": "sha256:" + "0" * 64}
    assert (request["template"], request["system"], request["parameters"]["stop"]) == \
        (parsed["TEMPLATE"], parsed["SYSTEM"], parsed["PARAMETER"]["stop"])


@pytest.mark.parametrize("system", ['A rubric with """ inside', 'ends with a quote "'])
def test_modelfile_refuses_unsafe_text(tmp_path, system):
    from hcp.export.modelfile import ModelfileSpec

    with pytest.raises(ExportError, match="three double quotes"):
        ModelfileSpec("x", tmp_path / "m.gguf", "{{ .Prompt }}", system)


def ollama_reads(block: str) -> str:
    """What Ollama's Modelfile parser keeps of a triple-quoted block (parser.go: runes for which Go's
    strconv.IsPrint holds, and the tabs and line breaks it writes through)."""
    import unicodedata

    return "".join(c for c in block if c in "\t\n\r " or unicodedata.category(c)[0] in "LMNPS")


def test_the_system_prompt_ollama_reads_from_the_modelfile_is_the_training_prompt(tmp_path):
    """No-break and zero-width spaces, a soft hyphen and a BOM pasted into the rubric: Ollama would drop them
    from the Modelfile's SYSTEM block, so the prompt the model was trained with must not hold them."""
    from hcp.config import load_config
    from hcp.export.modelfile import ModelfileSpec
    from hcp.rubric import Rubric

    config = tmp_path / "pasted.yaml"
    config.write_text("scoring:\n  dimensions:\n    warmth:\n      weight: 1\n"
                      "      description: \"Greets\u00a0the patient, lis\u00adtens\u200b well\ufeff\"\n"
                      "      levels: {5: \"Warm\u2009and\u200d kind\"}\n", encoding="utf-8")
    rubric = Rubric.from_config(load_config(config))
    assert "- warmth (weight 1.00): Greets the patient, listens well." in rubric.system_prompt
    assert "  5: Warm and kind" in rubric.system_prompt
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    spec = ModelfileSpec("x", gguf, "{{ .System }} {{ .Prompt }}{{ .Response }}", rubric.system_prompt,
                         license="MIT\x0cLicense")
    parsed = parse_modelfile(spec.write(tmp_path / "Modelfile").read_text(encoding="utf-8"))
    assert ollama_reads(parsed["SYSTEM"]) == parsed["SYSTEM"] == rubric.system_prompt
    assert parsed["LICENSE"] == ollama_reads(parsed["LICENSE"]) == "MITLicense"


@pytest.mark.parametrize("template, system", [("{{ .System }}\u200b{{ .Prompt }}", "rubric"),
                                              ("{{ .System }}{{ .Prompt }}", "a rubric\u00a0with a no-break space")])
def test_a_modelfile_refuses_text_ollama_would_drop(tmp_path, template, system):
    from hcp.export.modelfile import ModelfileSpec

    with pytest.raises(ExportError, match=r"holds U\+(200B|00A0) at character \d+, which Ollama drops"):
        ModelfileSpec("x", tmp_path / "m.gguf", template, system)


# --- the real model: SmolLM2 trained from its GGUF, exported again ------------------------------------------


@pytest.mark.slow
def test_smollm2_export_feeds_llama_cpp_the_training_tokens(rubric, tmp_path):
    """Training reads the GGUF base through transformers, whose tokenizer splits text with the GPT-2 pattern;
    llama.cpp's own SmolLM2 GGUF splits it differently (its prompts come out ~1.5% shorter). The export must
    reproduce the training tokens, not the original GGUF's."""
    from transformers import AutoTokenizer

    from hcp.data.dataset import load_dataset, write_jsonl
    from hcp.data.sample import generate_samples
    from hcp.export.convert import convert_to_gguf
    from hcp.scoring.backends.llama_cpp import default_model_path
    from hcp.train.base_model import resolve_base
    from hcp.train.trainer import IGNORE_INDEX, encode_example

    gguf = default_model_path()
    base = resolve_base(str(gguf)).path  # materialized once, then cached
    tokenizer = AutoTokenizer.from_pretrained(base)
    exported = llama(convert_to_gguf(base, tmp_path / "smol.F16.gguf", outtype="f16").path, vocab_only=True)
    original = llama(gguf, vocab_only=True)
    data = load_dataset(write_jsonl(tmp_path / "d.jsonl", generate_samples(8, seed=3)), rubric)
    assert data.ok and len(data.examples) == 8
    differs_from_original = 0
    for example in data.examples:
        encoded = encode_example(tokenizer, rubric, example)
        pairs = zip(encoded.input_ids, encoded.labels, strict=True)
        trained_prompt = [t for t, label in pairs if label == IGNORE_INDEX]
        messages = rubric.messages(example.transcript)
        assert cpp_prompt_ids(exported, tokenizer, messages) == trained_prompt, f"line {example.line}"
        differs_from_original += cpp_prompt_ids(original, tokenizer, messages) != trained_prompt
    assert differs_from_original == 8  # the check above would catch a converter that copied the original's
