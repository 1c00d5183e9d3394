"""LoRA / QLoRA fine-tuning of a chat model into a rater of the rubric (transformers `Trainer` + peft).

Each labelled example becomes one chat, formatted with the base model's own chat template:

    system    = rubric.system_prompt
    user      = rubric.user_prompt(transcript)
    assistant = rubric.answer_text(rating)        the JSON the grammar forces at scoring time, same key order

The training text is the prompt exactly as scoring renders it (`add_generation_prompt=True`), followed by
the assistant turn; the loss covers only the answer and the end-of-turn token after it. Examples longer
than `model.max_length` are skipped and reported by file and line (or fail the run with `strict`): cutting
them would train the model on an answer without its scores.

Hardware: fp32 on the CPU; bf16 (else fp16) mixed precision on a GPU; 4-bit QLoRA through bitsandbytes when
`model.load_in_4bit` is set. QLoRA needs CUDA: asking for it on a machine without a GPU is an error rather
than a silent fall-back to a 32-bit model eight times the size. Multi-GPU runs go through torchrun (or
`accelerate launch`), which the Trainer turns into DDP; only the first process writes the output folder:

    torchrun --nproc_per_node 2 -m hcp train --data data/train.jsonl --output models/rd

The first Ctrl-C (or SIGTERM) finishes the current step, saves a checkpoint under `<output>/checkpoints` and
stops; `resume` continues from the last checkpoint there with the optimizer, scheduler and RNG state.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import os
import platform
import resource
import shutil
import signal
import statistics
import sys
import threading
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from hcp import __version__
from hcp.chat import TEMPLATE_DATE, TEMPLATE_VARIABLES, fold_system
from hcp.config import Config, ModelConfig, TrainingConfig, load_config
from hcp.data.dataset import Example, load_dataset, require_valid, shared_transcripts, split_examples
from hcp.errors import ConfigError, DataError, TrainingError
from hcp.files import atomic_write_text, make_folder
from hcp.rubric import USER_TEMPLATE, Rubric
from hcp.train.base_model import BaseModelRef, resolve_base, sha256_file

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase, TrainerCallback

DEFAULT_OUTPUT = Path("models/finetuned_rd_model")
CHECKPOINTS = "checkpoints"  # Trainer state lives here; the output folder itself holds only safetensors
RUN_FILE = "hcp_run.json"  # what a checkpoint was trained on, checked by --resume
# The held-out transcripts beside the adapter, one JSON object a line ({"line", "id", "transcript"}), the owner's
# alone: what `hcp export-ollama` checks the quantized model's scores on (hcp/export/parity.py).
VALIDATION_FILE = "validation.jsonl"
IGNORE_INDEX = -100  # label of tokens without loss (torch's cross_entropy default ignore_index)
REPORT_TARGETS = ("none", "wandb", "tensorboard")
OOM_ADVICE = (
    "lower training.batch_size (e.g. 1) and raise training.gradient_accumulation_steps to keep the effective "
    "batch, keep model.gradient_checkpointing: true (the default), set model.load_in_4bit: true (QLoRA), or lower "
    "model.max_length"
)
PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "bitsandbytes")


# --- request and result -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainRequest:
    """Everything one training run needs; `config` supplies the model, training and rubric settings."""

    data: Path
    config: Config = field(default_factory=load_config)
    output_dir: Path = DEFAULT_OUTPUT
    base: str | None = None  # HF folder, .gguf file or hub id; None: config.model.name
    val_data: Path | None = None  # a separate validation file, instead of a split of `data`
    val_fraction: float | None = None  # None: config.training.val_fraction; 0: no validation
    resume: bool = False
    strict: bool = False  # fail on examples longer than model.max_length instead of skipping them
    max_steps: int | None = None  # stop after this many optimizer steps (overrides num_epochs)
    report_to: str = "none"  # none | wandb | tensorboard
    progress: bool = True  # the Trainer's progress bar (loss, ETA)
    echo: Callable[[str], None] | None = field(default=None, compare=False)  # status lines for the user
    callbacks: tuple[TrainerCallback, ...] = ()  # extra Trainer callbacks (benchmarks, tests)


@dataclass(frozen=True)
class SkippedExample:
    file: str
    line: int
    tokens: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.tokens} tokens)"


@dataclass
class TrainResult:
    output_dir: Path
    base: BaseModelRef
    train_examples: int
    val_examples: int
    skipped: list[SkippedExample]
    global_step: int
    first_loss: float | None  # the first logged training loss of this run's history
    final_loss: float | None  # the last logged training loss
    best_eval_loss: float | None  # of the model that was saved (the best checkpoint when there is validation)
    wall_seconds: float  # the whole call: loading, checks, training, saving
    train_seconds: float  # in optimizer steps of this call: no evaluation, no checkpoints, no loading
    train_tokens: int  # tokens (without padding) in those steps
    tokens_per_second: float  # train_tokens / train_seconds
    peak_memory_mb: float  # peak resident memory of this process (and peak GPU memory on CUDA)

    def summary(self) -> str:
        losses = f"train loss {_fmt(self.first_loss)} -> {_fmt(self.final_loss)}"
        if self.best_eval_loss is not None:
            losses += f", eval loss {_fmt(self.best_eval_loss)}"
        skipped = f" ({len(self.skipped)} skipped as too long)" if self.skipped else ""
        return (f"trained {self.global_step} steps on {self.train_examples} examples{skipped}, "
                f"{self.val_examples} for validation: {self.train_seconds:.0f} s in training steps "
                f"({self.tokens_per_second:.0f} tokens/s), {self.wall_seconds:.0f} s in all; {losses}\n"
                f"adapter written to {self.output_dir}")


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# --- chat formatting and the loss mask --------------------------------------------------------------------


@dataclass(frozen=True)
class EncodedExample:
    line: int
    input_ids: list[int]
    labels: list[int]  # IGNORE_INDEX on the prompt, the token id on the answer and its end-of-turn token


def _render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], generation_prompt: bool) -> str:
    """The chat in the tokenizer's template; one that refuses a system turn (Gemma 2) gets the system text folded
    into the first user turn, as hcp.chat.render_chat does when scoring."""
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt,
                                             **TEMPLATE_VARIABLES)
    except Exception as exc:  # noqa: BLE001 - jinja raises many types; all mean "this template cannot do it"
        folded = fold_system(messages)
        if folded is not messages:
            try:
                return tokenizer.apply_chat_template(folded, tokenize=False, add_generation_prompt=generation_prompt,
                                                     **TEMPLATE_VARIABLES)
            except Exception:  # noqa: BLE001 - the first failure is the one to report
                pass
        raise TrainingError(f"the base model's chat template failed ({exc.__class__.__name__}: {exc}) — "
                            "use an instruct model whose template takes system, user and assistant turns") from None


def chat_texts(tokenizer: PreTrainedTokenizerBase, rubric: Rubric, transcript: str, answer: str) -> tuple[str, str]:
    """(prompt, completion): the prompt as scoring renders it and the assistant turn the template writes after it.

    The completion is cut after the end-of-turn token (eos), so a template's trailing newline is not trained.
    """
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError("the base model's tokenizer has no chat template — use an instruct (chat) model")
    messages = rubric.messages(transcript)
    answer_turn = {"role": "assistant", "content": answer}
    prompt = _render(tokenizer, messages, True)
    full = _render(tokenizer, [*messages, answer_turn], False)
    if full.startswith(prompt):
        completion = full[len(prompt):]
    else:
        # Mistral v0.3 folds the system text into the user turn only when that turn is the last message, so
        # with the answer after it the system text is gone. Scoring sends `prompt`; the answer's turn is what
        # the template writes after a user turn, taken from the same chat without its system message.
        bare = [m for m in messages if m["role"] != "system"]
        bare_prompt = _render(tokenizer, bare, True)
        bare_full = _render(tokenizer, [*bare, answer_turn], False)
        if not bare_full.startswith(bare_prompt):
            raise TrainingError("the base model's chat template writes the prompt differently once an answer "
                                "follows, so training text would not match what the model sees when scoring — "
                                "use a model whose template keeps the prompt unchanged before the answer")
        completion = bare_full[len(bare_prompt):]
    start = completion.find(answer)
    if start < 0:
        raise TrainingError("the base model's chat template changes the assistant's answer text, so the model "
                            "would not learn the exact JSON the scorer expects — use another instruct model")
    # What a template puts between the prompt and the answer (Mistral's ' ') is not trained: scoring
    # constrains the answer with the JSON schema, whose grammar makes '{' the first character, so a model
    # trained on ' {' (one '▁{' token) would be forced off its training from the first token on.
    completion = completion[start:]
    eos = tokenizer.eos_token or ""
    end = completion.find(eos, len(answer)) if eos else -1
    # Without an eos after the answer the template ends its turns with another marker: keep the whole turn.
    completion = completion[: end + len(eos)] if end >= 0 else completion.rstrip()
    return prompt, completion


def _ids(tokenizer: PreTrainedTokenizerBase, text: str, add_bos: bool) -> list[int]:
    # Special tokens are parsed from the text (the template writes them); a BOS is added only when the
    # tokenizer adds one and the template did not write it — what llama.cpp does when scoring.
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if add_bos and (not ids or ids[0] != tokenizer.bos_token_id):
        ids = [tokenizer.bos_token_id, *ids]
    return ids


def _adds_bos(tokenizer: PreTrainedTokenizerBase) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("a")["input_ids"][:1] == [bos]


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]]) -> list[int]:
    """The tokens training feeds the model for a chat's prompt (what the exported model must be given)."""
    return _ids(tokenizer, _render(tokenizer, messages, True), _adds_bos(tokenizer))


