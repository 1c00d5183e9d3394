"""`hcp export-ollama`: adapter (or HF model) -> merged -> GGUF -> quantized -> Modelfile -> registered.

Each step checks its input before it starts, writes its output atomically, and is timed. The exported model
carries the chat template and the rubric prompt it was trained with, so Ollama (and `hcp score` on the GGUF)
shows it exactly the prompt of training.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hcp import __version__
from hcp.config import Config
from hcp.errors import ExportError, HcpError
from hcp.export.parity import ParityTarget, free_line
from hcp.export.register import check_register_host, register
from hcp.export.tokens import check_prompt_tokens
from hcp.files import make_folder
from hcp.rubric import Rubric

log = logging.getLogger(__name__)

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")

# Ollama's model names (ollama/ollama, types/model/name.go): [namespace/]name[:tag], each part 1-80 characters
# of ASCII letters, digits, '_', '-' and '.', beginning with a letter, digit or '_', and no '.' in the
# namespace; its older parser also refuses '..'. A host part is left out: hcp registers with the daemon on this
# machine. Checked before any work, since the name is also a file name and a word of the printed command.
_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,79}"
MODEL_NAME = re.compile(rf"(?:[A-Za-z0-9_][A-Za-z0-9_-]{{0,79}}/)?{_PART}(?::{_PART})?")
MODEL_NAME_RULE = ("[namespace/]name[:tag], each part 1-80 ASCII letters, digits, '_', '-' or '.', beginning with "
                   "a letter, digit or '_' (no '.' in the namespace, no '..'), e.g. hcp-rater or clinic/hcp-rater:v2")


@dataclass
class ExportOptions:
    name: str = "hcp-rater"
    quant: str = "q4_k_m"
    out_dir: Path | None = None  # default: <model>/export
    create: bool = True
    host: str | None = None
    allow_remote: bool = False  # register with a daemon off this machine
    timeout: float | None = 600.0
    modelfiles_dir: Path = Path("modelfiles")
    keep_intermediate: bool = False
    smoke_check: bool = True
    sample_transcript: str | None = None
    threads: int | None = None
    daemon_name: str | None = None  # the name created on the daemon (default: name); the registry gives NAME:N
    parity_check: bool = True  # the quantized GGUF's scores against the trained model's (hcp/export/parity.py)
    parity_transcripts: int = 20
    accept_parity_loss: bool = False  # export a quantization below the parity target anyway, saying so
    parity_target: ParityTarget = field(default_factory=ParityTarget)


@dataclass
class ExportResult:
    gguf: Path
    modelfile: Path
    modelfile_copy: Path
    registered: bool
    create_command: str
    steps: list[tuple[str, float, str]] = field(default_factory=list)  # (step, seconds, detail)
    files: dict[str, int] = field(default_factory=dict)  # path -> bytes
    smoke_rating: dict[str, Any] | None = None
    # The parity check's figures (ParityReport.to_json(): agreement, mean |Δ expected|, max KL, free ratings equal
    # to F16's, and with --quant auto the types that fell short); {"skipped": True} with --no-parity-check.
    parity: dict[str, Any] | None = None


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _trained_rubric(model: Path) -> dict[str, Any]:
    path = model / "training_config.json"
    if not path.is_file():
        return {}
    from hcp.export.merge import read_json_object

    recorded = read_json_object(path).get("rubric", {})
    return recorded if isinstance(recorded, dict) else {}


def check_rubric_matches(model: Path, rubric: Rubric) -> None:
    """The Modelfile's SYSTEM must be the prompt the model was trained with."""
    recorded = _trained_rubric(model)
    digest = recorded.get("digest")
    if digest and digest != rubric.digest:
        if isinstance(recorded.get("system_prompt"), str):
            _check_modelfile_can_carry(model, recorded["system_prompt"], rubric.system_prompt)
        raise ExportError(f"{model} was trained with rubric {digest}, but the config gives rubric {rubric.digest} — "
                          "export with the --config used for training, so the model sees the prompt it learned")


