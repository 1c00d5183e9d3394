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
                                      "--config", SHORT])
    assert result.exit_code == 0, result.output
    gguf = tmp_path / "out" / "tiny-rater.Q8_0.gguf"
    assert gguf.is_file() and not (tmp_path / "out" / "tiny-rater.F16.gguf").exists()
    assert "not registered; when Ollama runs: ollama create tiny-rater -f modelfiles/tiny-rater.Modelfile" \
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
                                 "--config", SHORT])
    assert result.exit_code == 0, result.output
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