def encode_example(tokenizer: PreTrainedTokenizerBase, rubric: Rubric, example: Example) -> EncodedExample:
    """Token ids of one example's chat and its labels (loss only on the answer and end-of-turn token)."""
    prompt, completion = chat_texts(tokenizer, rubric, example.transcript, rubric.answer_text(example.rating()))
    add_bos = _adds_bos(tokenizer)
    prompt_ids = _ids(tokenizer, prompt, add_bos)
    ids = _ids(tokenizer, prompt + completion, add_bos)
    if ids[: len(prompt_ids)] != prompt_ids or len(ids) == len(prompt_ids):
        # A token that spans the end of the prompt and the start of the answer: the mask would be off by a
        # piece, and scoring (which feeds the prompt's own tokens) would see a sequence never trained on.
        raise TrainingError(f"line {example.line}: the prompt's tokens are not a prefix of prompt + answer with "
                            "this tokenizer and chat template — use a model whose template ends the prompt with "
                            "a special token or a newline")
    labels = [IGNORE_INDEX] * len(prompt_ids) + ids[len(prompt_ids):]
    return EncodedExample(example.line, ids, labels)


def encode_examples(
    tokenizer: PreTrainedTokenizerBase, rubric: Rubric, examples: Sequence[Example], max_length: int, file: str
) -> tuple[list[EncodedExample], list[SkippedExample]]:
    """Encode examples; those longer than `max_length` tokens come back as skipped, never truncated."""
    kept: list[EncodedExample] = []
    skipped: list[SkippedExample] = []
    for example in examples:
        encoded = encode_example(tokenizer, rubric, example)
        if len(encoded.input_ids) > max_length:
            skipped.append(SkippedExample(file, example.line, len(encoded.input_ids)))
        else:
            kept.append(encoded)
    return kept, skipped


