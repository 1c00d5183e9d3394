"""`hcp export-ollama`: adapter (or HF model) -> merged -> GGUF -> quantized -> Modelfile -> registered.

Each step checks its input before it starts, writes its output atomically, and is timed. The exported model
carries the chat template and the rubric prompt it was trained with, so Ollama (and `hcp score` on the GGUF)
shows it exactly the prompt of training.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp import __version__
from hcp.config import Config
from hcp.errors import BackendError, ExportError, HcpError
from hcp.rubric import Rubric

log = logging.getLogger("hcp.export")

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md")


@dataclass
class ExportOptions:
    name: str = "hcp-rater"
    quant: str = "q4_k_m"
    out_dir: Path | None = None  # default: <model>/export
    create: bool = True
    host: str | None = None
    timeout: float | None = 600.0
    modelfiles_dir: Path = Path("modelfiles")
    keep_intermediate: bool = False
    smoke_check: bool = True
    sample_transcript: str | None = None
    threads: int | None = None


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


def _is_adapter(folder: Path) -> bool:
    return (folder / "adapter_config.json").is_file()


def _trained_rubric(model: Path) -> dict[str, Any]:
    path = model / "training_config.json"
    if not path.is_file():
        return {}
    recorded = json.loads(path.read_text()).get("rubric", {})
    return recorded if isinstance(recorded, dict) else {}


def check_rubric_matches(model: Path, rubric: Rubric) -> None:
    """The Modelfile's SYSTEM must be the prompt the model was trained with."""
    recorded = _trained_rubric(model)
    digest = recorded.get("digest")
    if digest and digest != rubric.digest:
        raise ExportError(f"{model} was trained with rubric {digest}, but the config gives rubric {rubric.digest} — "
                          "export with the --config used for training, so the model sees the prompt it learned")


def find_license(folders: list[Path]) -> str | None:
    for folder in folders:
        for name in LICENSE_FILES:
            if (folder / name).is_file():
                return (folder / name).read_text(errors="replace").replace('"""', "'''").rstrip().rstrip('"')
    return None


def export_ollama(model: str | Path, config: Config, options: ExportOptions) -> ExportResult:
    from hcp.convert import convert_to_gguf
    from hcp.merge import merge_adapter
    from hcp.quantize import QUANT_TYPES, quant_label, quantize_gguf

    model = Path(model)
    rubric = Rubric.from_config(config)
    quant = options.quant.lower()
    if quant not in QUANT_TYPES:
        raise ExportError(f"--quant {options.quant}: use one of {', '.join(QUANT_TYPES)}")
    if not model.is_dir():
        raise ExportError(f"{model}: not a folder — give an adapter folder from 'hcp train' or an HF model folder")
    adapter = _is_adapter(model)
    if not adapter and not (model / "config.json").is_file():
        raise ExportError(f"{model}: neither an adapter (adapter_config.json) nor an HF model (config.json)")
    check_rubric_matches(model, rubric)
    out = Path(options.out_dir) if options.out_dir else model / "export"
    out.mkdir(parents=True, exist_ok=True)
    steps: list[tuple[str, float, str]] = []

    def step(label: str, started: float, detail: str) -> None:
        steps.append((label, round(time.perf_counter() - started, 2), detail))
        log.info("%s: %.2f s %s", label, steps[-1][1], detail)

    # 1. merge (adapters only), preconditions checked inside before any tensor is written
    provenance: dict[str, Any] = {"rubric_digest": rubric.digest, "rubric": rubric.system_prompt}
    source = model
    if adapter:
        started = time.perf_counter()
        merged = merge_adapter(model, out / "merged")
        source = merged.output
        provenance.update(json.loads((source / "hcp_provenance.json").read_text()))
        step("merge", started, f"{merged.merged_modules} LoRA modules folded into {merged.base}")
    provenance["base_model"] = str(provenance.get("base", model))
    provenance.pop("base", None)

    # 2. convert
    started = time.perf_counter()
    wide = out / f"{options.name}.F16.gguf"
    meta = {k: v for k, v in provenance.items() if k in ("base_model", "adapter_sha256", "rubric_digest", "rubric")}
    meta["quant_type"] = quant_label(quant)
    converted = convert_to_gguf(source, wide, outtype="f16", name=options.name, metadata=meta)
    step("convert", started, f"{converted.tensors} tensors, {converted.bytes / 1e6:.1f} MB F16")

    # 3. quantize
    final = wide
    if quant != "f16":
        started = time.perf_counter()
        final = out / f"{options.name}.{quant_label(quant)}.gguf"
        result = quantize_gguf(wide, final, quant, threads=options.threads)
        step("quantize", started, f"{result.bytes_in / 1e6:.1f} MB -> {result.bytes_out / 1e6:.1f} MB")
        if not options.keep_intermediate:
            wide.unlink()

    # 4. Modelfile (from the merged folder's tokenizer, before the merged weights are removed)
    started = time.perf_counter()
    spec = modelfile_spec(source, final, options.name, config, rubric, provenance)
    if adapter and not options.keep_intermediate:
        shutil.rmtree(out / "merged", ignore_errors=True)
    modelfile = spec.write(out / "Modelfile")
    copy = spec.write(Path(options.modelfiles_dir) / f"{options.name}.Modelfile")
    step("modelfile", started, f"{modelfile} and {copy}")
    create_command = f"ollama create {options.name} -f {copy}"

    # 5. smoke check: the quantized GGUF, in llama.cpp, rates the sample transcript with a valid rating
    smoke = None
    if options.smoke_check:
        started = time.perf_counter()
        smoke = smoke_check(final, rubric, config, options)
        step("smoke check", started, f"valid rating, overall {smoke['overall']}")

    # 6. register
    registered = False
    if options.create:
        started = time.perf_counter()
        registered = register(spec, options.host, options.timeout)
        step("register", started, f"as {options.name}" if registered else "Ollama not running — run later: "
             + create_command)
    files = {str(p): p.stat().st_size for p in (final, modelfile, copy)}
    return ExportResult(final, modelfile, copy, registered, create_command, steps, files,
                        smoke["rating"] if smoke else None)


