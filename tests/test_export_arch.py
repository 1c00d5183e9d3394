"""Export beyond the llama family, checked against llama.cpp's own converter (convert_hf_to_gguf.py).

- llama family: hcp's writer and llama.cpp's converter write the same tensors, bit for bit;
- every other architecture (Qwen2, Qwen3, Gemma 2, Gemma 3, Phi-3): the GGUF in llama.cpp gives the HF model's
  logits, and tokenizes the rating prompt exactly as training did;
- what hcp adds on top of the converter is needed: without it the converter fails or mistokenizes;
- training, merging, exporting and rating work end to end for each architecture, through llama.cpp and through
  the Ollama protocol double.

The tiny models come from tests/tiny.py (`build_tiny`). One architecture of each check runs in the default
selection; the rest are `slow` (each reference conversion starts torch and transformers: about 10 s).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from hcp.cli import cli
from hcp.errors import ConfigError, ExportError
from tests.fakes import fake_sdist
from tests.test_export import VARIED, assert_f32_logits_match, render_go_prompt
from tests.test_export_ollama import write_short_training
from tests.tiny import ARCHITECTURES, GEMMA2_TEMPLATE, GEMMA3_TEMPLATE, LLAMA31_ROPE, build_tiny_llama_bpe

pytest.importorskip("peft")

SHORT = str(Path(__file__).parent / "data" / "short_answers.yaml")
TRANSCRIPT = "RD: Hello, what brings you in today?\nPatient: My blood pressure is high and I love salty snacks."
DEFAULT_SUITE = ("phi3",)  # the architecture checked in the default selection: fused layers, SentencePiece, rstrip


def each_architecture(*architectures: str) -> list:
    return [pytest.param(a, marks=() if a in DEFAULT_SUITE else pytest.mark.slow) for a in architectures]


def gguf_tensors(path: Path) -> dict[str, tuple[str, tuple[int, ...], bytes]]:
    from gguf import GGUFReader

    return {t.name: (t.tensor_type.name, tuple(int(n) for n in t.shape), t.data.tobytes())
            for t in GGUFReader(path).tensors}


def gguf_value(path: Path, key: str):
    from gguf import GGUFReader

    field = GGUFReader(path).fields.get(key)
    return None if field is None else field.contents()


def trained_ids(model_dir: Path, messages: list[dict[str, str]]) -> list[int]:
    from transformers import AutoTokenizer

    from hcp.train.trainer import prompt_ids

    return prompt_ids(AutoTokenizer.from_pretrained(model_dir), messages)


@pytest.fixture(scope="module")
def llama31_dir(tmp_path_factory) -> Path:
    """The tiny Llama with Llama 3.1's rope scaling (wider weights, so that rope shows in the logits)."""
    return build_tiny_llama_bpe(tmp_path_factory.mktemp("llama31"), rope_parameters=LLAMA31_ROPE,
                                initializer_range=0.1)


# --- the reference converter ------------------------------------------------------------------------------


def test_the_reference_converter_is_the_installed_llama_cpp_version():
    import importlib.metadata

    from hcp.export.reference import MARKER, find_reference

    folder = find_reference()
    marker = json.loads((folder / MARKER).read_text())
    assert folder.name == marker["version"] == importlib.metadata.version("llama-cpp-python")
    assert len(marker["sdist_sha256"]) == 64
    assert (folder / "convert_hf_to_gguf.py").is_file() and (folder / "gguf-py" / "gguf" / "gguf_writer.py").is_file()
    assert (folder / "LICENSE").is_file()


def test_a_missing_reference_converter_is_one_line_saying_how_to_set_it_up(tmp_path, monkeypatch):
    from hcp.export.reference import find_reference

    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path))
    with pytest.raises(ExportError, match=r"not set up in .* run 'python -m hcp.export.reference' once"):
        find_reference()