class PadCollator:
    """Right-pads a batch: input_ids with the pad id, labels with IGNORE_INDEX, attention_mask 0.

    transformers' DataCollatorForSeq2Seq does the same but needs `tokenizer.pad_token`, which Mistral's
    tokenizer lacks; setting one would change the tokenizer that export writes into the GGUF.

    The loss is on the answer only, at the end of each sequence, so the model computes logits only from the
    position that predicts the batch's first answer token on (`logits_to_keep`), and the labels are cut to
    match: float32 logits over a 49k vocabulary for every prompt position (about 200 MB per 1,000 tokens, three
    times over with their gradient) were the largest single cost of training memory. The loss is the same.
    """

    def __init__(self, pad_id: int, answer_logits_only: bool = True) -> None:
        self.pad_id = pad_id
        self.answer_logits_only = answer_logits_only

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, Any]:
        import torch

        width = max(len(item["input_ids"]) for item in batch)

        def pad(values: list[int], fill: int) -> list[int]:
            return values + [fill] * (width - len(values))

        labels = torch.tensor([pad(b["labels"], IGNORE_INDEX) for b in batch])  # (batch, width)
        collated = {
            "input_ids": torch.tensor([pad(b["input_ids"], self.pad_id) for b in batch]),  # (batch, width)
            "attention_mask": torch.tensor([pad([1] * len(b["input_ids"]), 0) for b in batch]),
            "labels": labels,
        }
        answer = (labels != IGNORE_INDEX).any(dim=0).nonzero()
        if self.answer_logits_only and answer.numel() and answer[0].item() > 0:
            # Logits at positions first-1 .. width-1 predict tokens first .. width (the model shifts the
            # labels by one); the labels it gets are the same positions, so the shift lines up.
            keep = width - (answer[0].item() - 1)
            collated["logits_to_keep"] = keep
            collated["labels"] = labels[:, width - keep:]  # (batch, keep)
        return collated


# --- hardware and model -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Hardware:
    device: Literal["cpu", "cuda"]
    dtype: Literal["float32", "bfloat16", "float16"]
    load_in_4bit: bool


def choose_hardware(model: ModelConfig, cuda: bool, bf16_supported: bool) -> Hardware:
    """Where and in which precision to train, from the config and what the machine has."""
    wanted = model.device_map.lower()
    if wanted.startswith("cuda") and not cuda:
        raise ConfigError(f"model.device_map is '{model.device_map}' but no CUDA GPU is visible — set "
                          "model.device_map: auto (or cpu)")
    on_gpu = cuda and wanted != "cpu"
    if model.load_in_4bit and not on_gpu:
        raise TrainingError("model.load_in_4bit (QLoRA) needs a CUDA GPU and training would run on the CPU — set "
                            "model.load_in_4bit: false to train in 32-bit on the CPU (slow for 7B models; a small "
                            "base such as SmolLM2 works), or train on a machine with a GPU")
    if model.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        raise TrainingError("model.load_in_4bit needs bitsandbytes — pip install 'hcp[cuda]'")
    if not on_gpu:
        return Hardware("cpu", "float32", False)
    return Hardware("cuda", "bfloat16" if bf16_supported else "float16", model.load_in_4bit)


def _load_model(base: BaseModelRef, hardware: Hardware, gradient_checkpointing: bool) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"dtype": getattr(torch, hardware.dtype)}
    if hardware.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=kwargs["dtype"],
        )
        # One whole copy per process: under DDP each rank puts the model on its own GPU.
        kwargs["device_map"] = {"": int(os.environ.get("LOCAL_RANK", "0"))}
    try:
        model = AutoModelForCausalLM.from_pretrained(base.path, **kwargs)
    except torch.OutOfMemoryError:
        raise TrainingError(f"out of memory loading {base.given} — {OOM_ADVICE}") from None
    except (OSError, ValueError) as exc:
        raise TrainingError(f"{base.given}: cannot load the model ({exc}) — check that the folder holds "
                            "config.json and its weights") from None
    model.config.use_cache = False  # the KV cache is for generation; in training it only costs memory
    if hardware.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False},
        )
    return model