def _check_modelfile_can_carry(model: Path, trained: str, current: str) -> None:
    """A model trained on a rubric text with characters an Ollama Modelfile drops (a zero-width space, a soft
    hyphen), which the config now removes when it is read: no Modelfile can give it its training prompt. Say
    which config key holds them, rather than that the rubric is another."""
    from hcp.config import modelfile_drops

    def kept(text: str) -> str:
        return "".join(char for char in text if not modelfile_drops(char))

    if kept(trained) != kept(current):
        return  # another rubric indeed: the caller's message
    lines, dimension, key = trained.split("\n"), None, "scoring.dimensions"
    for line in lines:
        heading = re.match(r"- ([a-z][a-z0-9_]*) \(weight", line)
        dimension = heading.group(1) if heading else dimension
        if any(modelfile_drops(char) for char in line) and dimension:
            level = re.match(r"  (\d+): ", line)
            key = f"scoring.dimensions.{dimension}." + (f"levels.{level.group(1)}" if level else "description")
            break
    raise ExportError(f"{model} was trained on a rubric whose {key} held characters an Ollama Modelfile drops (a "
                      "zero-width or other invisible character, which the config now removes when it is read): no "
                      "Modelfile can give this model the prompt it learned — train it again with this config")


def find_license(folders: list[Path]) -> str | None:
    for folder in folders:
        for name in LICENSE_FILES:
            if (folder / name).is_file():
                return (folder / name).read_text(errors="replace").replace('"""', "'''").rstrip().rstrip('"')
    return None


class _Steps:
    """The export's steps as they finish: (label, seconds, detail), also logged."""

    def __init__(self) -> None:
        self.done: list[tuple[str, float, str]] = []

    @contextmanager
    def timed(self, label: str) -> Iterator[list[str]]:
        started = time.perf_counter()
        detail: list[str] = []
        yield detail  # the step appends its one-line detail
        self.done.append((label, round(time.perf_counter() - started, 2), " ".join(detail)))
        log.info("%s: %.2f s %s", *self.done[-1])


def check_model_name(name: str) -> None:
    """Refuse a name Ollama would refuse, or one that would lead a file out of the output folder."""
    if MODEL_NAME.fullmatch(name) is None or ".." in name:
        shown = name if len(name) <= 60 else f"{name[:57]}..."
        raise ExportError(f"--name {shown!r}: not an Ollama model name — use {MODEL_NAME_RULE}")


def file_stem(name: str) -> str:
    """The files' name for a model name: 'clinic/hcp-rater:v2' -> 'clinic-hcp-rater-v2' (one folder, no ':')."""
    return name.replace("/", "-").replace(":", "-")


def check_export_inputs(model: Path, options: ExportOptions, rubric: Rubric) -> bool:
    """Everything the export needs, checked before any work; returns whether MODEL is an adapter."""
    from hcp.export.quantize import QUANT_TYPES

    check_model_name(options.name)
    if options.create:
        check_register_host(options.host, options.allow_remote)
    if options.quant.lower() not in (*QUANT_TYPES, AUTO):
        raise ExportError(f"--quant {options.quant}: use one of {', '.join(QUANT_TYPES)} or {AUTO}")
    if options.quant.lower() == AUTO and not options.parity_check:
        raise ExportError("--quant auto chooses the type by the parity check — drop --no-parity-check, or name a type")
    if options.parity_transcripts < 1:
        raise ExportError(f"--parity-transcripts {options.parity_transcripts}: give 1 or more (or --no-parity-check)")
    if not model.is_dir():
        raise ExportError(f"{model}: not a folder — give an adapter folder from 'hcp train' or an HF model folder")
    adapter = _is_adapter(model)
    if not adapter and not (model / "config.json").is_file():
        raise ExportError(f"{model}: neither an adapter (adapter_config.json) nor an HF model (config.json)")
    check_rubric_matches(model, rubric)
    return adapter


