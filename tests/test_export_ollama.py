"""The whole export path through the CLI: tiny model -> GGUF -> Modelfile -> registered in the Ollama protocol
double -> rated through the real `ollama` client, with the daemon rendering the Modelfile's TEMPLATE."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from tests.test_export import parse_modelfile

SHORT = str(Path(__file__).parent / "data" / "short_answers.yaml")
TRANSCRIPT = "RD: Hello, what brings you in today?\nPatient: My blood pressure is high and I love salty snacks."


@pytest.fixture(scope="module")
def tiny_dir(tiny_llama_dir) -> Path:
    return tiny_llama_dir


def closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


def test_export_without_daemon_writes_files_and_the_command(tiny_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(cli, ["export-ollama", str(tiny_dir), "--name", "tiny-rater", "--quant", "q8_0",
                                      "--out", str(tmp_path / "out"), "--host", closed_port_url(), "--threads", "2",
                                      "--no-parity-check", "--config", SHORT])
    assert result.exit_code == 0, result.output
    gguf = tmp_path / "out" / "tiny-rater.Q8_0.gguf"
    assert gguf.is_file() and not (tmp_path / "out" / "tiny-rater.F16.gguf").exists()
    assert "not registered; when Ollama runs: ollama create tiny-rater:1 -f modelfiles/tiny-rater.Modelfile" \
        in result.output
    assert "smoke check" in result.output and "valid rating" in result.output
    for modelfile in (tmp_path / "out" / "Modelfile", tmp_path / "modelfiles" / "tiny-rater.Modelfile"):
        parsed = parse_modelfile(modelfile.read_text())
        assert (modelfile.parent / parsed["FROM"]).resolve() == gguf.resolve()
        assert "{{ .System }}" in parsed["TEMPLATE"] and "{{ .Prompt }}" in parsed["TEMPLATE"]
        assert parsed["PARAMETER"]["stop"] == ["<|im_end|>", "<|im_start|>"]


@pytest.mark.parametrize(
    "args, message",
    [
        (["export-ollama", "{tmp}/missing"], "not a folder"),
        (["export-ollama", "{tmp}"], "neither an adapter"),
        (["merge", "{tmp}", "--output", "{tmp}/m"], "no adapter_config.json"),
    ],
)
def test_export_errors(tmp_path, args, message):
    result = CliRunner().invoke(cli, [a.format(tmp=tmp_path) for a in args])
    assert result.exit_code == 1 and message in result.output and "Traceback" not in result.output


def test_exported_model_rates_through_ollama_with_the_training_prompt(tiny_dir, tmp_path, monkeypatch,
                                                                     ollama_double):
    from transformers import AutoTokenizer

    from hcp.config import load_config
    from hcp.rubric import Rubric

    rubric = Rubric.from_config(load_config(SHORT))

    monkeypatch.chdir(tmp_path)
    ollama_double.reset()
    runner = CliRunner()
    result = runner.invoke(cli, ["export-ollama", str(tiny_dir), "--name", "tiny-rater", "--out",
                                 str(tmp_path / "out"), "--host", ollama_double.url, "--threads", "1",
                                 "--parity-transcripts", "1", "--config", SHORT])
    assert result.exit_code == 0, result.output
    assert "parity q4_k_m" in result.output and "meets the target" in result.output
    assert "registered as tiny-rater" in result.output
    created = ollama_double.requests_to("/api/create")[-1].body
    assert created["system"] == rubric.system_prompt
    assert set(created["parameters"]) == {"num_ctx", "temperature", "repeat_penalty", "stop"}

    result = runner.invoke(cli, ["score", TRANSCRIPT, "--backend", "ollama", "--model", "tiny-rater", "--host",
                                 ollama_double.url, "--json", "--config", SHORT])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rubric.validate_json(json.dumps(payload["rating"]))
    assert payload["backend"] == "ollama"
    # The daemon built the prompt from the Modelfile's TEMPLATE, and it is the training prompt token for token.
    assert ollama_double.rendered_with == "template"
    tokenizer = AutoTokenizer.from_pretrained(tiny_dir)
    trained = tokenizer.apply_chat_template(rubric.messages(TRANSCRIPT), tokenize=True, add_generation_prompt=True)
    trained = trained["input_ids"] if hasattr(trained, "keys") else trained
    assert payload["prompt_tokens"] == len(trained)


def test_export_refuses_a_rubric_other_than_the_trained_one(tmp_path):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (adapter / "training_config.json").write_text(json.dumps({"rubric": {"digest": "0123456789abcdef"}}))
    result = CliRunner().invoke(cli, ["export-ollama", str(adapter), "--no-create"])
    assert result.exit_code == 1
    assert "was trained with rubric 0123456789abcdef" in result.output and "--config used for training" in result.output


def test_train_export_score_through_ollama(tiny_llama_dir, tmp_path, monkeypatch, ollama_double):
    """The user's whole path on a tiny model: hcp train -> hcp export-ollama -> hcp score --backend ollama."""


    monkeypatch.chdir(tmp_path)
    ollama_double.reset()
    config = write_short_training(tmp_path)
    runner = CliRunner()
    result = runner.invoke(cli, ["train", "--data", "train.jsonl", "--base", str(tiny_llama_dir), "--config",
                                 str(config), "--max-steps", "2", "--output", "models/rd"])
    assert result.exit_code == 0, result.output
    assert not list((tmp_path / "models" / "rd").glob("tokenizer.model"))  # trained adapters carry tokenizer.json
    result = runner.invoke(cli, ["export-ollama", "models/rd", "--name", "rd-rater", "--host", ollama_double.url,
                                 "--threads", "1", "--no-parity-check", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "merge" in result.output and "registered as rd-rater" in result.output
    assert not (tmp_path / "models" / "rd" / "export" / "merged").exists()  # intermediates removed
    result = runner.invoke(cli, ["score", TRANSCRIPT, "--backend", "ollama", "--model", "rd-rater", "--host",
                                 ollama_double.url, "--json", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["backend"] == "ollama" and ollama_double.rendered_with == "template"


def test_export_of_an_adapter_without_tokenizer_files(tiny_llama_dir, tmp_path, monkeypatch):
    """peft's own save_pretrained writes no tokenizer: the base's is used, and the Modelfile still gets it."""
    from tests.tiny import make_adapter

    monkeypatch.chdir(tmp_path)
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    assert not (adapter / "tokenizer.json").exists()
    result = CliRunner().invoke(cli, ["export-ollama", str(adapter), "--name", "bare", "--no-create",
                                      "--threads", "1", "--no-parity-check", "--config", SHORT])
    assert result.exit_code == 0, result.output
    assert (adapter / "export" / "bare.Q4_K_M.gguf").is_file()
    assert "{{ .Prompt }}" in (adapter / "export" / "Modelfile").read_text()


# --- the model name ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, allowed, why",
    [
        ("hcp-rater", True, "the default"),
        ("hcp_rater.v2", True, "letters, digits, '_', '-', '.'"),
        ("clinic/hcp-rater:v2", True, "a namespace and a tag"),
        ("_private", True, "a part may begin with '_'"),
        ("x" * 80, True, "80 characters: the longest part"),
        ("x" * 81, False, "81 characters"),
        ("../../x", False, "a path out of the output folder"),
        ("a..b", False, "'..' anywhere"),
        ("/x", False, "an empty namespace"),
        ("a/b/c", False, "a host: hcp registers on this machine's daemon only"),
        ("cl.inic/x", False, "'.' in the namespace"),
        ("-x", False, "begins with '-'"),
        (".x", False, "begins with '.'"),
        ("x:", False, "an empty tag"),
        ("x:-1", False, "a tag beginning with '-'"),
        ("x:a:b", False, "two tags"),
        ("", False, "empty"),
        ("a b", False, "a space"),
        ("x;rm -rf ~", False, "shell characters (the name is printed in an 'ollama create' command)"),
        ("modèle", False, "a letter outside ASCII"),
        ("x\n", False, "a trailing newline"),
    ],
)
def test_model_names(name, allowed, why):
    from hcp.errors import ExportError
    from hcp.export.pipeline import check_model_name

    if allowed:
        check_model_name(name)
        return
    with pytest.raises(ExportError, match=r"not an Ollama model name — use \[namespace/\]name\[:tag\]"):
        check_model_name(name)


def test_a_bad_name_is_refused_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    model = tmp_path / "models" / "rd"
    model.mkdir(parents=True)
    (model / "config.json").write_text("{}")
    result = CliRunner().invoke(cli, ["export-ollama", str(model), "--name", "../../x", "--no-create"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert result.output.startswith("Error: --name '../../x': not an Ollama model name")
    assert len(result.output.strip().splitlines()) == 1
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*")) == [
        "models", "models/rd", "models/rd/config.json"]  # nothing written, not even the export folder


def test_a_namespaced_tagged_name_gives_flat_file_names():
    from hcp.export.pipeline import file_stem

    assert file_stem("clinic/hcp-rater:v2") == "clinic-hcp-rater-v2"
    assert file_stem("hcp-rater") == "hcp-rater"


def write_short_training(folder: Path) -> Path:
    """A config for a 2-step training run with short answers, and 6 sample records that fit its schema bounds
    (folder/train.jsonl); returns the config's path."""
    import yaml

    from hcp.data.dataset import write_jsonl
    from hcp.data.sample import generate_samples

    config = folder / "config.yaml"
    short = yaml.safe_load(Path(SHORT).read_text())
    short["training"] = {"batch_size": 1, "gradient_accumulation_steps": 1, "warmup_steps": 0,
                         "logging_steps": 1, "eval_steps": 2, "save_steps": 2}
    config.write_text(yaml.safe_dump(short))
    records = generate_samples(6, seed=5)
    for record in records:  # answers that fit the short schema bounds of this config
        record.update(reasoning=record["reasoning"][:60], strengths=[s[:20] for s in record["strengths"][:2]],
                      areas_for_improvement=[a[:20] for a in record["areas_for_improvement"][:2]])
        for key in [k for k in record if k.endswith("_evidence")]:  # one quote, its first words (still a quote)
            record[key] = [record[key][0][:40].rsplit(" ", 1)[0]]
    write_jsonl(folder / "train.jsonl", records)
    return config


# --- what an export leaves behind ---------------------------------------------------------------------------


def test_a_model_trained_on_patient_data_is_exported_for_its_owner_alone(tiny_llama_dir, tmp_path, monkeypatch):
    """The adapter is written 0600; the same weights merged, converted and quantized, and the Modelfiles that
    name them, are too, in folders only their owner can list."""
    import stat

    from tests.tiny import make_adapter

    monkeypatch.chdir(tmp_path)
    adapter = make_adapter(tiny_llama_dir, tmp_path / "adapter")
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export-ollama", str(adapter), "--name", "mine", "--quant", "q8_0", "--out",
                                      str(out), "--no-create", "--keep-intermediate", "--threads", "1",
                                      "--no-parity-check", "--config", SHORT])
    assert result.exit_code == 0, result.output
    written = [*out.rglob("*"), tmp_path / "modelfiles", tmp_path / "modelfiles" / "mine.Modelfile"]
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"out/mine.F16.gguf", "out/mine.Q8_0.gguf", "out/Modelfile", "out/merged/model.safetensors",
            "out/merged/tokenizer.json", "out/merged/config.json"} <= names
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [out, *written]}
    assert {name: oct(mode) for name, mode in modes.items()
            if mode != (0o700 if (tmp_path / name).is_dir() else 0o600)} == {}