def linear_layer_names(model: Any) -> list[str]:
    """Short names (q_proj, ...) of the model's linear layers: what LoRA's target_modules may name."""
    import torch

    return sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                   if isinstance(module, torch.nn.Linear) and name})


# Layers that some architectures fuse: Phi-3 computes q, k and v in one qkv_proj and gate and up in one
# gate_up_proj. A target named for the separate layers adapts the fused one (all of it: LoRA cannot adapt a slice).
FUSED_LAYERS = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
                "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}


def lora_targets(model: Any, targets: Sequence[str]) -> tuple[list[str], dict[str, str]]:
    """The model's layers to adapt for `targets` (training.lora.target_modules, in llama's names by default), and
    what was renamed: a layer this architecture fuses becomes the fused layer. A name the model has neither way is
    a ConfigError listing its linear layers."""
    names = [name for name, _ in model.named_modules()]

    def present(target: str) -> bool:
        return any(n == target or n.endswith("." + target) for n in names)

    resolved: list[str] = []
    renamed: dict[str, str] = {}
    missing = []
    for target in targets:
        if present(target):
            resolved.append(target)
        elif target in FUSED_LAYERS and present(FUSED_LAYERS[target]):
            resolved.append(FUSED_LAYERS[target])
            renamed[target] = FUSED_LAYERS[target]
        else:
            missing.append(target)
    if missing:
        raise ConfigError(f"training.lora.target_modules: {', '.join(missing)} not in the model — its linear "
                          f"layers are {', '.join(linear_layer_names(model))}")
    return list(dict.fromkeys(resolved)), renamed


def _add_lora(model: Any, config: Config, echo: Callable[[str], None]) -> Any:
    from peft import LoraConfig, TaskType, get_peft_model

    lora = config.training.lora
    targets, renamed = lora_targets(model, lora.target_modules)
    for fused in dict.fromkeys(renamed.values()):
        parts = ", ".join(t for t, f in renamed.items() if f == fused)
        echo(f"{type(model).__name__} fuses {parts} into {fused}: LoRA adapts {fused}")
    peft_config = LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
        bias=lora.bias, target_modules=targets,
    )
    return get_peft_model(model, peft_config)


# --- interruption -----------------------------------------------------------------------------------------


def _callback_base() -> type:
    from transformers import TrainerCallback

    return TrainerCallback


class StopOnSignal:
    """First Ctrl-C (or SIGTERM): finish the step, save a checkpoint and stop. A second one quits at once.

    Built on the Trainer's callback flags (should_save, should_training_stop), so the checkpoint is an ordinary
    one that `resume_from_checkpoint` understands.
    """

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.echo = echo
        self.requested = False
        self._previous: dict[int, Any] = {}
        self.callback = self._make_callback()

    def _make_callback(self) -> TrainerCallback:
        owner = self

        class _Callback(_callback_base()):  # type: ignore[misc]
            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
                if owner.requested:
                    control.should_save = True
                    control.should_training_stop = True
                return control

        return _Callback()

    def __enter__(self) -> StopOnSignal:
        if threading.current_thread() is threading.main_thread():  # signal handlers only work there
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested:
            self.__exit__()
            raise KeyboardInterrupt
        self.requested = True
        self.echo("stopping after this step to save a checkpoint — press Ctrl-C again to quit without saving")


# --- outputs ----------------------------------------------------------------------------------------------


def _versions() -> dict[str, str | None]:
    found: dict[str, str | None] = {"python": platform.python_version(), "hcp": __version__}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def loss_history(log_history: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Train and eval loss per step from the Trainer's log history."""
    train = [{"step": e["step"], "epoch": e.get("epoch"), "loss": e["loss"], "learning_rate": e.get("learning_rate"),
              "grad_norm": e.get("grad_norm")} for e in log_history if "loss" in e]
    evals = [{"step": e["step"], "epoch": e.get("epoch"), "eval_loss": e["eval_loss"]}
             for e in log_history if "eval_loss" in e]
    return {"train": train, "eval": evals}


def plot_losses(history: dict[str, list[dict[str, Any]]], path: Path) -> None:
    # The object API with the Agg canvas: no pyplot, no global backend, no display needed.
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4), dpi=100)
    axes = figure.subplots()
    if history["train"]:
        axes.plot([e["step"] for e in history["train"]], [e["loss"] for e in history["train"]], label="train")
    if history["eval"]:
        axes.plot([e["step"] for e in history["eval"]], [e["eval_loss"] for e in history["eval"]],
                  marker="o", label="validation")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("loss (answer tokens)")
    axes.set_title("hcp train")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")


def _peak_memory_mb() -> float:
    import torch

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    peak_mb = peak / (1 << 20) if sys.platform == "darwin" else peak / 1024
    if torch.cuda.is_available():
        peak_mb = max(peak_mb, torch.cuda.max_memory_allocated() / (1 << 20))
    return peak_mb