def test_setup_takes_only_the_converter_from_the_installed_versions_source(tmp_path, monkeypatch):
    import importlib.metadata

    from hcp.export.reference import MARKER, install_reference

    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path / "cache"))
    version = importlib.metadata.version("llama-cpp-python")
    vendor = "vendor/llama.cpp/"
    archive = fake_sdist(tmp_path / "sdist.tar.gz", version, {
        vendor + "convert_hf_to_gguf.py": "# converter", vendor + "conversion/base.py": "# classes",
        vendor + "gguf-py/gguf/__init__.py": "# gguf", vendor + "LICENSE": "MIT", vendor + "src/llama.cpp": "// C++",
        "llama_cpp/llama.py": "# bindings"})
    folder = install_reference(archive)
    assert folder == tmp_path / "cache" / "llama.cpp" / version
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    assert files == ["LICENSE", "conversion/base.py", "convert_hf_to_gguf.py", "gguf-py/gguf/__init__.py", MARKER]
    assert json.loads((folder / MARKER).read_text())["version"] == version
    other = fake_sdist(tmp_path / "other.tar.gz", "0.0.1", {vendor + "convert_hf_to_gguf.py": "#"})
    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path / "cache2"))
    with pytest.raises(ExportError, match=f"not the source distribution of llama-cpp-python {version}"):
        install_reference(other)
    assert not (tmp_path / "cache2" / "llama.cpp" / version).exists()


# --- llama family: hcp's writer is the reference, tensor for tensor ------------------------------------------


@pytest.mark.parametrize("model", ["llama", pytest.param("mistral", marks=pytest.mark.slow),
                                   pytest.param("llama-bias", marks=pytest.mark.slow), "llama31"])
def test_llama_family_gguf_equals_the_reference_tensor_for_tensor(model, request, tmp_path):
    from hcp.export.convert import convert_to_gguf

    folder = request.getfixturevalue({"llama": "tiny_llama_dir", "mistral": "tiny_mistral_dir",
                                      "llama-bias": "tiny_llama_bias_dir", "llama31": "llama31_dir"}[model])
    ours = convert_to_gguf(folder, tmp_path / "hcp.gguf", outtype="f16")
    reference = convert_to_gguf(folder, tmp_path / "reference.gguf", outtype="f16", engine="reference")
    assert (ours.engine, reference.engine) == ("hcp", "reference")
    mine, theirs = gguf_tensors(ours.path), gguf_tensors(reference.path)
    assert sorted(mine) == sorted(theirs)
    for name, (kind, shape, data) in theirs.items():
        assert mine[name][:2] == (kind, shape), name
        assert mine[name][2] == data, f"{name}: the bytes differ"
    if model == "llama31":
        assert "rope_freqs.weight" in mine


def test_llama31_rope_scaling_is_exported_and_gives_the_hf_logits(llama31_dir, tmp_path, rubric):
    """Llama 3.1's `llama3` rope scaling (once refused) becomes llama.cpp's rope_freqs tensor; the check bites:
    the same model without the scaling gives other logits at these positions."""
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    from hcp.export.convert import convert_to_gguf

    out = convert_to_gguf(llama31_dir, tmp_path / "m.F32.gguf", outtype="f32")
    assert out.engine == "hcp"
    ids = trained_ids(llama31_dir, rubric.messages(TRANSCRIPT))[-200:]
    assert_f32_logits_match(llama31_dir, out.path, ids)
    scaled = AutoModelForCausalLM.from_pretrained(llama31_dir, dtype=torch.float32).eval()
    plain_config = scaled.config
    plain_config.rope_parameters = {"rope_type": "default", "rope_theta": LLAMA31_ROPE["rope_theta"]}
    plain = LlamaForCausalLM(plain_config).eval()
    plain.load_state_dict(scaled.state_dict())
    with torch.no_grad():
        gap = (scaled(torch.tensor([ids])).logits - plain(torch.tensor([ids])).logits).abs().max()
    assert gap > 0.05


