"""hcp train: the chat format and loss mask, LoRA training on tiny models, outputs, resume, and every error.

Training runs use tiny random models (tests/tiny.py) and short transcripts, a few optimizer steps each; the
real-model run (SmolLM2 from its GGUF) is marked slow, QLoRA is marked gpu.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from click.testing import CliRunner
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from hcp.chat import TEMPLATE_DATE, render_chat
from hcp.cli import cli
from hcp.config import Config, load_config
from hcp.data.dataset import Example, write_jsonl
from hcp.data.sample import generate_samples
from hcp.errors import ConfigError, ModelNotFoundError, TrainingError
from hcp.rubric import Rubric
from hcp.train.base_model import BASE_MARKER, resolve_base, sha256_file, weights_digest
from hcp.train.trainer import (
    IGNORE_INDEX,
    PadCollator,
    TrainRequest,
    TrainResult,
    chat_texts,
    choose_hardware,
    encode_example,
    train,
)
from tests.tiny import build_tiny_mistral

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle")


# --- helpers ----------------------------------------------------------------------------------------------


def short_records(n: int = 5, seed: int = 5) -> list[dict[str, Any]]:
    """Sample records cut short (four turns, one-sentence reasoning): a few hundred tokens each, fast to train."""
    from hcp.evidence import check_quote, turns

    records = generate_samples(n, seed, classic_labels=True)  # the opening below is quoted as "RD: "
    for record in records:
        record["transcript"] = "\n".join(record["transcript"].split("\n")[:4])
        record["reasoning"] = record["reasoning"].split(". ")[0].rstrip(".") + "."
        record["strengths"] = record["strengths"][:1]
        record["areas_for_improvement"] = record["areas_for_improvement"][:1]
        cut = turns(record["transcript"])
        opening = "RD: " + " ".join(record["transcript"].split("\n")[0].split()[1:9])  # the RD's first words
        for key in [k for k in record if k.endswith("_evidence")]:  # quotes of the turns cut off go
            record[key] = [q for q in record[key] if check_quote(q, cut).verified][:1] or [opening]
    return records


def write_data(path: Path, records: list[dict[str, Any]] | None = None) -> Path:
    return write_jsonl(path, records if records is not None else short_records())


def fast_training(**overrides: Any) -> dict[str, Any]:
    """Training settings for a few quick steps on a tiny model (as a config file's `training` section)."""
    training = {"learning_rate": 2e-2, "warmup_steps": 0, "batch_size": 4, "gradient_accumulation_steps": 1,
                "logging_steps": 1, "save_steps": 100, "eval_steps": 100, "lora": {"lora_dropout": 0.0}}
    training.update(overrides)
    return training


def fast_config(**overrides: Any) -> Config:
    config = load_config()
    for key, value in fast_training(**overrides).items():
        if key == "lora":
            for name, item in value.items():
                setattr(config.training.lora, name, item)
        else:
            setattr(config.training, key, value)
    return config


def run(base: Path, data: Path, out: Path, config: Config | None = None, **request: Any) -> TrainResult:
    return train(TrainRequest(data=data, config=config or fast_config(), output_dir=out, base=str(base),
                              progress=False, **request))


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


def example_from(record: dict[str, Any], line: int = 1) -> Example:
    scores = {k: record[k] for k in ("empathy", "clarity", "accuracy", "professionalism")}
    return Example(record["transcript"], line, None, scores, record["reasoning"], record["strengths"],
                   record["areas_for_improvement"], {k: record[f"{k}_evidence"] for k in scores})


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread() -> Any:
    # On this shared two-core machine torch's second thread mostly spins waiting for the first: one thread
    # trained the tiny models up to 7 times faster than two whenever another process was busy.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch) -> None:
    # Materialized GGUF bases go to a test folder, not the user's ~/.cache/hcp.
    monkeypatch.setenv("HCP_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "hcp_cache"))


@pytest.fixture(scope="module")
def trainable_mistral(tmp_path_factory) -> Path:
    """The tiny Mistral with a wider initialisation, so that a few LoRA steps can move its outputs far."""
    return build_tiny_mistral(tmp_path_factory.mktemp("trainable_mistral"), initializer_range=0.1)


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_data(tmp_path_factory.mktemp("data") / "train.jsonl")


# --- the chat format and the loss mask --------------------------------------------------------------------


# Llama 3.2's way of printing the date: transformers supplies strftime_now (today), a bare jinja2 does not.
DATED_TEMPLATE = (
    "{{- bos_token }}{%- if not date_string is defined %}{%- if strftime_now is defined %}"
    "{%- set date_string = strftime_now('%d %b %Y') %}{%- else %}{%- set date_string = 'no date given' %}{%- endif %}"
    "{%- endif %}<|start|>system\nToday Date: {{ date_string }}\n\n"
    "{% for m in messages %}{% if m['role'] == 'system' %}{{ m['content'] }}<|end|>{% else %}<|start|>"
    "{{ m['role'] }}\n{{ m['content'] }}<|end|>{% endif %}{% endfor %}"
    "{%- if add_generation_prompt %}<|start|>assistant\n{% endif %}")


def test_a_template_that_prints_todays_date_renders_one_fixed_date_in_training_scoring_and_the_modelfile(
        tiny_llama_dir, rubric) -> None:
    from hcp.export.modelfile import ollama_chat_format

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    tokenizer.chat_template = DATED_TEMPLATE
    messages = rubric.messages("RD: Hello. Patient: Hi.")
    trained, _ = chat_texts(tokenizer, rubric, "RD: Hello. Patient: Hi.", "{}")
    scored = render_chat(DATED_TEMPLATE, messages, bos_token=tokenizer.bos_token or "",
                         eos_token=tokenizer.eos_token or "")
    date = TEMPLATE_DATE.strftime("%d %b %Y")
    assert f"Today Date: {date}\n" in trained and trained == scored  # not the day the model was trained
    modelfile = ollama_chat_format(DATED_TEMPLATE, bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "",
                                   add_bos=False)
    assert f"Today Date: {date}\n" in modelfile.template


@pytest.mark.parametrize("family", ["tiny_mistral_dir", "tiny_llama_dir"])
def test_label_mask_covers_exactly_the_answer_and_end_token(family: str, request, rubric) -> None:
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(family))
    example = example_from(short_records(1)[0])
    encoded = encode_example(tokenizer, rubric, example)

    prompt_len = encoded.labels.count(IGNORE_INDEX)
    assert encoded.labels[:prompt_len] == [IGNORE_INDEX] * prompt_len  # one block: prompt, then answer
    assert encoded.labels[prompt_len:] == encoded.input_ids[prompt_len:]
    answer = tokenizer.decode(encoded.input_ids[prompt_len:])
    assert answer == rubric.answer_text(example.rating()) + tokenizer.eos_token
    # The first answer token is one the JSON grammar allows at scoring time: '{' with no space before it
    # (Mistral's template writes ' ' + answer; a '▁{' token would be forbidden by the grammar).
    first = tokenizer.convert_ids_to_tokens(encoded.input_ids[prompt_len])
    assert first.startswith("{"), first
    assert encoded.input_ids[-1] == tokenizer.eos_token_id  # the model learns to stop; nothing after it

    # The unlabelled part is token for token the prompt scoring sends, system text included — also for
    # Mistral v0.3, whose template drops the system text once an answer follows the user turn.
    prompt = tokenizer.apply_chat_template(rubric.messages(example.transcript), tokenize=False,
                                           add_generation_prompt=True)
    assert encoded.input_ids[:prompt_len] == tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert rubric.system_prompt in tokenizer.decode(encoded.input_ids[:prompt_len])


@pytest.mark.parametrize("family", ["tiny_mistral_dir", "tiny_llama_dir"])
def test_logits_only_for_the_answer_give_the_same_loss_and_gradients(family: str, request, rubric) -> None:
    """The collator asks the model for logits from the first answer position on; loss and gradients are those
    of the full logits, with far fewer logits made (batch of two lengths: padding and answers at two places)."""
    folder = request.getfixturevalue(family)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = [encode_example(tokenizer, rubric, example_from(r, n)) for n, r in enumerate(short_records(2), 1)]
    batch = [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]
    pad = tokenizer.eos_token_id
    losses, grads = [], []
    for answer_only in (False, True):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
        inputs = PadCollator(pad, answer_logits_only=answer_only)(batch)
        out = model(**inputs)
        out.loss.backward()
        losses.append(out.loss.item())
        grads.append(model.get_input_embeddings().weight.grad.clone())
        width = inputs["input_ids"].shape[1]
        first = min(next(i for i, t in enumerate(e.labels) if t != IGNORE_INDEX) for e in encoded)
        assert out.logits.shape[1] == (width - first + 1 if answer_only else width)
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_mistral_template_drops_the_system_text_once_an_answer_follows(tiny_mistral_dir, rubric) -> None:
    # Why chat_texts() takes the answer turn from a system-free render: the full chat has no system text.
    tokenizer = AutoTokenizer.from_pretrained(tiny_mistral_dir)
    messages = [*rubric.messages("RD: Hi.\nPatient: Hello."), {"role": "assistant", "content": "{}"}]
    assert rubric.system_prompt not in tokenizer.apply_chat_template(messages, tokenize=False)


CHATML_ROLE_CHANGES = (
    "{% for m in messages %}<|im_start|>{{ 'model' if m['role'] == 'assistant' else m['role'] }}\n"
    "{{ m['content'] }}<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHATML_UPPERCASES_ANSWER = CHATML_ROLE_CHANGES.replace("'model' if m['role'] == 'assistant' else ", "").replace(
    "{{ m['content'] }}", "{{ m['content'] | upper if m['role'] == 'assistant' else m['content'] }}")
# The prompt ends in a space that the answer's first piece would absorb ("▁{"): token prefixes differ.
TRAILING_SPACE = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'assistant' %}{{ m['content'] + "
                  "eos_token }}{% else %}[INST] {{ m['content'] }}[/INST] {% endif %}{% endfor %}")


@pytest.mark.parametrize(("family", "template", "message"), [
    ("tiny_llama_dir", None, "has no chat template"),
    ("tiny_llama_dir", "{{ raise_exception('no system role') }}", "chat template failed"),
    ("tiny_llama_dir", CHATML_ROLE_CHANGES, "writes the prompt differently once an answer follows"),
    ("tiny_llama_dir", CHATML_UPPERCASES_ANSWER, "changes the assistant's answer text"),
    ("tiny_mistral_dir", TRAILING_SPACE, "prompt's tokens are not a prefix"),
])
def test_templates_that_cannot_train_the_scoring_format_are_refused(family, template, message, request,
                                                                     rubric) -> None:
    tokenizer = AutoTokenizer.from_pretrained(request.getfixturevalue(family))
    tokenizer.chat_template = template
    with pytest.raises(TrainingError, match=message):
        encode_example(tokenizer, rubric, example_from(short_records(1)[0]))


# --- training on the tiny models --------------------------------------------------------------------------


class KeepModel(TrainerCallback):
    def on_train_end(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        self.model = model


@pytest.fixture(scope="module")
def overfit(trainable_mistral, data_file, tmp_path_factory) -> dict[str, Any]:
    """15 steps on 4 examples (1 held out), evaluating and checkpointing every 5 steps.

    A wide adapter (rank 64) at a gentler rate: the evidence-first answers copy transcript lines, which rank 8
    learns slowly (loss 7.04 -> 4.79 in 15 steps at 2e-2, against 3.95 with these settings).
    """
    keep = KeepModel()
    out = tmp_path_factory.mktemp("overfit") / "adapter"
    config = fast_config(eval_steps=5, save_steps=5, learning_rate=1e-2,
                         lora={"lora_dropout": 0.0, "r": 64, "lora_alpha": 128})
    result = run(trainable_mistral, data_file, out, config, max_steps=15, val_fraction=0.2, callbacks=(keep,))
    return {"result": result, "out": out, "model": keep.model, "config": config}


def test_training_on_a_handful_of_examples_lowers_the_loss_markedly(overfit) -> None:
    result = overfit["result"]
    assert result.global_step == 15
    assert (result.train_examples, result.val_examples) == (4, 1)
    assert result.final_loss < 0.65 * result.first_loss, (result.first_loss, result.final_loss)


def test_every_output_file_is_written_without_pickles(overfit) -> None:
    out: Path = overfit["out"]
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "tokenizer.model", "chat_template.jinja", "training_config.json", "metrics.json", "loss.png"):
        assert (out / name).is_file(), name
    assert (out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    outside_checkpoints = [p for p in out.rglob("*") if "checkpoints" not in p.relative_to(out).parts]
    assert not [p for p in outside_checkpoints if p.suffix in PICKLE_SUFFIXES]


def test_training_config_records_what_was_used(overfit, trainable_mistral, data_file, rubric) -> None:
    recorded = json.loads((overfit["out"] / "training_config.json").read_text())
    assert recorded["base"]["sha256"] == weights_digest(trainable_mistral)
    assert recorded["base"]["kind"] == "hf_dir"
    assert recorded["data"]["train"]["sha256"] == sha256_file(data_file)
    assert recorded["data"]["validation"] == {"split_of": "train", "fraction": 0.2, "seed": 42}
    assert recorded["examples"] == {"train": 4, "validation": 1, "skipped": 0, "skipped_examples": []}
    assert recorded["config"] == overfit["config"].model_dump(mode="json")
    assert recorded["rubric"]["digest"] == rubric.digest
    assert recorded["rubric"]["system_prompt"] == rubric.system_prompt
    assert recorded["run"]["max_steps"] == 15 and recorded["run"]["device"] == "cpu"
    assert {"torch", "transformers", "peft"} <= {k for k, v in recorded["versions"].items() if v}
    assert recorded["chat_template_date"] == TEMPLATE_DATE.isoformat()  # the date every render uses (hcp.chat)


def test_metrics_hold_the_loss_per_step_and_the_best_checkpoint_is_kept(overfit) -> None:
    metrics = json.loads((overfit["out"] / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train"]] == list(range(1, 16))
    evals = {e["step"]: e["eval_loss"] for e in metrics["eval"]}
    assert [e["step"] for e in metrics["eval"]] == [5, 10, 15]  # every eval_steps, each once
    best_step = min((5, 10, 15), key=evals.__getitem__)
    assert metrics["summary"]["best_checkpoint"].endswith(f"checkpoint-{best_step}")
    assert overfit["result"].best_eval_loss == pytest.approx(evals[best_step], rel=1e-5)


@pytest.mark.filterwarnings("ignore:.*is_gradient_checkpointing:FutureWarning")  # inside peft, not ours
def test_saved_adapter_reloads_with_peft_and_gives_the_same_logits(overfit, trainable_mistral) -> None:
    from peft import PeftModel

    ids = torch.tensor([[1, 5, 17, 42, 99, 250, 3, 7]])
    trained = overfit["model"].eval()
    with torch.no_grad():
        before = trained(input_ids=ids).logits
        base = AutoModelForCausalLM.from_pretrained(trainable_mistral).eval()
        base_logits = base(input_ids=ids).logits
        reloaded = PeftModel.from_pretrained(base, overfit["out"]).eval()
        after = reloaded(input_ids=ids).logits
    assert (before - base_logits).abs().max() > 1e-2  # the adapter does something...
    torch.testing.assert_close(after, before, rtol=0, atol=1e-5)  # ...and the saved one does the same


def test_same_seed_gives_the_same_adapter(tiny_llama_dir, data_file, tmp_path) -> None:
    config = fast_config(lora={"lora_dropout": 0.1})  # dropout draws random numbers too
    first = run(tiny_llama_dir, data_file, tmp_path / "a", config, max_steps=2, val_fraction=0)
    second = run(tiny_llama_dir, data_file, tmp_path / "b", config, max_steps=2, val_fraction=0)
    assert first.final_loss == second.final_loss
    a, b = adapter_tensors(tmp_path / "a"), adapter_tensors(tmp_path / "b")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class CheckpointingFlags(TrainerCallback):
    def on_step_begin(self, args, state, control, model=None, **kwargs):  # noqa: ANN001, ANN201
        self.flags = {m.gradient_checkpointing for m in model.modules()
                      if isinstance(getattr(m, "gradient_checkpointing", None), bool)}


def test_gradient_checkpointing_changes_memory_not_results(tiny_llama_dir, data_file, tmp_path) -> None:
    plain, checkpointed = fast_config(), fast_config()
    plain.model.gradient_checkpointing, checkpointed.model.gradient_checkpointing = False, True
    flags = {}
    for name, config in (("plain", plain), ("gc", checkpointed)):
        flags[name] = CheckpointingFlags()
        run(tiny_llama_dir, data_file, tmp_path / name, config, max_steps=2, val_fraction=0,
            callbacks=(flags[name],))
    assert (flags["plain"].flags, flags["gc"].flags) == ({False}, {True})  # the option reaches the layers
    a, b = adapter_tensors(tmp_path / "plain"), adapter_tensors(tmp_path / "gc")
    for name in a:  # recomputing activations in the backward pass gives the same gradients
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)


# --- the schedule: warm-up, evaluation and checkpoints ---------------------------------------------------


@pytest.mark.parametrize(("settings", "examples", "max_steps", "expected", "reason"), [
    ({}, 160, None, (60, 3, 6, 6), "the README's 200 sample records less 20%: 60 steps of 8 examples"),
    ({}, 10_000, None, (3750, 188, 375, 375), "a large run"),
    ({}, 160, 5, (5, 0, 1, 1), "a few steps: every step"),
    ({"batch_size": 1, "gradient_accumulation_steps": 3}, 10, None, (12, 1, 1, 1), "a partial last update counts"),
    ({"eval_steps": 20}, 160, None, (60, 3, 20, 20), "save on the evaluations the config sets"),
    ({"save_steps": 30}, 160, None, (60, 3, 30, 30), "evaluate when the config saves"),
    ({"warmup_steps": 0, "eval_steps": 5, "save_steps": 10}, 160, None, (60, 0, 5, 10), "all set: as set"),
])
def test_unset_warmup_eval_and_save_steps_follow_the_run_length(settings, examples, max_steps, expected,
                                                                 reason) -> None:
    from hcp.train.trainer import run_steps, training_schedule

    training = load_config().training.model_copy(update=settings)
    plan = training_schedule(training, run_steps(training, examples, max_steps))
    assert (plan.steps, plan.warmup_steps, plan.eval_steps, plan.save_steps) == expected, reason


def test_the_default_config_evaluates_and_saves_a_short_run(tiny_llama_dir, data_file, tmp_path) -> None:
    """The default config sets no warm-up, evaluation or save steps: a 20-step run is evaluated and saved every
    2 steps, the best checkpoint kept, and the choice printed."""
    config = load_config()
    for key, value in fast_training().items():
        if key not in ("warmup_steps", "eval_steps", "save_steps", "lora"):
            setattr(config.training, key, value)
    lines: list[str] = []
    out = tmp_path / "out"
    run(tiny_llama_dir, data_file, out, config, max_steps=20, val_fraction=0.2, echo=lines.append)
    assert "20 optimizer steps: warm-up 1 steps, evaluation every 2 steps, a checkpoint every 2 steps (from the " \
           "run's length; set training.warmup_steps, training.eval_steps, training.save_steps to choose)" in lines
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["eval"]] == list(range(2, 21, 2))
    assert metrics["summary"]["best_checkpoint"] is not None
    recorded = json.loads((out / "training_config.json").read_text())["run"]["schedule"]
    assert recorded == {"steps": 20, "warmup_steps": 1, "eval_steps": 2, "save_steps": 2,
                        "derived": ["warmup_steps", "eval_steps", "save_steps"]}


# --- interruption and resume ------------------------------------------------------------------------------


class CtrlCAt(TrainerCallback):
    """Sends this process a real SIGINT at the end of a given step, as a user's Ctrl-C would."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


class Steps(TrainerCallback):
    def __init__(self) -> None:
        self.start: int | None = None
        self.done = 0

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.start = state.global_step

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001, ANN201
        self.done += 1


def test_ctrl_c_saves_a_checkpoint_and_resume_continues_where_it_stopped(tiny_llama_dir, data_file,
                                                                         tmp_path) -> None:
    # Batch 1 over 4 examples and 6 steps: the run crosses an epoch, with dropout, so resuming must restore
    # the data order, the optimizer, the scheduler and the RNG to reach the uninterrupted run's adapter.
    config = fast_config(batch_size=1, learning_rate=1e-2, lora={"lora_dropout": 0.1})
    run(tiny_llama_dir, data_file, tmp_path / "straight", config, max_steps=6, val_fraction=0)

    out = tmp_path / "interrupted"
    handler_before = signal.getsignal(signal.SIGINT)  # default_int_handler, or SIG_IGN in a background job
    with pytest.raises(TrainingError, match=r"interrupted at step \d of 6.*--resume"):
        run(tiny_llama_dir, data_file, out, config, max_steps=6, val_fraction=0, callbacks=(CtrlCAt(2),))
    stopped = int(Path(get_last_checkpoint(str(out / "checkpoints"))).name.split("-")[1])
    assert 2 <= stopped < 6
    assert not (out / "adapter_model.safetensors").exists()  # no final output from an unfinished run
    assert signal.getsignal(signal.SIGINT) is handler_before  # handler restored

    steps = Steps()
    result = run(tiny_llama_dir, data_file, out, config, max_steps=6, val_fraction=0, resume=True,
                 callbacks=(steps,))
    assert (steps.start, steps.done, result.global_step) == (stopped, 6 - stopped, 6)
    metrics = json.loads((out / "metrics.json").read_text())
    assert [e["step"] for e in metrics["train"]] == [1, 2, 3, 4, 5, 6]  # one history, not a restart
    straight, resumed = adapter_tensors(tmp_path / "straight"), adapter_tensors(out)
    for name in straight:
        torch.testing.assert_close(resumed[name], straight[name], rtol=0, atol=1e-6)


def test_resume_refuses_changed_data(tiny_llama_dir, data_file, tmp_path) -> None:
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match="interrupted"):
        run(tiny_llama_dir, data_file, out, max_steps=3, val_fraction=0, callbacks=(CtrlCAt(1),))
    other = write_data(tmp_path / "other.jsonl", short_records(5, seed=9))
    with pytest.raises(TrainingError, match="--resume: data changed"):
        run(tiny_llama_dir, other, out, max_steps=3, val_fraction=0, resume=True)


# --- examples longer than max_length ----------------------------------------------------------------------


def with_long_record(path: Path, tokenizer_dir: Path, line: int) -> tuple[Path, int]:
    """(file, a max_length that only its record on `line` exceeds): short_records(4) with that one made long."""
    records = short_records(4)
    long_turns = [f"Patient: My name is Zebulon and I ate {n} biscuits." for n in range(40)]
    records[line - 1]["transcript"] += "\n" + "\n".join(long_turns)
    tokenizer, rubric = AutoTokenizer.from_pretrained(tokenizer_dir), Rubric.from_config(load_config())
    lengths = [len(encode_example(tokenizer, rubric, example_from(r)).input_ids) for r in records]
    limit = max(lengths[:line - 1] + lengths[line:]) + 1
    assert lengths[line - 1] > limit
    return write_data(path, records), limit


@pytest.fixture
def data_with_long_example(tmp_path, tiny_llama_dir) -> tuple[Path, int, int]:
    """(file, line of the long record, a max_length that only the long record exceeds)."""
    data, limit = with_long_record(tmp_path / "long.jsonl", tiny_llama_dir, 3)
    return data, 3, limit


def test_too_long_examples_are_skipped_and_reported_without_their_text(tiny_llama_dir, data_with_long_example,
                                                                       tmp_path) -> None:
    data, line, limit = data_with_long_example
    config = fast_config()
    config.model.max_length = limit
    lines: list[str] = []
    result = run(tiny_llama_dir, data, tmp_path / "out", config, max_steps=1, val_fraction=0, echo=lines.append)
    assert [(s.line, s.file) for s in result.skipped] == [(line, str(data))]
    assert result.skipped[0].tokens > limit and result.train_examples == 3
    assert any(f"{data}:{line}" in text and "max_length" in text for text in lines)
    assert not any("Zebulon" in text for text in lines)  # transcripts hold patient data: never echoed
    recorded = json.loads((tmp_path / "out" / "training_config.json").read_text())["examples"]
    assert recorded["skipped"] == 1 and recorded["skipped_examples"][0]["line"] == line


def test_strict_fails_on_too_long_examples(tiny_llama_dir, data_with_long_example, tmp_path) -> None:
    data, line, limit = data_with_long_example
    config = fast_config()
    config.model.max_length = limit
    with pytest.raises(TrainingError, match=rf"1 example\(s\) longer than model.max_length \({limit} tokens\): "
                                            rf"{data}:{line} \(\d+ tokens\).*drop --strict"):
        run(tiny_llama_dir, data, tmp_path / "out", config, max_steps=1, val_fraction=0, strict=True)


def test_the_held_out_transcripts_are_recorded_beside_the_adapter_for_its_owner_alone(overfit, data_file) -> None:
    """What export's parity check rates (hcp/export/parity.py): the validation transcript, not a training one."""
    path = overfit["out"] / "validation.jsonl"
    assert path.stat().st_mode & 0o777 == 0o600
    (record,) = [json.loads(line) for line in path.read_text().splitlines()]
    source = json.loads(data_file.read_text().splitlines()[record["line"] - 1])
    assert record["transcript"] == source["transcript"]


def test_too_long_examples_are_dropped_before_the_split(tiny_llama_dir, tmp_path, rubric) -> None:
    """The share held out for validation is a share of the examples that fit: the record that a split of all
    four would hold out is the long one, and the run still validates, on one that fits."""
    from hcp.data.dataset import load_dataset, split_examples

    # The split depends on the scores, not the transcripts: where it falls is known before one is made long.
    (held_out,) = split_examples(load_dataset(write_data(tmp_path / "short.jsonl", short_records(4)), rubric
                                              ).examples, rubric, 0.25, 42)[1]
    data, limit = with_long_record(tmp_path / "long.jsonl", tiny_llama_dir, held_out.line)
    config = fast_config()
    config.model.max_length = limit
    result = run(tiny_llama_dir, data, tmp_path / "out", config, max_steps=1, val_fraction=0.25)
    assert [s.line for s in result.skipped] == [held_out.line]
    assert (result.train_examples, result.val_examples) == (2, 1)  # 3 fit: round(0.25 * 3) = 1 held out


def test_a_validation_file_too_long_to_use_is_skipped_not_fatal(tiny_llama_dir, data_with_long_example,
                                                                tmp_path) -> None:
    data, line, limit = data_with_long_example
    records = [json.loads(x) for x in data.read_text().splitlines()]
    val = write_data(tmp_path / "val.jsonl", [records[line - 1]])
    write_data(data, records[:line - 1] + records[line:])
    config = fast_config()
    config.model.max_length = limit
    lines: list[str] = []
    result = run(tiny_llama_dir, data, tmp_path / "out", config, max_steps=1, val_data=val, echo=lines.append)
    assert (result.train_examples, result.val_examples, [str(s) for s in result.skipped]) == (
        3, 0, [f"{val}:1 ({result.skipped[0].tokens} tokens)"])
    assert any(f"every validation example of {val}" in text and "training without validation" in text
               for text in lines)


# --- hardware ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("settings", "cuda", "bf16", "expected"), [
    ({}, False, False, ("cpu", "float32", False)),
    ({"device_map": "cpu"}, True, True, ("cpu", "float32", False)),
    ({}, True, True, ("cuda", "bfloat16", False)),
    ({}, True, False, ("cuda", "float16", False)),  # pre-Ampere GPUs: fp16 mixed precision
    ({"load_in_4bit": True}, False, False, TrainingError),  # QLoRA needs CUDA: an error, not a fall-back
    ({"device_map": "cuda"}, False, False, ConfigError),
])
def test_hardware_choice(settings, cuda, bf16, expected) -> None:
    model = load_config().model.model_copy(update=settings)
    if isinstance(expected, type):
        with pytest.raises(expected):
            choose_hardware(model, cuda, bf16)
    else:
        hardware = choose_hardware(model, cuda, bf16)
        assert (hardware.device, hardware.dtype, hardware.load_in_4bit) == expected