# --- the run ----------------------------------------------------------------------------------------------


@dataclass
class _Data:
    """The examples read, before the split: the training file's, and the validation file's when one is given."""

    examples: list[Example]
    val_file: list[Example] | None
    files: dict[str, Any]  # provenance of the data files (and, once split, of the split)


def _load_data(request: TrainRequest, rubric: Rubric, echo: Callable[[str], None]) -> _Data:
    dataset = load_dataset(request.data, rubric)
    examples = require_valid(dataset)
    if dataset.warnings:
        echo(f"{len(dataset.warnings)} warning(s) about {request.data} — see 'hcp data validate {request.data}'")
    files: dict[str, Any] = {"train": {"path": str(request.data), "sha256": sha256_file(request.data)}}
    if request.val_data is None:
        return _Data(examples, None, files)
    val = require_valid(load_dataset(request.val_data, rubric))
    shared = shared_transcripts(examples, val)
    if shared:
        listed = ", ".join(f"{request.val_data}:{v} = {request.data}:{t}" for v, t in shared[:5])
        more = f" and {len(shared) - 5} more" if len(shared) > 5 else ""
        raise DataError(f"{len(shared)} validation transcript(s) are also in the training data ({listed}{more}) — "
                        "a model validated on what it trained on shows no overfitting; remove them from one file, "
                        "or hold out part of --data with --val-fraction")
    files["validation"] = {"path": str(request.val_data), "sha256": sha256_file(request.val_data)}
    return _Data(examples, val, files)


def _val_fraction(request: TrainRequest) -> float:
    return request.config.training.val_fraction if request.val_fraction is None else request.val_fraction


def _split(request: TrainRequest, rubric: Rubric, data: _Data, encoded: list[EncodedExample],
           val_encoded: list[EncodedExample]) -> tuple[list[EncodedExample], list[EncodedExample]]:
    """(training, validation) of the examples that fit. Too-long ones are dropped before the split, so that the
    validation share and its stratification hold for the examples the run actually uses."""
    fraction = _val_fraction(request)
    if data.val_file is not None or fraction == 0 or not encoded:
        return encoded, val_encoded
    fitting = {e.line for e in encoded}
    by_line = {e.line: e for e in encoded}
    seed = request.config.training.seed
    train, val = split_examples([e for e in data.examples if e.line in fitting], rubric, fraction, seed)
    data.files["validation"] = {"split_of": "train", "fraction": fraction, "seed": seed}
    return [by_line[e.line] for e in train], [by_line[e.line] for e in val]


@dataclass(frozen=True)
class Schedule:
    """When the learning rate warms up, the run evaluates and saves, in optimizer steps."""

    steps: int  # of the whole run
    warmup_steps: int
    eval_steps: int
    save_steps: int
    derived: tuple[str, ...]  # the training.* keys the config left unset, derived from `steps`


WARMUP_SHARE, EVAL_SHARE = 0.05, 0.1  # of a run's steps, where the config does not say


def run_steps(training: TrainingConfig, examples: int, max_steps: int | None, world_size: int = 1) -> int:
    """Optimizer steps of a run, as the Trainer (transformers 5) counts them: batches per epoch and process, an
    update every gradient_accumulation_steps of them (and one for the rest), times the epochs; or max_steps."""
    if max_steps:
        return max_steps
    batches = math.ceil(examples / (training.batch_size * world_size))
    per_epoch = max(math.ceil(batches / training.gradient_accumulation_steps), 1)
    return max(math.ceil(training.num_epochs * per_epoch), 1)


def training_schedule(training: TrainingConfig, steps: int) -> Schedule:
    """The config's warm-up, evaluation and save steps; those it leaves unset follow the run's length (a fixed
    500 would never evaluate or save a run of 60 steps): an evaluation and a checkpoint every ~10% of the steps,
    warm-up over the first ~5%. A save falls on an evaluation, so that the best checkpoint can be kept."""
    every = max(1, round(steps * EVAL_SHARE))
    eval_steps = training.eval_steps or training.save_steps or every
    save_steps = training.save_steps or eval_steps
    warmup = training.warmup_steps if training.warmup_steps is not None else round(steps * WARMUP_SHARE)
    derived = tuple(k for k in ("warmup_steps", "eval_steps", "save_steps") if getattr(training, k) is None)
    return Schedule(steps, warmup, eval_steps, save_steps, derived)


def _report_schedule(echo: Callable[[str], None], schedule: Schedule, with_validation: bool) -> None:
    if not schedule.derived:
        return
    chosen = {"warmup_steps": f"warm-up {schedule.warmup_steps} steps",
              "eval_steps": f"evaluation every {schedule.eval_steps} steps" if with_validation else "",
              "save_steps": f"a checkpoint every {schedule.save_steps} steps"}
    said = ", ".join(chosen[k] for k in schedule.derived if chosen[k])
    keys = ", ".join(f"training.{k}" for k in schedule.derived)
    echo(f"{schedule.steps} optimizer steps: {said} (from the run's length; set {keys} to choose)")