# --- other architectures: the HF model's logits and the training tokens ------------------------------------


@pytest.mark.parametrize("architecture", each_architecture(*ARCHITECTURES))
def test_gguf_of_each_architecture_gives_the_hf_logits_and_the_training_tokens(architecture, tiny_model, tmp_path,
                                                                                rubric):
    from transformers import AutoTokenizer

    from hcp.export.convert import chat_template, convert_to_gguf
    from hcp.export.tokens import llama_cpp_prompt_ids

    folder = tiny_model(architecture)
    out = convert_to_gguf(folder, tmp_path / "m.F32.gguf", outtype="f32", name="rater",
                          metadata={"rubric_digest": rubric.digest})
    assert out.engine == "reference" and out.architecture == json.loads((folder / "config.json").read_text())[
        "architectures"][0]
    for text in VARIED:
        messages = rubric.messages(text)
        assert llama_cpp_prompt_ids(out.path, messages) == trained_ids(folder, messages), text
    assert_f32_logits_match(folder, out.path, trained_ids(folder, rubric.messages(TRANSCRIPT))[-200:])
    assert gguf_value(out.path, "tokenizer.chat_template") == chat_template(folder)
    assert gguf_value(out.path, "hcp.rubric_digest") == rubric.digest
    tokenizer = AutoTokenizer.from_pretrained(folder)
    assert gguf_value(out.path, "tokenizer.ggml.eos_token_id") == tokenizer.eos_token_id


@pytest.mark.slow
def test_the_reference_alone_fails_or_mistokenizes_where_hcp_adds_to_it(tiny_model, tmp_path, rubric):
    """What hcp adds on top of the converter is not decoration: without it, a Qwen2 tokenizer trained here is
    unknown to the converter, and the Phi-3 GGUF (llama.cpp's default space prefix, a name that is not Phi-3's)
    gives llama.cpp other tokens than training."""
    from hcp.export.reference import run_reference
    from hcp.export.tokens import llama_cpp_prompt_ids

    with pytest.raises(ExportError, match="known neither to hcp nor to llama.cpp's converter"):
        run_reference(tiny_model("qwen2"), tmp_path / "q.gguf", outtype="f16", name="rater", overrides={})
    phi3 = tiny_model("phi3")
    run_reference(phi3, tmp_path / "p.gguf", outtype="f16", name="rater", overrides={})
    messages = rubric.messages(TRANSCRIPT)
    assert llama_cpp_prompt_ids(tmp_path / "p.gguf", messages) != trained_ids(phi3, messages)


@pytest.mark.slow
def test_a_sentencepiece_vocabulary_from_tokenizer_json_alone_needs_hcps_writer(tiny_mistral_dir, tmp_path, rubric):
    """Why the llama family keeps hcp's writer: a SentencePiece-style vocabulary saved as tokenizer.json alone (as
    transformers v5 saves one) gets equal scores from the converter, and llama.cpp then merges pieces in another
    order; hcp's writer scores each piece by its merge rank. Both write the same tensors."""
    import shutil

    from hcp.export.convert import convert_to_gguf
    from hcp.export.tokens import check_prompt_tokens

    folder = tmp_path / "mistral-json"
    shutil.copytree(tiny_mistral_dir, folder)
    (folder / "tokenizer.model").unlink()
    messages = rubric.messages(TRANSCRIPT)
    ours = convert_to_gguf(folder, tmp_path / "hcp.gguf", outtype="f16")
    assert ours.engine == "hcp" and check_prompt_tokens(ours.path, folder, messages) > 0
    reference = convert_to_gguf(folder, tmp_path / "reference.gguf", outtype="f16", engine="reference")
    assert gguf_tensors(reference.path) == gguf_tensors(ours.path)
    with pytest.raises(ExportError, match="tokenizes the rating prompt differently from training"):
        check_prompt_tokens(reference.path, folder, messages)


