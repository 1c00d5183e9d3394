"""The `hcp` command: thin Click commands over the library.

Each command parses its options, builds one config object, calls one library function and prints the result.
Nothing heavy (torch, transformers, llama.cpp, gguf) is imported at module level, so `hcp --help` starts fast.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from hcp import __version__
from hcp.errors import HcpError
from hcp.scoring.backends import max_seed

SEED_MAX = max_seed()

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="A YAML file overriding keys of configs/config.yaml.",
)


REGISTRY_OPTION = click.option(
    "--registry", "registry_path", type=click.Path(path_type=Path), default=None,
    help="The registry folder (default: $HCP_REGISTRY, else $XDG_DATA_HOME/hcp/registry, else "
         "~/.local/share/hcp/registry).")


class HcpGroup(click.Group):
    """Turns an HcpError into a one-line message and exit code 1, with no traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except HcpError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(130)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (Click's test runner swaps it)."""

    @property  # type: ignore[override]
    def stream(self):  # noqa: ANN201
        return sys.stderr

    @stream.setter
    def stream(self, _value) -> None:  # noqa: ANN001
        pass


def setup_logging(verbose: bool) -> None:
    """hcp's log lines go to stderr; -v shows progress. No log line ever carries transcript text."""
    logger = logging.getLogger("hcp")
    for handler in [h for h in logger.handlers if isinstance(h, _StderrHandler)]:
        logger.removeHandler(handler)
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("hcp: %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if verbose else logging.WARNING)


@click.group(cls=HcpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hcp")
@click.option("-v", "--verbose", is_flag=True, help="Log progress (never transcript text).")
def cli(verbose: bool) -> None:
    """Rate how a healthcare provider talks with a patient, offline.

    \b
      hcp score --file visit.txt                 rate one transcript
      hcp data sample --out data/train.jsonl     make labelled sample data
      hcp data validate my.jsonl                 check your own annotations
      hcp rubric                                 show the prompt and schema the model gets
      hcp serve                                  the API and a review page at http://127.0.0.1:8000/
    """
    setup_logging(verbose)


def load(config_path: Path | None):  # noqa: ANN201 - returns (Config, Rubric)
    from hcp.config import load_config
    from hcp.rubric import Rubric

    config = load_config(config_path)
    return config, Rubric.from_config(config)


# --- rubric -----------------------------------------------------------------------------------------------


@cli.command()
@CONFIG_OPTION
@click.option("--schema", is_flag=True, help="Print the rating's JSON schema instead of the system prompt.")
def rubric(config_path: Path | None, schema: bool) -> None:
    """Show the system prompt (or the JSON schema) derived from the rubric.

    Example: hcp rubric --config my_rubric.yaml
    """
    _, rub = load(config_path)
    click.echo(json.dumps(rub.json_schema, indent=2) if schema else rub.system_prompt)


# --- data -------------------------------------------------------------------------------------------------


@cli.group()
def data() -> None:
    """Prepare training data: make samples, validate, split; agreement and consensus of several annotators."""


@data.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--max-problems", default=50, show_default=True, help="How many problems to list.")
def data_validate(file: Path, config_path: Path | None, as_json: bool, max_problems: int) -> None:
    """Check a JSONL or CSV file of rated transcripts; exit 1 if anything is invalid.

    Example: hcp data validate data/sample_training_data.jsonl
    """
    from hcp.data.dataset import load_dataset, summarize
    from hcp.terminal import print_data_summary

    _, rub = load(config_path)
    dataset = load_dataset(file, rub)
    summary = summarize(dataset, rub)
    for problem in dataset.problems[:max_problems]:
        click.echo(f"error: {problem}", err=True)
    if len(dataset.problems) > max_problems:
        click.echo(f"... and {len(dataset.problems) - max_problems} more problems", err=True)
    for warning in dataset.warnings[:max_problems]:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(summary, indent=2))
    else:
        print_data_summary(summary)
    if not dataset.ok:
        raise click.ClickException(f"{file}: {summary['problems']} problem(s) in {summary['invalid_records']} "
                                   f"record(s); fix them and validate again")
    if not dataset.examples:
        raise click.ClickException(f"{file}: no records found — the file is empty")


@data.command("sample")
@click.option("--n", "count", default=200, show_default=True, type=click.IntRange(1, 100_000),
              help="How many conversations.")
@click.option("--seed", default=42, show_default=True, help="Same seed, same data.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("data/sample_training_data.jsonl"), show_default=True,
              help="Where to write: .jsonl, or .csv (lists as JSON arrays).")
@CONFIG_OPTION
def data_sample(count: int, seed: int, out: Path, config_path: Path | None) -> None:
    """Write labelled sample conversations across topics and the whole score range.

    Example: hcp data sample --n 200 --out data/train.jsonl
    """
    from hcp.data.dataset import detect_format, write_records
    from hcp.data.sample import SAMPLE_DIMENSIONS, generate_samples

    _, rub = load(config_path)
    detect_format(out)  # an unknown suffix is refused before anything is made
    if set(rub.names) != set(SAMPLE_DIMENSIONS):
        raise click.ClickException(
            f"sample data is labelled on {', '.join(SAMPLE_DIMENSIONS)}; your rubric has {', '.join(rub.names)} — "
            "use the default rubric for samples, or annotate your own data")
    write_records(out, generate_samples(count, seed))
    click.echo(f"wrote {count} labelled conversations to {out}")


@data.command("split")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--val-fraction", type=float, default=None,
              help="Share for validation, which picks the best checkpoint (default: training.val_fraction, 0.2).")
@click.option("--val", "old_val_fraction", type=float, default=None, hidden=True)  # the name before --val-fraction
@click.option("--test-fraction", "--test", "test_fraction", type=float, default=None,
              help="Share set aside as a test set, for figures from examples that neither trained nor chose the "
                   "model (default: none).")
@click.option("--seed", default=42, show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the files (default: beside FILE).")
@CONFIG_OPTION
def data_split(file: Path, val_fraction: float | None, old_val_fraction: float | None, test_fraction: float | None,
               seed: int, out_dir: Path | None, config_path: Path | None) -> None:
    """Split FILE into FILE.train.jsonl and FILE.val.jsonl (and FILE.test.jsonl with --test-fraction), stratified
    by overall score. The records are written as read.

    Example: hcp data split data/sample_training_data.jsonl --val-fraction 0.1 --test-fraction 0.2 --seed 42
    """
    from hcp.data.dataset import load_dataset, require_valid, split_examples, split_three_ways, write_jsonl

    if val_fraction is not None and old_val_fraction is not None:
        raise click.UsageError("give --val-fraction once (--val is its old name)")
    config, rub = load(config_path)
    share = next((f for f in (val_fraction, old_val_fraction) if f is not None), config.training.val_fraction)
    examples = require_valid(load_dataset(file, rub))
    if test_fraction is None:
        parts = dict(zip(("train", "val"), split_examples(examples, rub, share, seed), strict=True))
    else:
        parts = dict(zip(("train", "val", "test"), split_three_ways(examples, rub, share, test_fraction, seed),
                         strict=True))
    folder = out_dir or file.parent
    stem = file.name.rsplit(".", 1)[0]
    for part, label in zip(parts, ("training", "validation", "test"), strict=False):
        path = write_jsonl(folder / f"{stem}.{part}.jsonl", (e.as_read() for e in parts[part]))
        click.echo(f"{len(parts[part])} {label} examples -> {path}")


ANNOTATOR_FILES = click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))