def _check_settings(request: TrainRequest, with_validation: bool) -> None:
    t = request.config.training
    if request.report_to not in REPORT_TARGETS:
        raise ConfigError(f"report_to '{request.report_to}' is not one of {', '.join(REPORT_TARGETS)}")
    if request.report_to != "none" and importlib.util.find_spec(request.report_to) is None:
        raise TrainingError(f"--report-to {request.report_to} needs the {request.report_to} package — "
                            f"pip install {request.report_to}")
    if with_validation and t.save_steps and t.eval_steps and t.save_steps % t.eval_steps:
        better = t.eval_steps * math.ceil(t.save_steps / t.eval_steps)
        raise ConfigError(f"training.save_steps ({t.save_steps}) must be a multiple of training.eval_steps "
                          f"({t.eval_steps}) so that the best checkpoint can be kept — e.g. save_steps: {better}")


def _check_output(request: TrainRequest) -> Path | None:
    """The checkpoint to resume from (None for a fresh run); refuses to overwrite a run by accident."""
    from transformers.trainer_utils import get_last_checkpoint

    out = request.output_dir
    if out.exists() and not out.is_dir():
        raise TrainingError(f"{out}: exists and is not a folder — choose another --output")
    folder = out / CHECKPOINTS
    last = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if request.resume:
        if last is None:
            raise TrainingError(f"--resume: no checkpoint in {folder} — start without --resume")
        return Path(last)
    if last is not None or (out / "adapter_config.json").exists():
        raise TrainingError(f"{out}: already holds a training run — add --resume to continue it, or choose "
                            "another --output (or delete this one)")
    return None


def _fingerprint(request: TrainRequest, data: _Data, base: BaseModelRef, rubric: Rubric) -> dict[str, Any]:
    """What a checkpoint depends on: resuming with anything else would not continue the same run."""
    return {
        "data": data.files,
        "base_sha256": base.sha256,
        "training": request.config.training.model_dump(mode="json"),
        "max_length": request.config.model.max_length,
        "rubric": rubric.digest,
    }


def _check_resume(folder: Path, fingerprint: dict[str, Any]) -> None:
    path = folder / RUN_FILE
    if not path.is_file():
        return
    before = json.loads(path.read_text(encoding="utf-8"))
    changed = [key for key in fingerprint if before.get(key) != fingerprint[key]]
    if changed:
        raise TrainingError(f"--resume: {', '.join(changed)} changed since the checkpoint was saved — resume with "
                            "the same data, base model and config, or train into a new --output")


def _report_lengths(echo: Callable[[str], None], encoded: list[EncodedExample], skipped: list[SkippedExample],
                    max_length: int, strict: bool) -> None:
    if skipped and strict:
        listed = ", ".join(str(s) for s in skipped[:5]) + (" ..." if len(skipped) > 5 else "")
        raise TrainingError(f"{len(skipped)} example(s) longer than model.max_length ({max_length} tokens): "
                            f"{listed} — raise model.max_length, shorten these transcripts, or drop --strict "
                            "to skip them")
    for item in skipped:
        echo(f"skipped {item}: longer than model.max_length ({max_length})")
    if encoded:
        lengths = [len(e.input_ids) for e in encoded]
        echo(f"tokens per example: min {min(lengths)}, median {statistics.median(lengths):.0f}, max {max(lengths)}")


def _training_arguments(request: TrainRequest, hardware: Hardware, schedule: Schedule,
                        with_validation: bool) -> Any:
    from transformers import TrainingArguments

    t = request.config.training
    return TrainingArguments(
        output_dir=str(request.output_dir / CHECKPOINTS),
        learning_rate=t.learning_rate,
        num_train_epochs=t.num_epochs,
        max_steps=request.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        warmup_steps=schedule.warmup_steps,
        logging_steps=t.logging_steps,
        logging_first_step=True,  # the loss before any update: the reference that progress is measured against
        save_strategy="steps",
        save_steps=schedule.save_steps,
        # Two checkpoints: the latest (to resume) and the best (kept by load_best_model_at_end).
        save_total_limit=2,
        eval_strategy="steps" if with_validation else "no",
        eval_steps=schedule.eval_steps,
        load_best_model_at_end=with_validation,
        metric_for_best_model="eval_loss" if with_validation else None,
        greater_is_better=False,
        prediction_loss_only=True,  # eval needs the loss only, not (batch, seq, vocab) logits
        seed=t.seed,
        data_seed=t.seed,
        use_cpu=hardware.device == "cpu",
        bf16=hardware.dtype == "bfloat16",
        fp16=hardware.dtype == "float16",
        report_to=request.report_to,
        disable_tqdm=not request.progress,
        include_num_input_tokens_seen="non_padding",
        remove_unused_columns=False,  # our records are plain dicts already in the model's argument names
        dataloader_num_workers=0,
        ddp_find_unused_parameters=False,
        **_checkpointing_arguments(request.config.model.gradient_checkpointing),
    )


def _checkpointing_arguments(enabled: bool) -> dict[str, Any]:
    """Gradient (activation) checkpointing, under the argument names of the installed transformers."""
    from transformers import TrainingArguments

    if not enabled:
        return {}
    # transformers 5.x renamed gradient_checkpointing to activation_checkpointing; older 5.x knows only the first.
    name = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
            else "gradient_checkpointing")
    # Non-reentrant checkpointing works with frozen inputs (LoRA) without enable_input_require_grads().
    return {name: True, f"{name}_kwargs": {"use_reentrant": False}}


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") == "0"