@pytest.mark.slow
def test_smollm2_base_the_reference_guesses_the_wrong_pre_tokenizer(tmp_path, rubric):
    """The tokenizer transformers rebuilds from SmolLM2's GGUF hashes like SmolLM's own ('smollm') but splits text
    as GPT-2 does; hcp reads the split from tokenizer.json. Its writer and the reference (with hcp's additions)
    then write the same tensors, and the same tokens as training."""
    from hcp.export.convert import convert_to_gguf
    from hcp.export.reference import run_reference
    from hcp.export.tokens import llama_cpp_prompt_ids
    from hcp.scoring.backends.llama_cpp import default_model_path
    from hcp.train.base_model import resolve_base

    base = resolve_base(str(default_model_path())).path
    ours = convert_to_gguf(base, tmp_path / "hcp.gguf", outtype="f16")
    reference = convert_to_gguf(base, tmp_path / "reference.gguf", outtype="f16", engine="reference")
    assert gguf_tensors(ours.path) == gguf_tensors(reference.path)
    messages = rubric.messages(TRANSCRIPT)
    trained = trained_ids(base, messages)
    assert (ours.pre, reference.pre) == ("gpt-2", "gpt-2")
    assert llama_cpp_prompt_ids(reference.path, messages) == trained
    run_reference(base, tmp_path / "alone.gguf", outtype="f16", name="rater", overrides={})
    assert gguf_value(tmp_path / "alone.gguf", "tokenizer.ggml.pre") == "smollm"
    assert llama_cpp_prompt_ids(tmp_path / "alone.gguf", messages) != trained


# --- what training and the Modelfile need per architecture -------------------------------------------------


def test_lora_targets_in_llama_names_adapt_phi3_fused_layers():
    from transformers import AutoModelForCausalLM, Phi3Config, Qwen2Config

    from hcp.config import load_config
    from hcp.train.trainer import lora_targets

    shape = {"vocab_size": 64, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 4, "num_key_value_heads": 2}
    default = load_config().training.lora.target_modules
    phi3 = AutoModelForCausalLM.from_config(Phi3Config(**shape, pad_token_id=0))
    targets, renamed = lora_targets(phi3, default)
    assert sorted(targets) == ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"]
    assert renamed == {"q_proj": "qkv_proj", "v_proj": "qkv_proj", "k_proj": "qkv_proj", "gate_proj": "gate_up_proj",
                       "up_proj": "gate_up_proj"}
    qwen2 = AutoModelForCausalLM.from_config(Qwen2Config(**shape))
    assert lora_targets(qwen2, default) == (list(default), {})
    with pytest.raises(ConfigError, match="training.lora.target_modules: w_pack not in the model — its linear layers "
                                          "are down_proj, gate_up_proj, lm_head, o_proj, qkv_proj"):
        lora_targets(phi3, ["qkv_proj", "w_pack"])