def export_ollama(model: str | Path, config: Config, options: ExportOptions) -> ExportResult:
    model = Path(model)
    rubric = Rubric.from_config(config)
    adapter = check_export_inputs(model, options, rubric)
    quant = options.quant.lower()
    out = Path(options.out_dir) if options.out_dir else model / "export"
    make_folder(out, private=True)  # the trained weights, merged and converted: the owner's alone
    steps = _Steps()
    provenance: dict[str, Any] = {"rubric_digest": rubric.digest, "rubric": rubric.system_prompt}

    source = _merge_step(model, out, provenance, steps) if adapter else model
    provenance["base_model"] = str(provenance.pop("base", model))
    stem = file_stem(options.name)
    wide = out / f"{stem}.F16.gguf"
    modelfile, copy = out / "Modelfile", Path(options.modelfiles_dir) / f"{stem}.Modelfile"
    # A step that refuses leaves none of what this export made for Ollama or `hcp score --model` to load: the
    # GGUFs it refused and the Modelfiles that point to them go with it (an earlier export's files stay).
    made: list[Path] = []
    with _removed_on_error(made):
        made.append(_convert_step(source, wide, options.name, quant, provenance, steps))
        # Before quantizing: a GGUF that would see other tokens goes no further. The sample is hcp's own, never a
        # transcript given to the export, because a failure shows the tokens where the two differ.
        with steps.timed("tokens") as detail:
            count = check_prompt_tokens(wide, source, rubric.messages(SMOKE_TRANSCRIPT))
            detail.append(f"llama.cpp gives the rating prompt the {count} tokens of training")
        final, parity = _quantize_and_check(model, source, wide, out / stem, quant, config, rubric, options, steps,
                                            made)
        provenance["parity"] = parity
        if final != wide and not options.keep_intermediate:
            wide.unlink()

        # The Modelfile comes from the merged folder's tokenizer, so it is written before that folder goes.
        with steps.timed("modelfile") as detail:
            spec = modelfile_spec(source, final, options.name, config, rubric, provenance)
            if adapter and not options.keep_intermediate:
                shutil.rmtree(out / "merged", ignore_errors=True)
            made.append(spec.write(modelfile))
            made.append(spec.write(copy))
            detail.append(f"{modelfile} and {copy}")

        smoke = None
        if options.smoke_check:  # the quantized GGUF, in llama.cpp, rates the sample transcript with a valid rating
            with steps.timed("smoke check") as detail:
                smoke = smoke_check(final, rubric, config, options)
                detail.append(f"valid rating, overall {smoke['overall']}")
    daemon_name = options.daemon_name or options.name
    create_command = f"ollama create {daemon_name} -f {copy}"

    registered = False
    if options.create:
        with steps.timed("register") as detail:
            registered = register(replace(spec, name=daemon_name), options.host, options.timeout,
                                  allow_remote=options.allow_remote)
            detail.append(f"as {daemon_name}" if registered else f"Ollama not running — run later: {create_command}")
    files = {str(p): p.stat().st_size for p in (final, modelfile, copy)}
    return ExportResult(final, modelfile, copy, registered, create_command, steps.done, files,
                        smoke["rating"] if smoke else None, parity)


AUTO = "auto"
AUTO_ORDER = ("q4_k_s", "q4_k_m", "q5_k_m", "q8_0", "f16")  # smallest file first