@dataclass
class _Plan:
    """A run that passed every precondition: what to train on, from which base, where."""

    rubric: Rubric
    hardware: Hardware
    resume_from: Path | None
    data: _Data
    base: BaseModelRef
    tokenizer: Any
    train_set: list[EncodedExample]
    val_set: list[EncodedExample]
    skipped: list[SkippedExample]
    schedule: Schedule


def _plan(request: TrainRequest, echo: Callable[[str], None]) -> _Plan:
    """Check everything that can be checked before loading the model: settings, output, data, base, lengths."""
    import torch
    from transformers import AutoTokenizer

    config = request.config
    rubric = Rubric.from_config(config)
    cuda = torch.cuda.is_available()
    hardware = choose_hardware(config.model, cuda, cuda and torch.cuda.is_bf16_supported())
    resume_from = _check_output(request)
    data = _load_data(request, rubric, echo)
    _check_settings(request, with_validation=data.val_file is not None or _val_fraction(request) > 0)
    base = resolve_base(request.base or config.model.name)
    echo(f"base model: {base.given} ({base.kind}, sha256 {base.sha256[:12]}); training on {hardware.device} "
         f"in {hardware.dtype}{' with 4-bit QLoRA' if hardware.load_in_4bit else ''}")

    tokenizer = AutoTokenizer.from_pretrained(base.path)
    limit = config.model.max_length
    encoded, skipped = encode_examples(tokenizer, rubric, data.examples, limit, str(request.data))
    val_encoded, val_skipped = encode_examples(tokenizer, rubric, data.val_file or [], limit, str(request.val_data))
    skipped += val_skipped
    _report_lengths(echo, encoded + val_encoded, skipped, limit, request.strict)
    if not encoded:
        raise TrainingError(f"every training example is longer than model.max_length ({limit} tokens) — raise "
                            "model.max_length or shorten the transcripts")
    if data.val_file and not val_encoded:
        echo(f"every validation example of {request.val_data} is longer than model.max_length ({limit} tokens): "
             "training without validation")
    train_set, val_set = _split(request, rubric, data, encoded, val_encoded)
    echo(f"{len(train_set)} training examples, {len(val_set)} for validation"
         + ("" if val_set else " (no validation: the last checkpoint is kept, not the best)"))
    schedule = training_schedule(config.training, run_steps(config.training, len(train_set), request.max_steps,
                                                            int(os.environ.get("WORLD_SIZE", "1"))))
    _report_schedule(echo, schedule, with_validation=bool(val_set))

    checkpoints = request.output_dir / CHECKPOINTS
    fingerprint = _fingerprint(request, data, base, rubric)
    if resume_from is not None:
        _check_resume(checkpoints, fingerprint)
    elif _is_main_process():
        make_folder(checkpoints)
        _write_json(checkpoints / RUN_FILE, fingerprint)
    return _Plan(rubric, hardware, resume_from, data, base, tokenizer, train_set, val_set, skipped, schedule)


class _Throughput:
    """Tokens and seconds of this call's optimizer steps (forward, backward, update): evaluation and checkpoint
    saving are left out, and a resumed run counts only its own part."""

    def __init__(self) -> None:
        self.tokens = 0
        self.seconds = 0.0
        self.callback = self._make_callback()

    def _make_callback(self) -> TrainerCallback:
        owner = self
        marks = {"step": 0.0, "tokens": 0}

        class _Callback(_callback_base()):  # type: ignore[misc]
            def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                marks["tokens"] = state.num_input_tokens_seen or 0

            def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                marks["step"] = time.monotonic()

            def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
                owner.seconds += time.monotonic() - marks["step"]
                owner.tokens = int((state.num_input_tokens_seen or 0) - marks["tokens"])

        return _Callback()


def _make_trainer(request: TrainRequest, plan: _Plan, callbacks: list[TrainerCallback],
                  echo: Callable[[str], None]) -> Any:
    from transformers import Trainer, set_seed

    config = request.config
    set_seed(config.training.seed)  # LoRA's A matrices are drawn here: same seed, same adapter
    model = _add_lora(_load_model(plan.base, plan.hardware, config.model.gradient_checkpointing), config, echo)
    trainable, total = model.get_nb_trainable_parameters()
    echo(f"LoRA r={config.training.lora.r} on {', '.join(sorted(model.peft_config['default'].target_modules))}: "
         f"{trainable:,} trainable parameters ({100 * trainable / total:.2f}% of {total:,})")
    tokenizer = plan.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    records = lambda encoded: [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]  # noqa: E731
    return Trainer(
        model=model,
        args=_training_arguments(request, plan.hardware, plan.schedule, with_validation=bool(plan.val_set)),
        train_dataset=records(plan.train_set),
        eval_dataset=records(plan.val_set) or None,
        data_collator=PadCollator(pad_id if pad_id is not None else 0),
        processing_class=tokenizer,
        callbacks=[*callbacks, *request.callbacks],
    )