@data.command("agreement")
@ANNOTATOR_FILES
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Also write agreement.md, agreement.html (with plots) and agreement.json to this folder.")
@click.option("--resamples", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples of the transcripts for the 95% intervals.")
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=42, show_default=True,
              help="Seed of the bootstrap: same seed, same intervals.")
@CONFIG_OPTION
def data_agreement(files: tuple[Path, ...], report_dir: Path | None, resamples: int, seed: int,
                   config_path: Path | None) -> None:
    """How far annotators agree: Krippendorff's alpha, pairwise weighted kappa, exact and within-one agreement,
    each annotator's offset from the others, and the transcripts to adjudicate (two scores 2+ points apart).

    FILES are in the training format, one per annotator (named by the file name), matched by 'id', else by the
    transcript's text; or one file whose records name their 'annotator'. Transcripts rated by one annotator are
    counted and left out. Transcripts are named by id, or by a digest of their text: never quoted.

    \b
    Examples:
      hcp data agreement alice.jsonl bob.jsonl carol.jsonl --report reports/agreement
      hcp data agreement all_annotators.jsonl
    """
    from hcp.raters.agreement import AgreementOptions, run_agreement
    from hcp.terminal import print_agreement

    _, rub = load(config_path)
    result = run_agreement(AgreementOptions(files, report_dir, resamples, seed), rub)
    print_agreement(result.metrics)
    if result.files:
        click.echo(f"report: {report_dir / 'agreement.html'}")


@data.command("consensus")
@ANNOTATOR_FILES
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Where to write the consensus labels: .jsonl, or .csv (lists as JSON arrays).")
@click.option("--keep-disputed", is_flag=True,
              help="Write the transcripts whose annotators are 2+ points apart on a dimension too (their median).")
@CONFIG_OPTION
def data_consensus(files: tuple[Path, ...], out: Path, keep_disputed: bool, config_path: Path | None) -> None:
    """One training record per transcript that two or more annotators rated: each score the median of theirs
    (of an even count whose two middle scores differ, the lower: round half down); reasoning, strengths and areas
    from the annotator closest to that consensus; per dimension the quotes of the closest annotator who gave that
    score, kept only where they verify against the transcript. Transcripts with a dimension 2+ points apart are
    left out unless --keep-disputed. The file passes 'hcp data validate' and trains.

    FILES as for 'hcp data agreement'.

    \b
    Example:
      hcp data consensus alice.jsonl bob.jsonl carol.jsonl --out data/consensus.jsonl
    """
    from hcp.raters.consensus import ConsensusOptions, run_consensus

    _, rub = load(config_path)
    result = run_consensus(ConsensusOptions(files, out, keep_disputed), rub)
    disputed = (f"{result.disputed} disputed, kept (--keep-disputed)" if result.kept_disputed
                else f"{result.disputed} disputed, left out (adjudicate them, or --keep-disputed)")
    unsupported = f", {result.unsupported} without a verified quote for a dimension" if result.unsupported else ""
    click.echo(f"wrote {result.written} consensus records to {result.out}; {disputed}; {result.single} rated by one "
               f"annotator, left out{unsupported}")


# --- score ------------------------------------------------------------------------------------------------


def read_transcript(text: str | None, file: Path | None) -> str:
    """The transcript from the argument, a file, or standard input ('-')."""
    from hcp.errors import DataError
    from hcp.files import decode_text, read_text_file

    if (text is None) == (file is None):
        raise DataError("give the transcript as TEXT, or --file PATH, or '-' to read standard input")
    if file is not None:
        text = read_text_file(file, "use 'hcp batch' for a folder of transcripts")
        if not text.strip():
            raise DataError(f"{file}: the file is empty — it should hold the conversation ('RD: ... Patient: ...')")
        return text
    if text == "-":
        raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else sys.stdin.read().encode()
        return decode_text(raw, "standard input")
    return text


ALLOW_REMOTE_OPTION = click.option(
    "--allow-remote", is_flag=True,
    help="Allow an Ollama host or OpenAI-compatible server off this machine: transcripts, or the exported model, "
         "go there (config: model.allow_remote).")


@dataclass(frozen=True)
class RaterChoice:
    """The backend options shared by score, batch and evaluate, as one object."""

    backend: str
    model: str | None
    host: str | None
    base_url: str | None
    api_key: str | None
    tokenizer: str | None
    allow_remote: bool
    timeout: float | None
    threads: int | None
    num_ctx: int | None
    seed: int
    config_path: Path | None
    strict_evidence: bool = False


