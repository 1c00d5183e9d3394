"""Benchmark: the confidence threshold that `hcp evaluate --target-agreement` guarantees, on the fine-tuned SmolLM2
and held-out labelled sample conversations — the threshold, the coverage it leaves, and the agreement it gives on
a second held-out half.

The held-out set is `hcp data sample`'s generator with classic 'RD:'/'Patient:' labels (the labels the classic
model was trained on) and a seed no training or test set of scripts/bench_sample_data.py used (11, 1001, 1002).
It is rated once with `hcp evaluate` (its predictions are cached in the report folder, so a rerun rates nothing
again); `--extra DATA PREDICTIONS` pools ratings made the same way of other held-out sets. Then, over `--splits`
random halvings: calibrate on one half (`hcp.evaluate.threshold.calibrate`), and on the other half measure the
share of ratings at or above the threshold (coverage) and how many of them agree within one point on every
dimension (realised agreement). The same for a scan of targets, to say which target the model can be held to.

    python scripts/bench_threshold.py --work bench/threshold \\
        --model models/rd/export/hcp-rater.Q8_0.gguf --config models/rd/config.yaml

Rating 80 conversations takes about 8 minutes on two quiet cores (much longer beside other llama.cpp work).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from benchlib import run_hcp

from hcp.config import load_config
from hcp.data.dataset import write_jsonl
from hcp.data.sample import generate_samples
from hcp.evaluate.run import read_labels, read_rater
from hcp.evaluate.threshold import calibrate
from hcp.rubric import Rubric

HELD_OUT_SEED = 2001  # not 11 (classic training), 1001 or 1002 (scripts/bench_sample_data.py's test sets)
TARGETS = (0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.7, 0.9)


def ratings(data: Path, predictions: list[Path], rubric: Rubric) -> tuple[list[float], list[bool]]:
    """(confidence, agrees) of each rated transcript with score probabilities: agrees when within one point of the
    label on every dimension, as `hcp evaluate` counts it."""
    inputs, human = read_labels(data, rubric)
    rater = read_rater("model", predictions, rubric, inputs)
    first = rater.runs[0]
    ids = [i for i in human if i in first and (rater.probabilities.get(i) or {}).get("confidence") is not None]
    return ([rater.probabilities[i]["confidence"] for i in ids],
            [all(abs(first[i][n] - human[i][n]) <= 1 for n in rubric.names) for i in ids])


def splits(confidence: np.ndarray, agrees: np.ndarray, target: float, risk: float, count: int,
           seed: int) -> dict[str, Any]:
    """Calibrate on a random half, check on the other, `count` times."""
    rng = np.random.default_rng(seed)
    found, rows = 0, []
    for _ in range(count):
        order = rng.permutation(confidence.size)
        calibration, check = order[: confidence.size // 2], order[confidence.size // 2:]
        threshold = calibrate(confidence[calibration], agrees[calibration], target, risk)["threshold"]
        if threshold is None:
            continue
        found += 1
        kept = check[confidence[check] >= threshold]
        rows.append((threshold, kept.size / check.size, float(agrees[kept].mean()) if kept.size else None))

    def median(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.median(known)) if known else None

    realised = [r for _, _, r in rows]
    return {"target": target, "risk": risk, "splits": count, "held": found / count,
            "threshold": median([t for t, _, _ in rows]), "coverage": median([c for _, c, _ in rows]),
            "realised": median(realised),
            "realised_below_target": (sum(r is not None and r < target for r in realised) / len(realised)
                                      if realised else None)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="the fine-tuned GGUF")
    parser.add_argument("--config", type=Path, required=True, help="the config it was trained and rated with")
    parser.add_argument("--work", type=Path, default=Path("bench/threshold"))
    parser.add_argument("--n", type=int, default=80, help="held-out conversations to rate")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--target", type=float, default=0.9)
    parser.add_argument("--risk", type=float, default=0.1)
    parser.add_argument("--splits", type=int, default=200)
    parser.add_argument("--seed", type=int, default=7, help="of the random halvings")
    parser.add_argument("--no-rate", action="store_true",
                        help="use only the ratings already in the report folder's predictions (an interrupted run)")
    parser.add_argument("--extra", nargs=2, action="append", default=[], metavar=("DATA", "PREDICTIONS"),
                        help="pool another labelled held-out set with its results file, rated the same way")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    data = args.work / "heldout.jsonl"
    if not data.exists():
        write_jsonl(data, generate_samples(args.n, HELD_OUT_SEED, classic_labels=True))
    report = args.work / "eval"
    if not args.no_rate:
        run_hcp(["evaluate", "--data", str(data), "--backend", "llama-cpp", "--model", str(args.model),
                 "--threads", str(args.threads), "--report", str(report), "--config", str(args.config),
                 "--target-agreement", str(args.target), "--risk", str(args.risk)],
                env={"OMP_NUM_THREADS": str(args.threads)}, log=args.work / "evaluate.log")
    rubric = Rubric.from_config(load_config(args.config))
    confidence, agrees = ratings(data, sorted((report / "predictions").glob("model-*.jsonl")), rubric)
    sources = {str(data): len(confidence)}
    for extra_data, extra_predictions in args.extra:
        c, a = ratings(Path(extra_data), [Path(extra_predictions)], rubric)
        confidence, agrees = confidence + c, agrees + a
        sources[extra_data] = len(c)
    c, a = np.array(confidence), np.array(agrees)
    whole = calibrate(c, a, args.target, args.risk)
    surer = c >= np.median(c)  # does the confidence separate good ratings from bad at all?
    results = {
        "model": str(args.model), "sources": sources, "n": int(c.size), "agreement_of_all": float(a.mean()),
        "confidence_range": [float(c.min()), float(c.max())],
        "agreement_surer_half": float(a[surer].mean()), "agreement_less_sure_half": float(a[~surer].mean()),
        "whole_set": {k: whole[k] for k in ("threshold", "coverage", "agreement", "bound", "min_kept", "verdict")},
        "halves": splits(c, a, args.target, args.risk, args.splits, args.seed),
        "targets": [splits(c, a, t, args.risk, args.splits, args.seed) for t in TARGETS],
    }
    (args.work / "results.json").write_text(json.dumps(results, indent=2))

    def fmt(value: float | None, pct: bool = True) -> str:
        return "-" if value is None else (f"{100 * value:.0f}%" if pct else f"{value:.3f}")

    print(f"{c.size} rated held-out conversations ({', '.join(f'{n} of {s}' for s, n in sources.items())}); "
          f"{fmt(float(a.mean()))} within one point on every dimension")
    print(f"confidence {c.min():.3f}..{c.max():.3f}; agreement of the surer half {fmt(float(a[surer].mean()))}, "
          f"of the rest {fmt(float(a[~surer].mean()))}")
    print(f"whole set, target {args.target:g} risk {args.risk:g}: {whole['verdict']}")
    print(f"calibrate on half, check on the other ({args.splits} splits), risk {args.risk:g}:")
    print(f"{'target':>6s} {'held':>5s} {'threshold':>9s} {'coverage':>8s} {'realised':>8s} {'below':>6s}")
    for row in results["targets"]:
        print(f"{row['target']:6.2f} {fmt(row['held']):>5s} {fmt(row['threshold'], False):>9s} "
              f"{fmt(row['coverage']):>8s} {fmt(row['realised']):>8s} {fmt(row['realised_below_target']):>6s}")
    print(f"figures in {args.work / 'results.json'}")


if __name__ == "__main__":
    main()