def test_a_template_without_a_system_turn_gets_the_system_text_in_the_first_user_turn(tiny_model, rubric):
    """Gemma 2's template refuses a system turn; training, scoring and the Modelfile fold it into the first user
    turn, which is what Gemma 3's template does on its own."""
    from transformers import AutoTokenizer

    from hcp.chat import render_chat
    from hcp.train.trainer import chat_texts

    messages = rubric.messages(TRANSCRIPT)
    scored = render_chat(GEMMA2_TEMPLATE, messages, bos_token="<bos>")
    assert scored == render_chat(GEMMA3_TEMPLATE, messages, bos_token="<bos>")
    assert scored.startswith("<bos><start_of_turn>user\n" + rubric.system_prompt + "\n\nRate the provider")
    tokenizer = AutoTokenizer.from_pretrained(tiny_model("gemma2"))
    prompt, completion = chat_texts(tokenizer, rubric, TRANSCRIPT, '{"a": 1}')
    assert prompt == scored and completion == '{"a": 1}<end_of_turn>'


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_modelfile_template_renders_the_training_prompt(architecture, tiny_model, rubric):
    from transformers import AutoTokenizer

    from hcp.chat import render_chat
    from hcp.export.convert import chat_template, special_tokens
    from hcp.export.modelfile import ollama_chat_format

    folder = tiny_model(architecture)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    add_bos = special_tokens(folder)["add_bos"]
    chat = ollama_chat_format(chat_template(folder), bos=tokenizer.bos_token or "", eos=tokenizer.eos_token,
                              add_bos=add_bos, special_tokens=tuple(tokenizer.all_special_tokens))
    messages = rubric.messages("RD: Hi {{ braces }}.\nPatient: Hello.")
    expected = render_chat(chat_template(folder), messages, bos_token=tokenizer.bos_token or "",
                           eos_token=tokenizer.eos_token)
    rendered = render_go_prompt(chat.template, messages[0]["content"], messages[1]["content"])
    assert (tokenizer.bos_token + rendered if add_bos else rendered) == expected
    end_of_turn = {"qwen2": "<|im_end|>\n", "qwen3": "<|im_end|>\n", "gemma2": "<end_of_turn>\n",
                   "gemma3": "<end_of_turn>\n", "phi3": "<|end|>\n", "phi4": "<|im_end|>"}[architecture]
    assert end_of_turn.strip() in chat.stops and chat.template.endswith("{{ .Response }}" + end_of_turn)


# --- llama.cpp's token rules, and the check that guards them ----------------------------------------------


def test_gguf_name_makes_llama_cpp_strip_whitespace_after_special_tokens_as_hf_does(tiny_model, tiny_llama_dir):
    """llama.cpp strips whitespace after special tokens for models whose name says Phi-3, and for no other."""
    from hcp.export.convert import gguf_name

    assert gguf_name("hcp-rater", tiny_model("phi3")) == "hcp-rater (phi-3)"
    assert gguf_name("my-Phi-3-rater", tiny_model("phi3")) == "my-Phi-3-rater"
    assert gguf_name("phi3-rater", tiny_llama_dir) == "phi 3-rater"
    assert gguf_name("Phi-3 rater", tiny_llama_dir) == "Phi- 3 rater"
    assert gguf_name("hcp-rater", tiny_llama_dir) == "hcp-rater"


def test_export_refuses_a_gguf_that_llama_cpp_would_tokenize_otherwise(tiny_llama_dir, tiny_mistral_dir, tmp_path,
                                                                        rubric, monkeypatch):
    """The token check after conversion stops a GGUF that llama.cpp would read otherwise than training did: here a
    SentencePiece space prefix after [INST] that the HF tokenizer does not add, and a ChatML model under a Phi-3
    name, which llama.cpp cannot even load (its Phi-3 rule looks for </s>) — hcp renames it (above)."""
    import hcp.export.convert as convert
    from hcp.export.tokens import check_prompt_tokens

    messages = rubric.messages(TRANSCRIPT)
    good = convert.convert_to_gguf(tiny_llama_dir, tmp_path / "good.gguf", outtype="f16", name="phi3-rater")
    assert check_prompt_tokens(good.path, tiny_llama_dir, messages) == len(trained_ids(tiny_llama_dir, messages))
    monkeypatch.setattr(convert, "_space_prefix", lambda tokenizer_json: True)
    prefixed = convert.convert_to_gguf(tiny_mistral_dir, tmp_path / "prefixed.gguf", outtype="f16")
    with pytest.raises(ExportError, match=r"prefixed.gguf: llama.cpp tokenizes the rating prompt differently from "
                                          r"training \(\d+ tokens against \d+; from token \d+: "):
        check_prompt_tokens(prefixed.path, tiny_mistral_dir, messages)
    monkeypatch.setattr(convert, "gguf_name", lambda name, model_dir: name)
    misnamed = convert.convert_to_gguf(tiny_llama_dir, tmp_path / "misnamed.gguf", outtype="f16", name="phi3-rater")
    with pytest.raises(ExportError, match="misnamed.gguf: llama.cpp cannot load its vocabulary"):
        check_prompt_tokens(misnamed.path, tiny_llama_dir, messages)