RATER_OPTIONS = [
    click.option("--backend", type=click.Choice(["auto", "ollama", "llama-cpp", "openai"]), default="auto",
                 show_default=True, help="auto: Ollama if it answers and has the model, else embedded; "
                 "openai: an OpenAI-compatible server (vLLM, llama-server) at --base-url."),
    click.option("--model", default=None,
                 help="An Ollama model name (default hcp-rater), a path to a .gguf file, or the model an "
                      "OpenAI-compatible server serves (default: its only one)."),
    click.option("--host", default=None, help="Ollama address (default: $OLLAMA_HOST or 127.0.0.1:11434)."),
    click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1."),
    click.option("--api-key", default=None, envvar="HCP_OPENAI_API_KEY", show_envvar=True,
                 help="Bearer token for the OpenAI-compatible server."),
    click.option("--tokenizer", default=None, type=click.Path(file_okay=False),
                 help="The served model's HF folder, for exact token counts where the server cannot count."),
    ALLOW_REMOTE_OPTION,
    click.option("--timeout", type=click.FloatRange(min=1), default=None,
                 help="Seconds to wait for Ollama or the server."),
    click.option("--threads", type=click.IntRange(min=1), default=None,
                 help="llama.cpp threads for the embedded backend (default: one per core)."),
    click.option("--num-ctx", type=click.IntRange(min=512), default=None,
                 help="Context window in tokens (default: model.num_ctx of the config)."),
    click.option("--seed", type=click.IntRange(0, SEED_MAX), default=42, show_default=True,
                 help=f"Sampling seed, 0 to {SEED_MAX} (each retry takes the next seed)."),
    click.option("--strict-evidence", is_flag=True,
                 help="A rating that quotes words not in the transcript is invalid: retried with a new seed, then "
                      "reported (config: scoring.strict_evidence)."),
    CONFIG_OPTION,
]