def _quantize_and_check(model: Path, source: Path, wide: Path, stem: Path, quant: str, config: Config,
                        rubric: Rubric, options: ExportOptions, steps: _Steps, made: list[Path]
                        ) -> tuple[Path, dict[str, Any]]:
    """The quantized GGUF (or the F16 one, for f16) and the parity check's figures. With --quant auto, each type
    from the smallest is made and checked until one meets the target; those that do not are removed."""
    from hcp.export.parity import (
        build_reference,
        check_parity,
        failure_message,
        parity_transcripts,
        trained_dtype,
    )
    from hcp.export.quantize import quant_label

    def path_of(kind: str) -> Path:
        return wide if kind == "f16" else stem.with_name(f"{stem.name}.{quant_label(kind)}.gguf")

    if not options.parity_check:
        if quant != "f16":
            made.append(_quantize_step(wide, path_of(quant), quant, options, steps))
        return path_of(quant), {"skipped": True}
    target = options.parity_target
    with steps.timed("parity reference") as detail:
        transcripts, origin = parity_transcripts(model, options.parity_transcripts)
        dtype = trained_dtype(model)
        reference = build_reference(source, wide, transcripts, origin, rubric, config, dtype, options.threads)
        detail.append(f"the F16 GGUF rated {len(transcripts)} {origin} transcripts; the trained model ({dtype}) "
                      "read at their scores")
    candidates = AUTO_ORDER if quant == AUTO else (quant,)
    tried: list[dict[str, Any]] = []
    for kind in candidates:
        final = path_of(kind)
        if kind != "f16":
            made.append(_quantize_step(wide, final, kind, options, steps))
        with steps.timed(f"parity {kind}") as detail:
            # A type that will be exported below the target still has its free ratings compared
            exported_anyway = options.accept_parity_loss and (quant != AUTO or kind == AUTO_ORDER[-1])
            report = check_parity(reference, final, kind, rubric, config, target, options.threads,
                                  free=True if exported_anyway else None)
            detail.append(report.line() + (" — meets the target" if report.passed else f" — below the target "
                                                                                     f"({target})"))
        larger = next(iter(AUTO_ORDER[AUTO_ORDER.index(kind) + 1:]), None)
        if report.passed:
            break
        if quant == AUTO and larger is not None:
            tried.append({"quant": kind, "agreement": report.agreement, "mean_abs_expected": report.mean_abs_expected,
                          "max_kl": report.max_kl})
            if final != wide:
                final.unlink()
                made.remove(final)
            continue
        if not options.accept_parity_loss:
            raise ExportError(failure_message(report, target, larger))
        report.accepted_loss = True
        log.warning("exported below the parity target (--accept-parity-loss): %s", report.line())
        break
    report.tried = tried
    if quant == AUTO:
        why = ", ".join(f"{t['quant']} agreed on {t['agreement']:.1%} (mean |Δ| {t['mean_abs_expected']:.3f})"
                        for t in tried)
        steps.done.append(("auto", 0.0, f"chose {report.quant}: the smallest type meeting the target ({target})"
                           + (f"; {why}" if why else "")))
    return final, report.to_json()


@contextmanager
def _removed_on_error(made: list[Path]) -> Iterator[None]:
    """Remove the files listed in `made` (as the block writes them) when the block raises, then re-raise."""
    try:
        yield
    except BaseException:
        for path in made:
            path.unlink(missing_ok=True)
        raise


def _merge_step(model: Path, out: Path, provenance: dict[str, Any], steps: _Steps) -> Path:
    """Fold the adapter into its base (its preconditions are checked before any tensor is written)."""
    from hcp.export.merge import PROVENANCE_FILE, merge_adapter

    with steps.timed("merge") as detail:
        merged = merge_adapter(model, out / "merged")
        provenance.update(json.loads((merged.output / PROVENANCE_FILE).read_text()))
        detail.append(f"{merged.merged_modules} LoRA modules folded into {merged.base}")
    return merged.output


def _convert_step(source: Path, wide: Path, name: str, quant: str, provenance: dict[str, Any],
                  steps: _Steps) -> Path:
    from hcp.export.convert import convert_to_gguf
    from hcp.export.quantize import quant_label

    meta = {k: v for k, v in provenance.items() if k in ("base_model", "adapter_sha256", "rubric_digest", "rubric")}
    if quant != "auto":  # auto: the chosen type is in general.file_type and the Modelfile's header
        meta["quant_type"] = quant_label(quant)
    with steps.timed("convert") as detail:
        converted = convert_to_gguf(source, wide, outtype="f16", name=name, metadata=meta)
        engine = "hcp's writer" if converted.engine == "hcp" else "llama.cpp's converter"
        detail.append(f"{converted.architecture} with {engine}: {converted.tensors} tensors, "
                      f"{converted.bytes / 1e6:.1f} MB F16")
    return wide