# --- base models ------------------------------------------------------------------------------------------


def test_unreachable_hub_fails_fast_with_advice(monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: like an offline machine
    started = time.monotonic()
    with pytest.raises(ModelNotFoundError, match="hub at http://127.0.0.1:9 cannot be reached.*--base"):
        resolve_base("hcp-tests/not-cached-model")
    assert time.monotonic() - started < 10


def test_offline_hub_setting_is_named(monkeypatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFoundError, match="HF_HUB_OFFLINE is set"):
        resolve_base("hcp-tests/not-cached-model")


@pytest.mark.parametrize(("make", "message"), [
    (lambda p: p / "missing" / "model.gguf", "base model not found"),
    (lambda p: (p / "fake.gguf").write_text("not a gguf") and p / "fake.gguf", "not a GGUF file"),
    (lambda p: p, "no config.json"),
    (lambda p: (p / "adapter_config.json").write_text("{}") and p, "is a LoRA adapter, not a base model"),
])
def test_local_base_errors(make, message, tmp_path) -> None:
    with pytest.raises(ModelNotFoundError, match=message):
        resolve_base(str(make(tmp_path)))


# --- the command ------------------------------------------------------------------------------------------


def invoke(*args: str, training: dict[str, Any] | None = None, model: dict[str, Any] | None = None,
           tmp_path: Path) -> Any:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"training": training or fast_training(), "model": model or {}}))
    return CliRunner().invoke(cli, ["train", "--config", str(config), *args])