def test_an_export_a_check_refuses_leaves_no_gguf_behind(tiny_mistral_dir, tmp_path, monkeypatch):
    """A GGUF that the token check refuses (here one given a SentencePiece space prefix that training did not
    see) is not left where 'hcp score --model' or 'ollama create' would take it."""
    import hcp.export.convert as convert

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(convert, "_space_prefix", lambda tokenizer_json: True)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["export-ollama", str(tiny_mistral_dir), "--name", "refused", "--quant", "f16",
                                      "--out", str(out), "--no-create", "--threads", "1", "--config", SHORT])
    assert result.exit_code == 1 and "tokenizes the rating prompt differently" in result.output
    assert "Traceback" not in result.output
    assert sorted(p.name for p in out.iterdir()) == []
    assert not (tmp_path / "modelfiles").exists()


@pytest.mark.parametrize("content, problem", [("{not json", "not a readable JSON file"),
                                              ("[1, 2]", "expected a JSON object, got list"),
                                              (b"\xff\xfe{}", "not a readable JSON file")])
def test_a_damaged_adapter_config_is_one_line_naming_the_file(tmp_path, content, problem):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    path = adapter / "adapter_config.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    for args in (["merge", str(adapter), "--output", str(tmp_path / "merged")],
                 ["export-ollama", str(adapter), "--no-create"]):
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, result.output
        assert f"{path}: {problem}" in result.output and "Traceback" not in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "merged").exists()