def train(request: TrainRequest) -> TrainResult:
    """Fine-tune `request.base` with LoRA on `request.data`; write the adapter and its provenance."""
    import torch

    started = time.monotonic()
    echo = request.echo or (lambda message: None)
    plan = _plan(request, echo)
    stopper, throughput = StopOnSignal(echo), _Throughput()
    with stopper, warnings.catch_warnings():
        # transformers' own internals still use a name they deprecated; nothing a user can act on.
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        try:
            trainer = _make_trainer(request, plan, [stopper.callback, throughput.callback], echo)
            trainer.train(resume_from_checkpoint=str(plan.resume_from) if plan.resume_from else None)
        except torch.OutOfMemoryError:
            longest = max(len(e.input_ids) for e in plan.train_set)
            raise TrainingError(f"out of GPU memory at training.batch_size {request.config.training.batch_size} "
                                f"and up to {longest} tokens per example — {OOM_ADVICE}") from None
        state = trainer.state
        if stopper.requested and state.global_step < state.max_steps:
            raise TrainingError(f"training interrupted at step {state.global_step} of {state.max_steps}; a "
                                f"checkpoint is saved in {request.output_dir / CHECKPOINTS} — run the same command "
                                "with --resume to continue")
        # The Trainer evaluates at the last step too; best_metric is the loss of the checkpoint it kept.
        best_eval = state.best_metric
        if plan.val_set and best_eval is None:
            best_eval = trainer.evaluate()["eval_loss"]

    history = loss_history(state.log_history)
    result = TrainResult(
        output_dir=request.output_dir, base=plan.base, train_examples=len(plan.train_set),
        val_examples=len(plan.val_set), skipped=plan.skipped, global_step=state.global_step,
        first_loss=history["train"][0]["loss"] if history["train"] else None,
        final_loss=history["train"][-1]["loss"] if history["train"] else None,
        best_eval_loss=best_eval, wall_seconds=time.monotonic() - started, train_seconds=throughput.seconds,
        train_tokens=throughput.tokens,
        tokens_per_second=throughput.tokens / throughput.seconds if throughput.seconds else 0.0,
        peak_memory_mb=_peak_memory_mb(),
    )
    if trainer.is_world_process_zero():
        _write_outputs(request, result, trainer, plan, history)
    return result


def _write_validation(path: Path, plan: _Plan) -> None:
    """The validation transcripts the run held out (none: no file, and an earlier run's is removed)."""
    examples = {e.line: e for e in (plan.data.val_file if plan.data.val_file is not None else plan.data.examples)}
    held_out = [examples[e.line] for e in plan.val_set]
    if not held_out:
        path.unlink(missing_ok=True)
        return
    lines = [json.dumps({"line": e.line, "id": e.id, "transcript": e.transcript}, ensure_ascii=False) for e in held_out]
    atomic_write_text(path, "\n".join(lines) + "\n", private=True)  # transcripts: the owner's alone


def _write_outputs(request: TrainRequest, result: TrainResult, trainer: Any, plan: _Plan,
                   history: dict[str, Any]) -> None:
    out, tokenizer, base, rubric, hardware = request.output_dir, plan.tokenizer, plan.base, plan.rubric, plan.hardware
    trainer.model.save_pretrained(out)  # adapter_config.json + adapter_model.safetensors
    tokenizer.save_pretrained(out)  # tokenizer.json, tokenizer_config.json, the chat template
    if (base.path / "tokenizer.model").is_file():  # the SentencePiece model: what GGUF converters read
        shutil.copy2(base.path / "tokenizer.model", out / "tokenizer.model")
    state = trainer.state
    summary = {k: v for k, v in asdict(result).items() if k not in ("output_dir", "base", "skipped")}
    summary["best_checkpoint"] = state.best_model_checkpoint
    _write_json(out / "metrics.json", {**history, "summary": summary})
    _write_validation(out / VALIDATION_FILE, plan)
    plot_losses(history, out / "loss.png")
    _write_json(out / "training_config.json", {
        "hcp_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "base": base.provenance(),  # what merge and export read to find the base again
        "data": plan.data.files,
        "examples": {
            "train": result.train_examples, "validation": result.val_examples, "skipped": len(result.skipped),
            "skipped_examples": [asdict(s) for s in result.skipped],
        },
        "config": request.config.model_dump(mode="json"),
        "run": {
            "max_steps": request.max_steps, "strict": request.strict, "report_to": request.report_to,
            "resumed": request.resume, "device": hardware.device, "dtype": hardware.dtype,
            "load_in_4bit": hardware.load_in_4bit, "world_size": trainer.args.world_size,
            "schedule": asdict(plan.schedule),  # the warm-up, eval and save steps used, derived or set
        },
        "rubric": {"digest": rubric.digest, "system_prompt": rubric.system_prompt, "user_template": USER_TEMPLATE,
                   "json_schema": rubric.json_schema},
        "chat_template": tokenizer.chat_template,
        "chat_template_date": TEMPLATE_DATE.isoformat(),  # strftime_now's date in every render (hcp.chat)
        "results": summary,
        "versions": _versions(),
    })
