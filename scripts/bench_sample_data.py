"""Benchmark: what the sample data teaches a fine-tuned SmolLM2 — scores stated before the quotes or not, one
pair of speaker labels or the labels real transcripts use.

Three training sets of the same size, each trained the same way (`hcp train` from the SmolLM2 GGUF, the same
steps, seed and learning rate), exported to a q8_0 GGUF and rated with `hcp evaluate`:

  old       the sample data as hcp wrote it before: 'RD:'/'Patient:' only, reasoning ending "so empathy 4" per
            dimension (made by the older hcp, given with --old-data)
  classic   today's generator with classic labels: reasoning that says what was said, never a score
  varied    today's generator: RD, Dietitian, Provider, Dr. X, first names, ...; the held-out labels left out

Two held-out test sets, from seeds no training set used:
  classic   'RD:'/'Patient:' conversations          old vs classic: the reasoning change (issue 24, item 5)
  unseen    conversations whose provider is labelled as no training record was (HELD_OUT)
                                                    classic vs varied: the label change (issue 19, item 14)

Per model and test set: the share of quotes verified against the transcript, of ratings whose every quote is
verified, ECE of the confidence, and the QWK of the expected score (overall) against the labels.

    python scripts/bench_sample_data.py --old-data bench/old.jsonl --work bench/sample_data

`--old-data` is `hcp data sample --n 400 --seed 11` run by hcp at 8819dfc (the generator before these changes).
Run it on a quiet machine: torch and llama.cpp threads spin while they wait.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from bench_train import trust_table
from benchlib import run_hcp

from hcp.data.dataset import write_jsonl
from hcp.data.sample import generate_samples
from hcp.evidence import split_quote
from hcp.scoring.backends.llama_cpp import default_model_path

HELD_OUT = ("Clinician", "Speaker 1")  # provider labels no varied training record uses
TRAIN_SEED, CLASSIC_TEST_SEED, UNSEEN_TEST_SEED = 11, 1001, 1002


def provider_label(record: dict[str, Any]) -> str:
    return split_quote(record["empathy_evidence"][0])[0] or ""


def varied(n: int, seed: int, keep: Any) -> list[dict[str, Any]]:
    """n varied-label records whose provider label passes `keep`, drawn from as many as it takes."""
    records = [r for r in generate_samples(max(8 * n, 200), seed) if keep(provider_label(r))]
    if len(records) < n:
        raise SystemExit(f"only {len(records)} records with the labels wanted; ask for fewer")
    return records[:n]


def training_sets(args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    sets = {"classic": generate_samples(args.n, TRAIN_SEED, classic_labels=True),
            "varied": varied(args.n, TRAIN_SEED, lambda label: label not in HELD_OUT)}
    if args.old_data:
        sets["old"] = [json.loads(line) for line in args.old_data.read_text().splitlines()[:args.n]]
    return {name: sets[name] for name in args.variants if name in sets}


TESTS = {"old": ("classic",), "classic": ("classic", "unseen"), "varied": ("unseen",)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=80, help="training conversations per variant")
    parser.add_argument("--test-n", type=int, default=24, help="conversations per test set")
    parser.add_argument("--max-steps", type=int, default=20, help="optimizer steps (4 examples each)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--old-data", type=Path, default=None, help="sample data written by the older hcp")
    parser.add_argument("--variants", nargs="+", default=["varied", "classic", "old"])
    parser.add_argument("--work", type=Path, default=Path("bench/sample_data"))
    args = parser.parse_args()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    config = work / "config.yaml"
    config.write_text(yaml.safe_dump({
        "training": {"learning_rate": args.lr, "batch_size": 1, "gradient_accumulation_steps": 4,
                     "warmup_steps": 2, "logging_steps": 1, "eval_steps": 10_000, "save_steps": 10_000,
                     "seed": 42},
        "model": {"max_length": args.max_length, "gradient_checkpointing": False}}))
    tests = {"classic": write_jsonl(work / "test-classic.jsonl",
                                    generate_samples(args.test_n, CLASSIC_TEST_SEED, classic_labels=True)),
             "unseen": write_jsonl(work / "test-unseen.jsonl",
                                   varied(args.test_n, UNSEEN_TEST_SEED, lambda label: label in HELD_OUT))}
    results: dict[str, Any] = {}
    for name, records in training_sets(args).items():
        folder = work / name
        folder.mkdir(exist_ok=True)
        data = write_jsonl(folder / "train.jsonl", records)
        adapter, export = folder / "adapter", folder / "export"
        seconds = {}
        if not (adapter / "adapter_config.json").exists():
            seconds["train"] = run_hcp(["train", "--data", str(data), "--val-fraction", "0", "--config", str(config),
                                        "--output", str(adapter), "--max-steps", str(args.max_steps),
                                        "--base", str(default_model_path())],
                                       env=env, log=folder / "train.log").seconds
        gguf = sorted(export.glob("*.gguf"))
        if not gguf:
            seconds["export"] = run_hcp(["export-ollama", str(adapter), "--no-create", "--quant", "q8_0",
                                         "--out", str(export), "--threads", str(args.threads)],
                                        env=env, log=folder / "export.log").seconds
            gguf = sorted(export.glob("*.gguf"))
        for test in TESTS[name]:
            report = folder / f"eval-{test}"
            seconds[f"evaluate {test}"] = run_hcp(
                ["evaluate", "--data", str(tests[test]), "--backend", "llama-cpp", "--model", str(gguf[-1]),
                 "--threads", str(args.threads), "--report", str(report), "--config", str(config)],
                env=env, log=folder / f"evaluate-{test}.log").seconds
            metrics = json.loads((report / "metrics.json").read_text())
            trust = trust_table(report, metrics)["fine_tuned"]
            expected = ((metrics["raters"]["model"].get("probabilities") or {}).get("dimensions") or {})
            results[f"{name} on {test}"] = {
                "quotes": trust["quotes"], "quotes_verified": trust["quotes_verified"],
                "ratings_all_verified": trust["ratings_all_verified"], "ece": trust["ece"],
                "qwk_expected_overall": ((expected.get("overall") or {}).get("expected") or {}).get("qwk"),
                "seconds": seconds}
        (work / "results.json").write_text(json.dumps(results, indent=2))
    print(f"{'model on test set':24s} {'quotes':>6s} {'verified':>8s} {'all ok':>7s} {'ECE':>6s} {'QWK(E)':>7s}")
    for key, row in results.items():
        def fmt(value: float | None, pct: bool = False) -> str:
            return "-" if value is None else (f"{100 * value:.0f}%" if pct else f"{value:.3f}")
        print(f"{key:24s} {row['quotes']:6d} {fmt(row['quotes_verified'], True):>8s} "
              f"{fmt(row['ratings_all_verified'], True):>7s} {fmt(row['ece']):>6s} "
              f"{fmt(row['qwk_expected_overall']):>7s}")
    print(f"figures in {work / 'results.json'}")


if __name__ == "__main__":
    main()