def backend_options(func):  # noqa: ANN001, ANN201 - a decorator shared by score, batch and evaluate
    """Adds the backend options and hands them to the command as one `rater: RaterChoice`."""
    names = [field.name for field in fields(RaterChoice)]

    @functools.wraps(func)
    def command(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        rater = RaterChoice(**{name: kwargs.pop(name) for name in names})
        return func(*args, rater=rater, **kwargs)

    for option in reversed(RATER_OPTIONS):
        command = option(command)
    return command


def open_scorer(rater: RaterChoice, model: str | None = None, backend: Any = None):  # noqa: ANN201
    """(backend, rubric, ScoreOptions) from the shared options; `model` overrides --model (a baseline); a
    `backend` opened already is taken as it is."""
    from hcp.scoring.backends import open_backend
    from hcp.scoring.score import ScoreOptions

    config, rub = load(rater.config_path)
    ctx = rater.num_ctx or config.model.num_ctx
    model = resolve_model(rater, model or rater.model, allow_remote=rater.allow_remote or config.model.allow_remote)
    engine = backend or open_backend(
        rater.backend, model, host=rater.host, timeout=rater.timeout, threads=rater.threads,
        num_ctx=ctx, base_url=rater.base_url, api_key=rater.api_key, tokenizer=rater.tokenizer,
        allow_remote=rater.allow_remote or config.model.allow_remote)
    options = ScoreOptions(seed=rater.seed, temperature=config.model.temperature, num_ctx=ctx,
                           repeat_penalty=config.model.repeat_penalty, answer_tokens=config.model.answer_tokens,
                           strict_evidence=rater.strict_evidence or config.scoring.strict_evidence)
    return engine, rub, options


def resolve_model(rater: RaterChoice, model: str | None, allow_remote: bool) -> str | None:
    """A registered name (NAME: its promoted version; NAME:N) as the GGUF the registry holds, for the backends
    that run one: llama-cpp always, auto when no Ollama daemon has the name. Any other model is left as given."""
    from hcp.scoring.backends import looks_like_gguf_path

    if model is None or rater.backend not in ("auto", "llama-cpp") or looks_like_gguf_path(model):
        return model
    from hcp.registry import open_registry

    version = open_registry(None).resolve(model)
    if version is None:
        return model
    if rater.backend == "auto":
        from hcp.scoring.backends.ollama import (
            INSTEAD_OF_REMOTE,
            SENDS_TRANSCRIPTS,
            OllamaBackend,
            check_remote,
            host_source,
            resolve_host,
        )

        url = resolve_host(rater.host)
        check_remote(url, allow_remote, source=host_source(rater.host), sends=SENDS_TRANSCRIPTS,
                     instead=INSTEAD_OF_REMOTE)
        if OllamaBackend.probe(url, model, timeout=2.0):
            return model
    logging.getLogger("hcp").info("%s: the registry's %s, embedded (%s)", model, version.label, version.gguf)
    return str(version.gguf)


@cli.command()
@click.argument("text", required=False)
@click.option("--file", "file", type=click.Path(path_type=Path), default=None, help="Read the transcript from a file.")
@backend_options
@click.option("--json", "as_json", is_flag=True, help="Print only the JSON result.")
@click.option("--format", "fmt", type=click.Choice(["table", "json", "both"]), default="table", show_default=True,
              help="Table, JSON, or the table followed by the JSON.")
def score(text: str | None, file: Path | None, rater: RaterChoice, as_json: bool, fmt: str) -> None:
    """Rate one transcript on the rubric.

    \b
    Examples:
      hcp score "RD: Hello, how are you feeling today? Patient: I'm struggling with my diet."
      hcp score --file visit.txt --json
      cat visit.txt | hcp score - --backend llama-cpp --model models/rd/hcp-rater.Q4_K_M.gguf
    """
    from hcp.scoring.score import score_transcript
    from hcp.terminal import print_rating

    transcript = read_transcript(text, file)
    engine, rub, options = open_scorer(rater)
    try:
        result = score_transcript(transcript, engine, rub, options)
    finally:
        engine.close()
    fmt = "json" if as_json else fmt
    if fmt in ("table", "both"):
        print_rating(result, rub)
    if fmt in ("json", "both"):
        click.echo(json.dumps(result.to_json(), indent=2, ensure_ascii=False))


# --- merge / export ---------------------------------------------------------------------------------------


@cli.command()
@click.argument("adapter", type=click.Path(path_type=Path))
@click.option("--output", "-o", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Folder for the merged HF model (safetensors).")
@click.option("--base", default=None, help="Base model (HF folder, .gguf or hub id); default: what training used.")
@click.option("--dtype", type=click.Choice(["f16", "bf16", "f32"]), default=None,
              help="Weight type of the merged model (default: the base's).")
def merge(adapter: Path, output: Path, base: str | None, dtype: str | None) -> None:
    """Fold a LoRA adapter into its base model, tensor by tensor (peak memory: about one tensor).

    Example: hcp merge models/finetuned_rd_model --output models/rd-merged
    """
    from hcp.export.merge import merge_adapter

    result = merge_adapter(adapter, output, base=base, dtype=dtype)
    click.echo(f"merged {result.merged_modules} LoRA modules into {result.base}: {result.tensors} tensors, "
               f"{result.bytes_written / 1e6:.1f} MB ({result.dtype}) in {result.seconds:.1f} s -> {result.output}")


@cli.command("export-ollama")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--name", default="hcp-rater", show_default=True, help="Name of the model in Ollama.")
@click.option("--quant", type=click.Choice(["q4_k_m", "q4_k_s", "q5_k_m", "q8_0", "f16", "auto"],
                                          case_sensitive=False),
              default="q4_k_m", show_default=True,
              help="Quantization of the GGUF; auto: the smallest type whose scores meet the parity target.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the GGUF and Modelfile (default: MODEL/export).")
@click.option("--no-create", is_flag=True, help="Write the files only; do not register with Ollama.")
@click.option("--host", default=None, help="Ollama address (default: $OLLAMA_HOST or 127.0.0.1:11434).")
@ALLOW_REMOTE_OPTION
@click.option("--threads", type=click.IntRange(min=1), default=None, help="Threads for quantization and the check.")
@click.option("--keep-intermediate", is_flag=True, help="Keep the merged model and the F16 GGUF.")
@click.option("--parity-transcripts", type=click.IntRange(min=1), default=20, show_default=True,
              help="Transcripts the quantized model's scores are checked on against the trained model's (the "
                   "training run's validation transcripts, else hcp's samples).")
@click.option("--no-parity-check", is_flag=True, help="Skip the score parity check (recorded as skipped).")
@click.option("--accept-parity-loss", is_flag=True,
              help="Export a quantization below the parity target (98%% of most likely scores agree, mean "
                   "|Δ expected| <= 0.10) anyway; the Modelfile says so.")
@REGISTRY_OPTION
@CONFIG_OPTION
def export_ollama_command(model: Path, name: str, quant: str, out_dir: Path | None, no_create: bool,
                          host: str | None, allow_remote: bool, threads: int | None, keep_intermediate: bool,
                          parity_transcripts: int, no_parity_check: bool, accept_parity_loss: bool,
                          registry_path: Path | None, config_path: Path | None) -> None:
    """Merge, convert to GGUF, quantize, write a Modelfile with the rubric, register with Ollama, and record
    the next version of NAME in the registry (on Ollama: NAME:N; the first version is promoted, so NAME runs it).

    MODEL is the adapter folder written by 'hcp train', or an HF model folder. After quantizing, the GGUF's
    scores are checked against the trained model's; a quantization that moves them past the target fails the
    export, naming a larger type.

    \b
    Example:
      hcp export-ollama models/finetuned_rd_model --name hcp-rater
      hcp export-ollama models/finetuned_rd_model --quant auto
      ollama run hcp-rater
    """
    from dataclasses import replace

    from hcp.export.pipeline import ExportOptions, export_ollama
    from hcp.registry import open_registry
    from hcp.registry.lifecycle import Daemon, register_version

    config, _ = load(config_path)
    options = ExportOptions(name=name, quant=quant, out_dir=out_dir, create=not no_create, host=host,
                            allow_remote=allow_remote or config.model.allow_remote, threads=threads,
                            keep_intermediate=keep_intermediate, parity_check=not no_parity_check,
                            parity_transcripts=parity_transcripts, accept_parity_loss=accept_parity_loss)
    registry = open_registry(registry_path)
    number = registry.next_number(check_registry_name(name))  # before any work: a damaged registry stops here
    result = export_ollama(model, config, replace(options, daemon_name=f"{name}:{number}"))
    for label, seconds, detail in result.steps:
        click.echo(f"{label:12s} {seconds:7.2f} s  {detail}")
    for path, size in result.files.items():
        click.echo(f"  {path}  ({size / 1e6:.1f} MB)")
    change = register_version(registry, name, result.gguf, result.modelfile, source=model,
                              parity=result.parity, number=number,
                              daemon_model=f"{name}:{number}" if result.registered else None,
                              daemon=Daemon(host, options.timeout, options.allow_remote))
    label = change.version.label
    if result.registered:
        click.echo(f"registered as {label}: try 'hcp score --model {label} --file visit.txt'")
    else:
        click.echo(f"not registered; when Ollama runs: {result.create_command}")
    if change.promoted:
        click.echo(f"registry: {label} is promoted (the first version of {name}); {change.daemon}")
    else:
        click.echo(f"registry: {label} is a candidate; {name} runs {change.previous.label if change.previous else '-'}"
                   f" until 'hcp models promote {label} --data labelled.jsonl' finds it not worse")


def check_registry_name(name: str) -> str:
    """The registry numbers the versions (NAME:1, NAME:2 ...): an export's name carries no tag of its own."""
    from hcp.export.pipeline import check_model_name

    check_model_name(name)
    if ":" in name:
        raise click.BadParameter(f"{name!r} has a tag — the registry tags the versions itself ({name.split(':')[0]}:1, "
                                 f"{name.split(':')[0]}:2 ...): give the name alone", param_hint="'--name'")
    return name


# --- models: the registry ---------------------------------------------------------------------------------


@cli.group()
def models() -> None:
    """The registry of exported versions: list them, promote one through the gate, roll back."""


@models.command("list")
@click.argument("name", required=False)
@REGISTRY_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the versions as JSON.")
def models_list(name: str | None, registry_path: Path | None, as_json: bool) -> None:
    """The versions of NAME (or of every name), newest first: promoted or candidate, metrics and parity.

    \b
    Examples:
      hcp models list
      hcp models list hcp-rater --json
    """
    from hcp.registry import open_registry
    from hcp.registry.listing import list_versions
    from hcp.terminal import print_versions

    rows = list_versions(open_registry(registry_path), name)
    if as_json:
        click.echo(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        print_versions(rows)


@models.command("promote")
@click.argument("spec", metavar="NAME:N")
@click.option("--data", "data_path", type=click.Path(path_type=Path), default=None,
              help="Labelled transcripts (JSONL or CSV) both versions rate; the gate compares them with the labels.")
@click.option("--margin", type=click.FloatRange(0, 1, max_open=True), default=0.05, show_default=True,
              help="Promote when the 95% interval of each difference (overall QWK, each dimension's within-one "
                   "agreement) lies above -MARGIN.")
@click.option("--force", is_flag=True, help="Promote even if the gate refuses (needs --reason).")
@click.option("--reason", default=None, help="Why the gate is overruled; kept in the history.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for promotion.md, .html and .json (default: the registry's promotions/N).")
@click.option("--resamples", type=click.IntRange(100, 100_000), default=1000, show_default=True,
              help="Bootstrap resamples of the transcripts for the intervals.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="llama.cpp threads for rating (default: one per core).")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Transcripts decoded together in one llama.cpp context.")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=42, show_default=True,
              help="Sampling seed of the ratings and seed of the bootstrap.")
@click.option("--host", default=None, help="Ollama address for the copy to NAME (default: where NAME:N was created).")
@ALLOW_REMOTE_OPTION
@REGISTRY_OPTION
@CONFIG_OPTION
def models_promote(spec: str, data_path: Path | None, margin: float, force: bool, reason: str | None,
                   report_dir: Path | None, resamples: int, threads: int | None, parallel: int, seed: int,
                   host: str | None, allow_remote: bool, registry_path: Path | None, config_path: Path | None) -> None:
    """Promote NAME:N when it is not worse than the promoted version on labelled transcripts.

    Both versions rate the set embedded (cached: a rerun rates nothing twice); NAME:N is promoted when the paired
    bootstrap interval of the difference in overall QWK, and in each dimension's within-one agreement, lies above
    -MARGIN. A report is written either way; on Ollama, NAME becomes a copy of NAME:N. Exit 1 when refused.

    \b
    Examples:
      hcp models promote hcp-rater:3 --data data/test.jsonl
      hcp models promote hcp-rater:3 --force --reason "the labelled set predates the new rubric"
    """
    from hcp.registry import open_registry
    from hcp.registry.lifecycle import Daemon, PromoteOptions, promote

    options = PromoteOptions(data=data_path, report=report_dir, margin=margin, force=force, reason=reason,
                             resamples=resamples, seed=seed, parallel=parallel)
    registry = open_registry(registry_path)
    rater = RaterChoice(backend="llama-cpp", model=None, host=None, base_url=None, api_key=None, tokenizer=None,
                        allow_remote=False, timeout=None, threads=threads, num_ctx=None, seed=seed,
                        config_path=config_path)
    config, rub = load(config_path)

    def open_rater(gguf: str | None):  # noqa: ANN202 - (Backend, ScoreOptions) for a version's GGUF
        engine, _, score_options = open_scorer(rater, gguf)
        return engine, score_options

    change = promote(registry, spec, options, rub, open_rater,
                     Daemon(host, allow_remote=allow_remote or config.model.allow_remote))
    def signed(value: float | None) -> str:
        return "—" if value is None else f"{value:+.3f}"

    for check in (change.decision or {}).get("checks", []):
        click.echo(f"{check['score']:16s} {check['metric']:10s} {signed(check['difference'])} "
                   f"[{signed(check['ci_low'])}, {signed(check['ci_high'])}]  {'pass' if check['passes'] else 'FAIL'}")
    if change.report:
        click.echo(f"report: {change.report[1]}")
    if not change.promoted:
        raise click.ClickException(f"{change.version.label} is not promoted: {change.event['reason']} — the "
                                   "history records the refusal; --force --reason TEXT promotes it anyway")
    how = "forced" if change.event["action"] == "force" else "promoted"
    click.echo(f"{how}: {change.version.label} is now {change.version.name}; {change.daemon}")


@models.command("rollback")
@click.argument("name")
@click.option("--reason", default=None, help="Why; kept in the history.")
@click.option("--host", default=None, help="Ollama address for the copy to NAME (default: where it was created).")
@ALLOW_REMOTE_OPTION
@REGISTRY_OPTION
def models_rollback(name: str, reason: str | None, host: str | None, allow_remote: bool,
                    registry_path: Path | None) -> None:
    """Make the version promoted before the current one of NAME current again (on Ollama: one copy to NAME).

    The history keeps every step, so a second rollback returns to where the first started.

    Example: hcp models rollback hcp-rater --reason "more reviews flagged since Monday"
    """
    from hcp.registry import open_registry
    from hcp.registry.lifecycle import Daemon, rollback

    change = rollback(open_registry(registry_path), name, reason, Daemon(host, allow_remote=allow_remote))
    click.echo(f"rolled back: {name} is {change.version.label} again (was {change.previous.label}); "
               f"{change.daemon}")


# --- batch and evaluate -----------------------------------------------------------------------------------

EXIT_SOME_FAILED = 3  # hcp batch finished, but the results file holds failures for some of the input's ids


@cli.command()
@click.argument("input_path", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="Results file (JSONL), one line per transcript, appended as each is rated; a rerun resumes it.")
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), default=None,
              help="csv: also write the results as CSV at the end, beside the JSONL (default: from --out's suffix).")