def test_cli_trains_and_writes_the_adapter(tiny_llama_dir, data_file, tmp_path) -> None:
    out = tmp_path / "rd"
    result = invoke("--data", str(data_file), "--base", str(tiny_llama_dir), "--output", str(out),
                    "--max-steps", "2", "--val-fraction", "0.2", tmp_path=tmp_path)
    assert result.exit_code == 0, result.output
    assert f"adapter written to {out}" in result.output
    assert "trained 2 steps on 4 examples, 1 for validation" in result.output
    assert (out / "adapter_model.safetensors").is_file()


def test_cli_help_has_an_example_and_loads_no_torch() -> None:
    import subprocess
    import sys

    code = ("import sys; from hcp.cli import cli; cli(['train', '--help'], standalone_mode=False); "
            "assert 'torch' not in sys.modules, 'torch imported by hcp train --help'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "hcp train --data data/train.jsonl --output models/rd" in done.stdout


def _bad_scores(path: Path) -> list[str]:
    records = short_records(3)
    records[1]["empathy"] = 7
    write_data(path, records)
    return ["--data", str(path)]


@pytest.mark.parametrize(("case", "args", "training", "model", "message"), [
    ("data invalid", lambda p, m: [*_bad_scores(p / "bad.jsonl"), "--base", str(m)], None, None,
     r"1 problem\(s\) in the data: .*bad.jsonl:2: empathy: score 7 is outside 1..5"),
    ("data missing", lambda p, m: ["--data", str(p / "nope.jsonl"), "--base", str(m)], None, None,
     "nope.jsonl: file not found"),
    ("base missing", lambda p, m: ["--base", str(p / "models" / "base.gguf")], None, None,
     "base.gguf: base model not found"),
    ("default base, hub unreachable", lambda p, m: [], None, None,
     "mistralai/Mistral-7B-Instruct-v0.3: no such folder or file here, and the Hugging Face hub"),
    ("unknown lora module", lambda p, m: ["--base", str(m)], fast_training(lora={"target_modules": ["qkv"]}),
     None, "training.lora.target_modules: qkv not in the model — its linear layers are down_proj, gate_proj, "
           "k_proj, lm_head, o_proj, q_proj, up_proj, v_proj"),
    ("config key unknown", lambda p, m: ["--base", str(m)], {"learning_rat": 1e-4}, None,
     "training.learning_rat: unknown key"),
    ("config value invalid", lambda p, m: ["--base", str(m)], {"lora": {"r": 0}}, None,
     "training.lora.r: input should be greater than 0"),
    ("save not a multiple of eval", lambda p, m: ["--base", str(m)], fast_training(save_steps=7, eval_steps=5),
     None, r"training.save_steps \(7\) must be a multiple of training.eval_steps \(5\).*save_steps: 10"),
    ("4-bit without CUDA", lambda p, m: ["--base", str(m)], None, {"load_in_4bit": True},
     "model.load_in_4bit \\(QLoRA\\) needs a CUDA GPU.*load_in_4bit: false"),
    ("resume without checkpoint", lambda p, m: ["--base", str(m), "--resume"], None, None,
     "--resume: no checkpoint in .*checkpoints — start without --resume"),
    ("output holds a run", lambda p, m: ["--base", str(m), "--output", str(_finished_run(p))], None, None,
     "already holds a training run — add --resume"),
    ("base is an adapter", lambda p, m: ["--base", str(_finished_run(p))], None, None,
     "is a LoRA adapter, not a base model"),
])
def test_cli_errors_are_one_line_messages(case, args, training, model, message, tiny_llama_dir, data_file,
                                          tmp_path, monkeypatch) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    argv = args(tmp_path, tiny_llama_dir)
    if "--data" not in argv:
        argv = ["--data", str(data_file), *argv]
    if "--output" not in argv:
        argv += ["--output", str(tmp_path / "out")]
    result = invoke(*argv, training=training, model=model, tmp_path=tmp_path)
    assert result.exit_code == 1, (case, result.output)
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error: ")]
    assert len(error) == 1 and re.search(message, error[0]), (case, result.output)


def _finished_run(folder: Path) -> Path:
    run_dir = folder / "finished"
    run_dir.mkdir()
    (run_dir / "adapter_config.json").write_text("{}")
    return run_dir


def test_cli_val_file_and_fraction_are_exclusive(data_file, tmp_path) -> None:
    result = invoke("--data", str(data_file), "--val", str(data_file), "--val-fraction", "0.1", tmp_path=tmp_path)
    assert result.exit_code == 2 and "--val FILE or --val-fraction, not both" in result.output


def test_a_validation_file_that_repeats_training_transcripts_is_refused_before_any_model_loads(data_file,
                                                                                                  tmp_path) -> None:
    records = [json.loads(x) for x in data_file.read_text().splitlines()]
    respaced = {**records[3], "transcript": "  " + records[3]["transcript"].replace(" ", "  ")}
    val = write_data(tmp_path / "val.jsonl", [short_records(1, seed=11)[0], respaced])
    for given, shared in ((val, f"{val}:2 = {data_file}:4"), (data_file, f"{data_file}:1 = {data_file}:1")):
        result = invoke("--data", str(data_file), "--val", str(given), "--base", str(tmp_path / "no-model.gguf"),
                        "--output", str(tmp_path / "out"), tmp_path=tmp_path)
        assert result.exit_code == 1 and "Traceback" not in result.output
        (error,) = [line for line in result.output.splitlines() if line.startswith("Error: ")]
        assert "validation transcript(s) are also in the training data (" + shared in error, error
        assert "base model not found" not in result.output  # refused before the base is even looked for


def test_cli_val_takes_a_file_and_says_so_when_given_a_share(data_file, tmp_path) -> None:
    result = invoke("--data", str(data_file), "--val", "0.1", tmp_path=tmp_path)
    assert result.exit_code == 2
    assert "--val takes a validation file; for a share of --data held out, use --val-fraction 0.1" in result.output


def test_cli_out_of_memory_names_the_remedies(tiny_llama_dir, data_file, tmp_path, monkeypatch) -> None:
    def out_of_memory(self, *args, **kwargs):  # noqa: ANN001, ANN202
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr("transformers.Trainer.train", out_of_memory)
    result = invoke("--data", str(data_file), "--base", str(tiny_llama_dir), "--output", str(tmp_path / "o"),
                    tmp_path=tmp_path)
    assert result.exit_code == 1
    for remedy in ("out of GPU memory at training.batch_size 4", "gradient_accumulation_steps",
                   "model.gradient_checkpointing: true", "model.load_in_4bit: true"):
        assert remedy in result.output


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_cli_report_to_wandb_without_wandb(tiny_llama_dir, data_file, tmp_path) -> None:
    result = invoke("--data", str(data_file), "--base", str(tiny_llama_dir), "--output", str(tmp_path / "o"),
                    "--report-to", "wandb", tmp_path=tmp_path)
    assert result.exit_code == 1 and "pip install wandb" in result.output


# --- heavier: a real model from its GGUF, and QLoRA on a GPU ------------------------------------------------


@pytest.mark.slow
def test_gguf_base_trains_and_is_materialized_once(data_file, tmp_path) -> None:
    from hcp.scoring.backends.llama_cpp import default_model_path

    gguf = default_model_path()
    config = fast_config(learning_rate=1e-4, batch_size=2)
    result = run(gguf, data_file, tmp_path / "smol", config, max_steps=2, val_fraction=0)
    digest = sha256_file(gguf)
    assert (result.base.kind, result.base.sha256) == ("gguf", digest)
    assert result.base.path.name == digest and (result.base.path / BASE_MARKER).is_file()
    assert (result.base.path / "model.safetensors").is_file()
    adapter_config = json.loads((tmp_path / "smol" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == str(result.base.path)  # merge / export find it here
    started = time.monotonic()
    assert resolve_base(str(gguf)).path == result.base.path  # cached: no second materialization
    assert time.monotonic() - started < 5
    assert result.final_loss < 3.0  # a real instruct model already knows JSON: the loss starts low


@pytest.mark.gpu
def test_qlora_trains_in_4_bits_on_cuda(tiny_llama_dir, data_file, tmp_path) -> None:
    if not torch.cuda.is_available() or importlib.util.find_spec("bitsandbytes") is None:
        pytest.skip("QLoRA needs a CUDA GPU and bitsandbytes")
    config = fast_config()
    config.model.load_in_4bit = True
    config.model.gradient_checkpointing = True
    result = run(tiny_llama_dir, data_file, tmp_path / "q", config, max_steps=10, val_fraction=0)
    recorded = json.loads((tmp_path / "q" / "training_config.json").read_text())["run"]
    assert recorded["load_in_4bit"] and recorded["device"] == "cuda"
    assert result.final_loss < result.first_loss