def _quantize_step(wide: Path, final: Path, quant: str, options: ExportOptions, steps: _Steps) -> Path:
    from hcp.export.quantize import quantize_gguf

    with steps.timed(f"quantize {quant}") as detail:
        result = quantize_gguf(wide, final, quant, threads=options.threads)
        detail.append(f"{result.bytes_in / 1e6:.1f} MB -> {result.bytes_out / 1e6:.1f} MB")
    return final


def modelfile_spec(model_dir: Path, gguf: Path, name: str, config: Config, rubric: Rubric,
                   provenance: dict[str, Any]) -> Any:
    from transformers import AutoTokenizer

    from hcp.export.convert import chat_template, special_tokens
    from hcp.export.modelfile import ModelfileSpec, ollama_chat_format

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    specials = special_tokens(model_dir)
    chat = ollama_chat_format(
        chat_template(model_dir), bos=tokenizer.bos_token or "", eos=tokenizer.eos_token or "",
        add_bos=specials["add_bos"], special_tokens=tuple(tokenizer.all_special_tokens),
    )
    header = {
        "Generated by": f"hcp {__version__} on {time.strftime('%Y-%m-%d %H:%M:%S')}",
        "base model": str(provenance.get("base_model", "")),
        "adapter sha256": str(provenance.get("adapter_sha256", "(none: a plain model)")),
        "rubric digest": rubric.digest,
        "quantization": gguf.name.rsplit(".", 2)[-2],
        "register": f"ollama create {name} -f <this file>",
    }
    if "parity" in provenance:
        header["score parity"] = parity_line(provenance["parity"])
    parameters: dict[str, Any] = {
        "num_ctx": config.model.num_ctx, "temperature": config.model.temperature,
        "repeat_penalty": config.model.repeat_penalty, "stop": list(chat.stops),
    }
    license_text = find_license([model_dir, Path(str(provenance.get("base_model", "")))])
    return ModelfileSpec(name, gguf.resolve(), chat.template, rubric.system_prompt, parameters, license_text, header)


def parity_line(parity: dict[str, Any]) -> str:
    """The parity check's figures in one line, for the Modelfile's header."""
    if parity.get("skipped"):
        return "not checked (--no-parity-check)"
    line = (f"most likely score agrees with the trained model's on {parity['agreement']:.1%} of "
            f"{parity['dimension_scores']} scores ({parity['transcripts']} {parity['source']} transcripts), mean "
            f"|delta expected| {parity['mean_abs_expected']:.3f}, max KL {parity['max_kl']:.4f}; {free_line(parity)}")
    return line + ("; BELOW the target, accepted with --accept-parity-loss" if parity.get("accepted_loss") else "")


def smoke_check(gguf: Path, rubric: Rubric, config: Config, options: ExportOptions) -> dict[str, Any]:
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.score import ScoreOptions, score_transcript

    transcript = options.sample_transcript or SMOKE_TRANSCRIPT
    backend = LlamaCppBackend(gguf, num_ctx=config.model.num_ctx, threads=options.threads)
    try:
        result = score_transcript(transcript, backend, rubric, ScoreOptions(
            num_ctx=config.model.num_ctx, temperature=config.model.temperature,
            answer_tokens=config.model.answer_tokens,
            repeat_penalty=config.model.repeat_penalty, raw_output_dir=gguf.parent))
    except HcpError as exc:
        raise ExportError(f"smoke check failed: the exported {gguf.name} did not rate the sample transcript "
                          f"({exc})") from None
    finally:
        backend.close()
    return {"rating": result.rating, "overall": result.overall}


SMOKE_TRANSCRIPT = (
    "RD: Hello, I'm the dietitian. How are you feeling about your diet today?\n"
    "Patient: I'm struggling to cut down on salt.\n"
    "RD: That's common, and it takes time. Let's look at labels together and pick two swaps for this week."
)