@click.option("--retry-failed", is_flag=True, help="Rate again the transcripts that failed in an earlier run.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Requests at once to Ollama (match OLLAMA_NUM_PARALLEL) or an OpenAI-compatible server; "
                   "embedded: N transcripts decoded together in one llama.cpp context, faster, but a rating may "
                   "differ from --parallel 1's (keep 1 where a fixed seed must give a fixed rating).")
@backend_options
@click.pass_context
def batch(ctx: click.Context, input_path: Path, out: Path, fmt: str | None, retry_failed: bool, parallel: int,
          rater: RaterChoice) -> None:
    """Rate many transcripts, resumably: one JSON line per transcript in OUT.

    INPUT is a JSONL or CSV file with a 'transcript' field ('id' is used when present, else an id made from the
    text), or a folder of .txt files (id: the file's path in the folder). Stop it any time and run the same
    command again: transcripts already in OUT are skipped. Exit status: 0 all rated; 3 some failed (reasons in
    OUT; --retry-failed rates them again); 1 an error stopped the batch.

    \b
    Examples:
      hcp batch visits.csv --out ratings.jsonl
      hcp batch transcripts/ --out ratings.csv --backend ollama --parallel 4
      hcp batch visits.csv --out ratings.jsonl --retry-failed
    """
    from dataclasses import replace

    from hcp.batch.inputs import read_inputs
    from hcp.batch.results import output_paths
    from hcp.batch.run import BatchOptions, run_batch
    from hcp.terminal import print_batch_summary

    results, csv_path = output_paths(out, fmt, input_path)
    inputs = read_inputs(input_path)
    for repeat in inputs.repeats:
        click.echo(f"warning: {repeat}", err=True)
    engine, rub, options = open_scorer(rater)
    try:
        summary = run_batch(inputs, engine, rub, replace(options, raw_output_dir=results.parent),
                            BatchOptions(results, csv_path, retry_failed=retry_failed, parallel=parallel))
    finally:
        engine.close()
    print_batch_summary(summary, rub)
    if summary.failed_ids:
        click.echo(f"{len(summary.failed_ids)} transcript(s) failed — reasons in {results}; run the same command "
                   "with --retry-failed to rate them again", err=True)
        ctx.exit(EXIT_SOME_FAILED)


