"""The `hcp` command: thin Click commands over the library.

Each command parses its options, builds one config object, calls one library function and prints the result.
Nothing heavy (torch, transformers, llama.cpp, gguf) is imported at module level, so `hcp --help` starts fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from hcp import __version__
from hcp.errors import HcpError

CONFIG_OPTION = click.option(
    "--config", "config_path", type=click.Path(dir_okay=False, path_type=Path), default=None,
    help="A YAML file overriding keys of configs/config.yaml.",
)


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


@click.group(cls=HcpGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="hcp")
def cli() -> None:
    """Rate how a healthcare provider talks with a patient, offline.

    \b
      hcp data sample --out data/train.jsonl     make labelled sample data
      hcp data validate my.jsonl                 check your own annotations
      hcp rubric                                 show the prompt and schema the model gets
    """


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
    """Prepare training data: make samples, validate, split."""


@data.command("validate")
@click.argument("file", type=click.Path(path_type=Path))
@CONFIG_OPTION
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--max-problems", default=50, show_default=True, help="How many problems to list.")
def data_validate(file: Path, config_path: Path | None, as_json: bool, max_problems: int) -> None:
    """Check a JSONL or CSV file of rated transcripts; exit 1 if anything is invalid.

    Example: hcp data validate data/sample_training_data.jsonl
    """
    from hcp.data import load_dataset, summarize
    from hcp.report import print_data_summary

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
              default=Path("data/sample_training_data.jsonl"), show_default=True, help="Where to write (JSONL).")
@CONFIG_OPTION
def data_sample(count: int, seed: int, out: Path, config_path: Path | None) -> None:
    """Write labelled sample conversations across topics and the whole score range.

    Example: hcp data sample --n 200 --out data/train.jsonl
    """
    from hcp.data import write_jsonl
    from hcp.sample import SAMPLE_DIMENSIONS, generate_samples

    _, rub = load(config_path)
    if set(rub.names) != set(SAMPLE_DIMENSIONS):
        raise click.ClickException(
            f"sample data is labelled on {', '.join(SAMPLE_DIMENSIONS)}; your rubric has {', '.join(rub.names)} — "
            "use the default rubric for samples, or annotate your own data")
    write_jsonl(out, generate_samples(count, seed))
    click.echo(f"wrote {count} labelled conversations to {out}")


@data.command("split")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--val", "val_fraction", default=0.2, show_default=True, type=float, help="Share for validation.")
@click.option("--seed", default=42, show_default=True)
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Folder for the two files (default: beside FILE).")
@CONFIG_OPTION
def data_split(file: Path, val_fraction: float, seed: int, out_dir: Path | None, config_path: Path | None) -> None:
    """Split FILE into FILE.train.jsonl and FILE.val.jsonl, stratified by overall score.

    Example: hcp data split data/sample_training_data.jsonl --val 0.2 --seed 42
    """
    from hcp.data import load_dataset, require_valid, split_examples, write_jsonl

    _, rub = load(config_path)
    examples = require_valid(load_dataset(file, rub))
    train, val = split_examples(examples, rub, val_fraction, seed)
    folder = out_dir or file.parent
    stem = file.name.rsplit(".", 1)[0]
    train_path = write_jsonl(folder / f"{stem}.train.jsonl", (e.to_record() for e in train))
    val_path = write_jsonl(folder / f"{stem}.val.jsonl", (e.to_record() for e in val))
    click.echo(f"{len(train)} training examples -> {train_path}")
    click.echo(f"{len(val)} validation examples -> {val_path}")


def main() -> None:
    cli(prog_name="hcp")