# --- merge and the whole path, per architecture ------------------------------------------------------------


@pytest.mark.parametrize("architecture", each_architecture(*ARCHITECTURES))
def test_streaming_merge_equals_peft_for_each_architecture(architecture, tiny_model, tmp_path):
    from hcp.export.merge import merge_adapter
    from tests.test_export import assert_merged_like_peft
    from tests.tiny import make_adapter

    base = tiny_model(architecture)
    targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if architecture.startswith("phi") else \
        ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    adapter = make_adapter(base, tmp_path / "adapter", targets=targets, bias="lora_only" if architecture == "qwen2"
                           else "none")
    result = merge_adapter(adapter, tmp_path / "merged", dtype="f32")
    assert result.merged_modules == 2 * len(targets)
    assert_merged_like_peft(base, adapter, tmp_path / "merged")


@pytest.mark.slow
@pytest.mark.parametrize("architecture", ["qwen2", "gemma2", "phi3"])
def test_train_export_and_rate_each_architecture(architecture, tiny_model, tmp_path, monkeypatch, ollama_double):
    """hcp train (2 steps) -> hcp export-ollama (merge, llama.cpp's converter, token check, Q8_0, Modelfile, smoke
    check, registered in the Ollama double) -> hcp score through Ollama and through llama.cpp on the GGUF."""
    from transformers import AutoTokenizer

    from hcp.config import load_config
    from hcp.rubric import Rubric
    from hcp.train.trainer import prompt_ids

    monkeypatch.chdir(tmp_path)
    ollama_double.reset()
    config = write_short_training(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "train.jsonl", "--base", str(tiny_model(architecture)),
                                 "--config", str(config), "--max-steps", "2", "--output", "models/rd"])
    assert result.exit_code == 0, result.output
    if architecture == "phi3":
        assert "fuses q_proj, v_proj, k_proj into qkv_proj" in result.output
    name = f"{architecture}-rater"
    result = runner.invoke(cli, ["export-ollama", "models/rd", "--name", name, "--quant", "q8_0", "--host",
                                 ollama_double.url, "--threads", "1", "--no-parity-check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "llama.cpp's converter" in result.output and "tokens of training" in result.output
    assert f"registered as {name}" in result.output
    rubric = Rubric.from_config(load_config(str(config)))
    trained = prompt_ids(AutoTokenizer.from_pretrained(tiny_model(architecture)), rubric.messages(TRANSCRIPT))
    for backend, model in (("ollama", name), ("llama-cpp", f"models/rd/export/{name}.Q8_0.gguf")):
        result = runner.invoke(cli, ["score", TRANSCRIPT, "--backend", backend, "--model", model, "--host",
                                     ollama_double.url, "--json", "--threads", "1", "--config", str(config)])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        rubric.validate_json(json.dumps(payload["rating"]))
        assert payload["backend"] == backend and payload["prompt_tokens"] == len(trained)
    assert ollama_double.rendered_with == "template"


def test_an_architecture_llama_cpp_does_not_know_is_refused_in_one_line(tiny_llama_dir, tmp_path):
    import shutil

    from hcp.export.convert import convert_to_gguf

    shutil.copytree(tiny_llama_dir, tmp_path / "model")
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps({**config, "architectures": ["NoSuchForCausalLM"]}))
    with pytest.raises(ExportError, match=r"architecture NoSuchForCausalLM is not one llama.cpp's converter "
                                          r"\(llama-cpp-python [\d.]+\) knows"):
        convert_to_gguf(tmp_path / "model", tmp_path / "x.gguf")
    assert list(tmp_path.glob("*.gguf*")) == []