@cli.command()
@click.option("--data", "data_paths", type=click.Path(path_type=Path), required=True, multiple=True,
              help="Labelled transcripts (JSONL or CSV) with a human score for each dimension. Repeat it, one file "
                   "per annotator (or give one file whose records name their 'annotator'): the model is measured "
                   "against their consensus, and beside each annotator and the annotators' agreement.")
@click.option("--predictions", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Results of 'hcp batch' to evaluate instead of scoring; repeat it, one file per run.")
@click.option("--runs", type=click.IntRange(1, 20), default=1, show_default=True,
              help="Score K times (seeds SEED..SEED+K-1); reports run-to-run Krippendorff's alpha.")
@click.option("--baseline", default=None,
              help="A second model (Ollama name or .gguf) scored the same way, compared with bootstrap intervals.")
@click.option("--report", "report_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("evaluation"), show_default=True,
              help="Folder for metrics.json, report.md, report.html, the plots and the predictions.")
@click.option("--temperature", type=click.FloatRange(0, 2), default=None,
              help="Sampling temperature (default: the config's); at 0, runs differ only on retries.")
@click.option("--retry-failed", is_flag=True, help="Rate again the transcripts that failed in an earlier run.")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Requests at once to Ollama or an OpenAI-compatible server; embedded: N transcripts decoded "
                   "together (a rating may differ from --parallel 1's).")
@click.option("--target-agreement", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=None,
              help="Find the lowest confidence threshold at or above which ratings agree with the humans within "
                   "one point on every dimension at least this often (e.g. 0.9), with probability 1 - --risk.")
@click.option("--risk", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.1, show_default=True,
              help="The chance allowed that the threshold found does not give --target-agreement.")
@click.option("--write-config", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a copy of the config (--config, else the default) with that threshold as "
                   "scoring.confidence_threshold, so needs_review means 'below the guaranteed threshold'.")
@backend_options
def evaluate(data_paths: tuple[Path, ...], predictions: tuple[Path, ...], runs: int, baseline: str | None,
             report_dir: Path, temperature: float | None, retry_failed: bool, parallel: int,
             target_agreement: float | None, risk: float, write_config: Path | None, rater: RaterChoice) -> None:
    """Compare the model's ratings with human raters: agreement, correlation, kappa, confusion matrices.

    Scores the labelled set (resumable, like 'hcp batch') or reads --predictions, then writes metrics.json,
    report.md and report.html with plots to the report folder. With several annotators' files, the model beside
    the annotators' agreement with each other; with --target-agreement, a confidence threshold with a guarantee
    (exit 1 with --write-config when none holds; the report says why).

    \b
    Examples:
      hcp evaluate --data data/sample_training_data.val.jsonl --report reports/val
      hcp evaluate --data val.jsonl --runs 3 --temperature 0.7
      hcp evaluate --data val.jsonl --model hcp-rater --baseline mistral:7b-instruct
      hcp evaluate --data val.jsonl --predictions ratings.jsonl
      hcp evaluate --data alice.jsonl --data bob.jsonl --predictions ratings.jsonl
      hcp evaluate --data val.jsonl --target-agreement 0.9 --risk 0.1 --write-config configs/guaranteed.yaml
    """
    from hcp.evaluate.run import EvaluateOptions
    from hcp.evaluate.run import evaluate as run_evaluation
    from hcp.raters.ceiling import names_annotators, panel_labels
    from hcp.terminal import print_evaluation

    if rater.seed > max_seed(runs - 1):  # run K rates with seed+K-1, and its retries with the seeds after that
        raise click.BadParameter(f"with --runs {runs} it must be 0 to {max_seed(runs - 1)}: the runs and their "
                                 "retries take the seeds after it", param_hint="'--seed'")
    options = EvaluateOptions(data=data_paths, report=report_dir, predictions=predictions, runs=runs,
                              model=rater.model, baseline=baseline, temperature=temperature, parallel=parallel,
                              retry_failed=retry_failed, seed=rater.seed, target_agreement=target_agreement,
                              risk=risk, write_config=write_config, config=rater.config_path)
    _, rub = load(rater.config_path)
    # Several annotators: read as 'hcp data agreement' reads them (the raters stage sits above evaluate).
    labels = panel_labels(data_paths, rub, options.bootstrap, options.seed) if names_annotators(data_paths) else None

    def open_rater(name: str | None):  # noqa: ANN202 - (Backend, ScoreOptions), opened only when scoring
        engine, _, score_options = open_scorer(rater, name)
        return engine, score_options

    result = run_evaluation(options, rub, open_rater, labels)
    print_evaluation(result.metrics)
    click.echo(f"report: {result.report / 'report.html'}")
    if write_config is not None:
        click.echo(f"wrote {write_config}: scoring.confidence_threshold {result.metrics['threshold']['threshold']}")


# --- serve ------------------------------------------------------------------------------------------------