def test_a_model_trained_on_invisible_rubric_characters_is_refused_naming_the_config_key(tmp_path):
    """Trained (by an older hcp) on a description holding a zero-width space, which the config now removes: no
    Modelfile can give the model that prompt, and the error says which config key held it."""
    from hcp.config import load_config
    from hcp.rubric import Rubric

    trained = Rubric.from_config(load_config()).system_prompt.replace("compassion", "compas\u200bsion", 1)
    assert "\u200b" in trained
    model = tmp_path / "adapter"
    model.mkdir()
    (model / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA"}))
    (model / "training_config.json").write_text(json.dumps({"rubric": {"digest": "0123456789abcdef",
                                                                       "system_prompt": trained}}))
    result = CliRunner().invoke(cli, ["export-ollama", str(model), "--no-create"])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "scoring.dimensions.empathy.description held characters an Ollama Modelfile drops" in result.output
    assert not (model / "export").exists()


def test_an_export_whose_smoke_check_fails_leaves_neither_gguf_nor_modelfile(tiny_llama_dir, tmp_path):
    """The smoke check comes after the quantized GGUF and the Modelfiles are written: when it fails, they go, and
    an earlier export's GGUF of another quantization in the folder stays."""
    from hcp.config import load_config
    from hcp.errors import ExportError
    from hcp.export.pipeline import ExportOptions, export_ollama

    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.Q4_K_M.gguf").write_bytes(b"GGUF an earlier export")
    options = ExportOptions(name="smoky", quant="q8_0", out_dir=out, create=False, threads=1,
                            modelfiles_dir=tmp_path / "modelfiles", sample_transcript="RD: salt. " * 5000,
                            parity_check=False)
    with pytest.raises(ExportError, match="smoke check failed"):
        export_ollama(tiny_llama_dir, load_config(SHORT), options)
    assert sorted(p.name for p in out.iterdir()) == ["earlier.Q4_K_M.gguf"]
    assert list((tmp_path / "modelfiles").iterdir()) == []