def modelfile_spec(model_dir: Path, gguf: Path, name: str, config: Config, rubric: Rubric,
                   provenance: dict[str, Any]) -> Any:
    from hcp.convert import chat_template, special_tokens
    from hcp.modelfile import ModelfileSpec, ollama_chat_format

    from transformers import AutoTokenizer

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
    parameters: dict[str, Any] = {
        "num_ctx": config.model.num_ctx, "temperature": config.model.temperature,
        "repeat_penalty": config.model.repeat_penalty, "stop": list(chat.stops),
    }
    license_text = find_license([model_dir, Path(str(provenance.get("base_model", "")))])
    return ModelfileSpec(name, gguf.resolve(), chat.template, rubric.system_prompt, parameters, license_text, header)


def smoke_check(gguf: Path, rubric: Rubric, config: Config, options: ExportOptions) -> dict[str, Any]:
    from hcp.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring import ScoreOptions, score_transcript

    transcript = options.sample_transcript or SMOKE_TRANSCRIPT
    backend = LlamaCppBackend(gguf, num_ctx=config.model.num_ctx, threads=options.threads)
    try:
        result = score_transcript(transcript, backend, rubric, ScoreOptions(
            num_ctx=config.model.num_ctx, temperature=config.model.temperature,
            repeat_penalty=config.model.repeat_penalty, raw_output_dir=gguf.parent))
    except HcpError as exc:
        raise ExportError(f"smoke check failed: the exported {gguf.name} did not rate the sample transcript ({exc})") from None
    finally:
        backend.close()
    return {"rating": result.rating, "overall": result.overall}


def register(spec: Any, host: str | None, timeout: float | None) -> bool:
    """Upload the GGUF as a blob and create the model; False (not an error) when no daemon answers."""
    import httpx
    import ollama

    from hcp.backends.ollama import resolve_host

    client = ollama.Client(host=resolve_host(host), timeout=timeout)
    try:
        digest = client.create_blob(spec.gguf)
        client.create(**spec.create_request(digest), stream=False)
    except (ConnectionError, httpx.ConnectError):
        return False
    except httpx.TimeoutException:
        raise BackendError(f"Ollama did not finish creating {spec.name} within {timeout} s — the GGUF is written; "
                           f"register it later with 'ollama create {spec.name} -f <Modelfile>'") from None
    except httpx.TransportError as exc:
        raise BackendError(f"the connection to Ollama broke while creating {spec.name} ({exc.__class__.__name__})"
                           " — run the export again, or 'ollama create' by hand") from None
    except ollama.ResponseError as exc:
        raise BackendError(f"Ollama refused to create {spec.name} ({exc.status_code}): {exc.error}") from None
    return True


SMOKE_TRANSCRIPT = (
    "RD: Hello, I'm the dietitian. How are you feeling about your diet today?\n"
    "Patient: I'm struggling to cut down on salt.\n"
    "RD: That's common, and it takes time. Let's look at labels together and pick two swaps for this week."
)