@cli.group(invoke_without_command=True)
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on. Anything but loopback needs a token (--token or $HCP_API_TOKEN).")
@click.option("--port", type=click.IntRange(0, 65535), default=8000, show_default=True)
@click.option("--token", envvar="HCP_API_TOKEN", default=None,
              help="Bearer token every API request must carry (default: $HCP_API_TOKEN; none on loopback).")
@click.option("--reviews", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Where reviewed ratings are saved as training data (JSONL; default: reviews.jsonl in "
              "$XDG_STATE_HOME/hcp/serve, else ~/.local/state/hcp/serve).")
@click.option("--work-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for batch results and saved invalid answers (default: that same serve folder).")
@click.option("--parallel", type=click.IntRange(1, 64), default=1, show_default=True,
              help="Ratings at once on Ollama (match OLLAMA_NUM_PARALLEL); embedded rates one at a time.")
@click.option("--queue", "queue_size", type=click.IntRange(0, 10_000), default=16, show_default=True,
              help="Requests that may wait for the model; more are refused with 503 and Retry-After.")
@click.option("--max-body-mb", type=click.FloatRange(min=0.001), default=20.0, show_default=True,
              help="Largest request body in MB (uploads included); larger gets 413.")
@click.option("--cors-origin", multiple=True, help="Allow this web origin to call the API (CORS is off without).")
@click.option("--reviewers", "reviewers_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Named reviewers, each signing in with a token of their own (a file 'hcp serve add-reviewer' "
              "writes); every review records its reviewer. Without it the page asks each tab for a name.")
@click.option("--queue-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A results file of 'hcp batch' (or of /batch): the page offers its ratings to review, flagged and "
              "least confident first. Needs --queue-input.")
@click.option("--queue-input", type=click.Path(path_type=Path), default=None,
              help="The input that batch rated (JSONL, CSV or folder of .txt): results hold no transcripts.")
@click.option("--random-share", type=click.FloatRange(0, 1), default=0.2, show_default=True,
              help="Share of the queue's picks drawn at random, so that agreement measured on reviews is unbiased.")
@click.option("--backend", type=click.Choice(["auto", "ollama", "llama-cpp", "openai"]), default="auto",
              show_default=True, help="auto: Ollama if it answers and has the model, else embedded; openai: an "
              "OpenAI-compatible server at --base-url.")
@click.option("--model", default=None, help="An Ollama model name (default hcp-rater), a path to a .gguf file, or "
              "the model an OpenAI-compatible server serves.")
@click.option("--ollama-host", default=None, help="Ollama address (default: $OLLAMA_HOST or 127.0.0.1:11434).")
@click.option("--base-url", default=None, help="OpenAI-compatible server, e.g. http://127.0.0.1:8080/v1.")
@click.option("--api-key", default=None, envvar="HCP_OPENAI_API_KEY", help="Bearer token for that server.")
@ALLOW_REMOTE_OPTION
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Seconds to wait for Ollama.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="llama.cpp threads for the embedded backend (default: one per core).")
@click.option("--num-ctx", type=click.IntRange(min=512), default=None,
              help="Context window in tokens (default: model.num_ctx of the config).")
@click.option("--seed", type=click.IntRange(0, SEED_MAX), default=42, show_default=True,
              help=f"Sampling seed when a request gives none, 0 to {SEED_MAX}.")
@click.option("--canary", default=None, help="A candidate version (a model as --model takes it) that rates "
              "--canary-share of the transcripts, chosen by content: a transcript always gets the same version.")
@click.option("--canary-share", type=float, default=None,
              help="Share of /score and /batch transcripts the canary rates, 0 to 1 (default with --canary: 0.1).")
@click.option("--shadow", default=None, help="A candidate version that rates the users' transcripts again when the "
              "server is idle, for comparison only (/metrics, /reviews/agreement): users see the current version.")
@CONFIG_OPTION
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, token: str | None, reviews: Path | None, work_dir: Path | None,
          parallel: int, queue_size: int, max_body_mb: float, cors_origin: tuple[str, ...],
          reviewers_file: Path | None, queue_from: Path | None, queue_input: Path | None, random_share: float,
          backend: str, model: str | None, ollama_host: str | None, base_url: str | None, api_key: str | None,
          allow_remote: bool, timeout: float | None, threads: int | None, num_ctx: int | None, seed: int,
          canary: str | None, canary_share: float | None, shadow: str | None, config_path: Path | None) -> None:
    """Serve the rater over HTTP, with a web page where reviewers correct ratings into training data.

    The model loads once. Open http://127.0.0.1:8000/ for the page, /docs for the API.

    \b
    Examples:
      hcp serve
      curl -X POST http://127.0.0.1:8000/score -d '{"transcript": "RD: Hello. Patient: Hi."}'
      HCP_API_TOKEN=$(openssl rand -hex 24) hcp serve --host 0.0.0.0 --reviews reviews.jsonl
      hcp serve --model hcp-rater:3 --canary hcp-rater:4 --canary-share 0.1 --shadow hcp-rater:5
      hcp serve add-reviewer alice --reviewers team.reviewers      (prints alice's token once)
      hcp serve --host 0.0.0.0 --reviewers team.reviewers --queue-from ratings.jsonl --queue-input visits.csv
    """
    if ctx.invoked_subcommand is not None:
        return
    from contextlib import ExitStack

    from hcp.serve.server import serve as run_server
    from hcp.serve.service import check_rollout, open_reviewers
    from hcp.serve.settings import MB, ServeSettings

    folders = {name: path for name, path in (("reviews", reviews), ("work_dir", work_dir)) if path is not None}
    share = canary_share if canary_share is not None else DEFAULT_CANARY_SHARE if canary else 0.0
    settings = ServeSettings(host=host, port=port, token=token, parallel=parallel, queue=queue_size,
                             max_body=int(max_body_mb * MB), cors_origins=cors_origin, canary_share=share,
                             reviewers=reviewers_file, queue_from=queue_from, queue_input=queue_input,
                             random_share=random_share, **folders)
    settings.check()  # before the model loads: a public address without a token fails at once
    if canary_share is not None and canary is None:
        raise click.UsageError("--canary-share goes with --canary: name the version to try (--canary NAME:N)")
    check_rollout(settings, {"--model": model, "--canary": canary, "--shadow": shadow})
    settings.make_folders()
    open_reviewers(settings, load(config_path)[1])  # the reviewers file and the queue, checked before too
    rater = RaterChoice(backend=backend, model=model, host=ollama_host, base_url=base_url, api_key=api_key,
                        tokenizer=None, allow_remote=allow_remote, timeout=timeout, threads=threads, num_ctx=num_ctx,
                        seed=seed, config_path=config_path)
    with ExitStack() as opened:
        # The candidates first: one that cannot be opened is refused before the current model loads.
        candidates = {role: open_version(spec, rater, opened, f"--{role}") if spec else None
                      for role, spec in (("canary", canary), ("shadow", shadow))}
        current = open_version(model, rater, opened, "--model")
        _, rub, options = open_scorer(rater, backend=current.backend)
        run_server(current, rub, options, settings, echo=click.echo, **candidates)


DEFAULT_CANARY_SHARE = 0.1


def open_version(spec: str | None, rater: RaterChoice, opened: Any, option: str):  # noqa: ANN201 - a Deployed
    """A model version for hcp serve, opened as --model opens a model (a GGUF path, an Ollama name), labelled as
    given (the backend's model name when none is given); closed when `opened` (an ExitStack) closes. The one place
    a version is resolved: a registry's NAME:N (label, GGUF, reference score distribution) goes here."""
    from hcp.serve.versions import Deployed

    try:
        engine, _, _ = open_scorer(rater, model=spec)
    except HcpError as exc:  # the backends' messages name --model: say which option gave the model
        raise HcpError(str(exc).replace("--model", option)) from None
    opened.callback(engine.close)
    version = registered_version(rater, spec or rater.model)
    if version is None:
        return Deployed(spec or engine.model, engine, reference=None)
    return Deployed(version.label, engine, reference=version.manifest.get("score_distribution"))


def registered_version(rater: RaterChoice, model: str | None):  # noqa: ANN201 - a hcp.registry Version or None
    """The registry's version a model name stands for (NAME: the promoted one; NAME:N), None for anything else."""
    from hcp.scoring.backends import looks_like_gguf_path

    if model is None or rater.backend == "openai" or looks_like_gguf_path(model):
        return None
    from hcp.registry import open_registry

    return open_registry(None).resolve(model)


@serve.command("add-reviewer")
@click.argument("name")
@click.option("--reviewers", "reviewers_file", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The reviewers file (created, owner-only, if missing); give the same to 'hcp serve --reviewers'.")
@click.option("--replace", is_flag=True, help="Give a reviewer who has a token a new one (the old one stops working).")
def serve_add_reviewer(name: str, reviewers_file: Path, replace: bool) -> None:
    """Add a named reviewer and print their token, once: only its hash is kept.

    Give the token to the reviewer; the page asks for it. A server running with this file signs them in from
    their next request.

    Example: hcp serve add-reviewer alice --reviewers team.reviewers
    """
    from hcp.serve.reviewers import add_reviewer

    token = add_reviewer(reviewers_file, name, replace=replace)
    click.echo(f"added {name} to {reviewers_file}; their token (shown this once, give it to {name} only):", err=True)
    click.echo(token)


# --- train ------------------------------------------------------------------------------------------------


@cli.command()
@click.option("--data", "data_path", type=click.Path(path_type=Path), required=True,
              help="Labelled transcripts to train on (JSONL or CSV, as 'hcp data validate' checks).")
@click.option("--val", "val_path", type=click.Path(path_type=Path), default=None,
              help="A separate validation file (no transcript of --data in it), instead of holding out part of --data.")
@click.option("--val-fraction", type=click.FloatRange(0, 1, max_open=True), default=None,
              help="Share of --data held out for validation (default: training.val_fraction, 0.2; 0: none).")
@CONFIG_OPTION
@click.option("--output", type=click.Path(file_okay=False, path_type=Path), default=Path("models/finetuned_rd_model"),
              show_default=True, help="Folder for the adapter, tokenizer, training_config.json and metrics.")
@click.option("--base", default=None, help="Base model: HF folder, .gguf file or hub id (default: model.name).")
@click.option("--resume", is_flag=True, help="Continue from the last checkpoint in --output.")
@click.option("--strict", is_flag=True, help="Fail on examples longer than model.max_length instead of skipping them.")
@click.option("--max-steps", type=click.IntRange(min=1), default=None,
              help="Stop after N optimizer steps (overrides training.num_epochs).")
@click.option("--report-to", type=click.Choice(["none", "wandb", "tensorboard"]), default="none", show_default=True,
              help="Send metrics to an experiment tracker.")
def train(data_path: Path, val_path: Path | None, val_fraction: float | None, config_path: Path | None,
          output: Path, base: str | None, resume: bool, strict: bool, max_steps: int | None, report_to: str) -> None:
    """Fine-tune a base chat model with LoRA to rate transcripts by the rubric (QLoRA with model.load_in_4bit).

    Ctrl-C saves a checkpoint; run the same command with --resume to continue.
    On several GPUs: torchrun --nproc_per_node 2 -m hcp train --data ...

    \b
    Examples:
      hcp train --data data/train.jsonl --output models/rd
      hcp train --data data/train.jsonl --val data/val.jsonl --base SmolLM2-135M-Instruct.Q4_1.gguf
    """
    if val_path is not None and val_fraction is not None:
        raise click.UsageError("give --val FILE or --val-fraction, not both")
    if val_path is not None and not val_path.exists() and _is_number(str(val_path)):
        raise click.UsageError(f"--val takes a validation file; for a share of --data held out, use --val-fraction "
                               f"{val_path}")
    from hcp.train.trainer import TrainRequest
    from hcp.train.trainer import train as run_training

    config, _ = load(config_path)
    request = TrainRequest(data=data_path, config=config, output_dir=output, base=base, val_data=val_path,
                           val_fraction=val_fraction, resume=resume, strict=strict, max_steps=max_steps,
                           report_to=report_to, echo=lambda line: click.echo(line, err=True))
    click.echo(run_training(request).summary())


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def main() -> None:
    cli(prog_name="hcp")
