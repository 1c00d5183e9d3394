"""The review queue against random order: how many reviews each needs before the model's agreement with the
reviewers is known within ±0.1, and how many wrong ratings each puts in front of the reviewers early.

The model rates labelled conversations once (`hcp batch`, resumable: a rerun reuses the results file); the
simulated reviewers are the labels — a review shows the model's rating beside what a careful reviewer says.

- agreement: the model's exact agreement with the reviewers, the share of (transcript, dimension) ratings equal;
  its true value is that over every rated transcript. An order "knows it within ±0.1" after k reviews when its
  estimate stays within 0.1 of the truth from the k-th review on.
- random order: the transcripts reviewed in a random order; the estimate is the mean over those reviewed.
- the queue: `hcp serve --queue-from`'s own `ReviewQueue` (flagged `needs_review` and least confident first, a
  share `--random-share` of picks at random). Its estimate from the random picks alone is unbiased; the mean over
  every review it made (naive) is shown too, to show the bias the random share is there to avoid.
- a wrong rating: off by 2 or more on some dimension ("off by 2+"); also counted: off by 1 or more on some
  dimension ("off by 1+", every rating that is not exactly right).

Random order and the queue's random picks are repeated over --seeds seeds: mean and spread (standard deviation,
and the 10th–90th percentiles). Several labelled files may be given, each with its results file (`--labelled A
--results RA --labelled B --results RB`): they are pooled, into FOLDER/input.jsonl and FOLDER/results.jsonl
(owner-only: they hold transcripts), which the queue reads as `hcp serve --queue-from` would. Writes
FOLDER/review_queue.json and FOLDER/review_queue.png.

    PYTHONPATH=. .venv/bin/python scripts/bench_review_queue.py --labelled heldout.jsonl --results ratings.jsonl \\
        --model export/hcp-rater.Q8_0.gguf --config config.yaml --out bench/review_queue
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
from pathlib import Path
from typing import Any

from benchlib import run_hcp

from hcp.batch.inputs import content_id, read_inputs
from hcp.batch.results import OK, read_results
from hcp.config import load_config
from hcp.files import atomic_write_text
from hcp.rubric import Rubric
from hcp.serve.review_queue import RANDOM, ReviewQueue

MARGIN = 0.1
FIRST = 20  # reviews in which wrong ratings are counted


def rate(labelled: Path, results: Path, model: str, config: Path | None, threads: int, parallel: int) -> None:
    """Rate the labelled file with hcp batch unless the results file holds every transcript already."""
    ids = {item.id for item in read_inputs(labelled).items}
    done = {i for i, r in read_results(results).items() if r["status"] == OK} if results.exists() else set()
    if ids <= done:
        return
    args = ["batch", str(labelled), "--out", str(results), "--backend", "llama-cpp", "--model", model,
            "--threads", str(threads), "--parallel", str(parallel)]
    run_hcp(args + (["--config", str(config)] if config else []))


def pool(labelled: list[Path], results: list[Path], folder: Path) -> tuple[Path, Path]:
    """One input and one results file of every pair's rated transcripts (by content id, each once)."""
    rows: dict[str, str] = {}
    records: dict[str, str] = {}
    for data, rated in zip(labelled, results, strict=True):
        done = {i: r for i, r in read_results(rated).items() if r["status"] == OK}
        for item in read_inputs(data).items:
            if item.id in done and item.transcript is not None and item.id not in rows:
                rows[item.id] = json.dumps({**item.row, "id": item.id, "transcript": item.transcript})
                records[item.id] = json.dumps(done[item.id])
    folder.mkdir(parents=True, exist_ok=True)
    inputs, pooled = folder / "input.jsonl", folder / "results.jsonl"
    atomic_write_text(inputs, "".join(r + "\n" for r in rows.values()), private=True)
    atomic_write_text(pooled, "".join(r + "\n" for r in records.values()), private=True)
    return inputs, pooled


def transcripts(labelled: Path, results: Path, rubric: Rubric) -> dict[str, dict[str, Any]]:
    """By content id: each rated transcript's agreement (share of dimensions exactly right) and its errors."""
    records = read_results(results)
    found = {}
    for item in read_inputs(labelled).items:
        record = records.get(item.id)
        if record is None or record["status"] != OK or item.transcript is None:
            continue
        gaps = [abs(record["rating"][n] - int(item.row[n])) for n in rubric.names]
        found[content_id(item.transcript)] = {"agreement": sum(g == 0 for g in gaps) / len(gaps),
                                              "off2": max(gaps) >= 2, "off1": max(gaps) >= 1,
                                              "off2_dims": sum(g >= 2 for g in gaps),
                                              "flagged": bool(record.get("needs_review"))}
    return found


def needed(estimates: list[float | None], truth: float) -> int | None:
    """The number of reviews after which every estimate is within MARGIN of the truth (None: never)."""
    last_outside = 0
    for k, value in enumerate(estimates, start=1):
        if value is None or abs(value - truth) > MARGIN + 1e-12:
            last_outside = k
    return None if last_outside == len(estimates) else last_outside + 1


def running_mean(values: list[float]) -> list[float]:
    total, out = 0.0, []
    for k, value in enumerate(values, start=1):
        total += value
        out.append(total / k)
    return out


def spread(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    at = lambda q: ordered[min(len(ordered) - 1, int(q * len(ordered)))]  # noqa: E731
    return {"mean": statistics.fmean(values), "sd": statistics.pstdev(values), "p10": at(0.1), "p90": at(0.9),
            "n": len(values)}


def random_order(found: dict[str, dict[str, Any]], truth: float, seed: int) -> dict[str, Any]:
    keys = sorted(found)
    random.Random(seed).shuffle(keys)
    estimates = running_mean([found[k]["agreement"] for k in keys])
    return {"needed": needed(estimates, truth), "errors": [abs(e - truth) for e in estimates],
            "off2": sum(found[k]["off2"] for k in keys[:FIRST]), "off1": sum(found[k]["off1"] for k in keys[:FIRST]),
            "off2_dims": sum(found[k]["off2_dims"] for k in keys[:FIRST]),
            "off2_curve": _cumulative([found[k]["off2"] for k in keys])}


def queue_order(queue: ReviewQueue, found: dict[str, dict[str, Any]], truth: float) -> dict[str, Any]:
    reviewed: set[str] = set()
    picked: list[tuple[str, str]] = []
    while True:
        item, pick = queue.next(reviewed)
        if item is None:
            break
        reviewed.add(item.key)
        picked.append((item.key, pick or ""))
    keys = [k for k, _ in picked]
    naive = running_mean([found[k]["agreement"] for k in keys])
    unbiased: list[float | None] = []
    random_values: list[float] = []
    for key, pick in picked:
        if pick == RANDOM:
            random_values.append(found[key]["agreement"])
        unbiased.append(statistics.fmean(random_values) if random_values else None)
    return {"needed": needed(unbiased, truth), "needed_naive": needed(naive, truth),
            "errors": [None if e is None else abs(e - truth) for e in unbiased],
            "naive_errors": [abs(e - truth) for e in naive],
            "random_picks_in_first": sum(p == RANDOM for _, p in picked[:FIRST]),
            "off2": sum(found[k]["off2"] for k in keys[:FIRST]), "off1": sum(found[k]["off1"] for k in keys[:FIRST]),
            "off2_dims": sum(found[k]["off2_dims"] for k in keys[:FIRST]),
            "off2_curve": _cumulative([found[k]["off2"] for k in keys])}


def _cumulative(flags: list[bool]) -> list[int]:
    total, out = 0, []
    for flag in flags:
        total += flag
        out.append(total)
    return out


def summarize(runs: list[dict[str, Any]], total: int) -> dict[str, Any]:
    reached = [r["needed"] for r in runs if r["needed"] is not None]
    out = {"needed": spread([float(n) for n in reached]) if reached else None,
           "never_within": len(runs) - len(reached),
           "off2_in_first": spread([float(r["off2"]) for r in runs]),
           "off1_in_first": spread([float(r["off1"]) for r in runs]),
           "off2_dimensions_in_first": spread([float(r["off2_dims"]) for r in runs]), "transcripts": total}
    naive = [r["needed_naive"] for r in runs if r.get("needed_naive") is not None]
    if naive:
        out["needed_naive"] = spread([float(n) for n in naive])
    return out


def plot(folder: Path, results: dict[str, Any], curves: dict[str, Any]) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for label, errors in curves["errors"].items():
        left.plot(range(1, len(errors) + 1), [float("nan") if e is None else e for e in errors], label=label)
    left.axhline(MARGIN, color="grey", linestyle=":", label=f"±{MARGIN}")
    left.set_xlabel("reviews")
    left.set_ylabel("mean |estimated − true agreement|")
    left.set_title("Estimating the model's agreement")
    left.legend(fontsize=8)
    for label, caught in curves["off2"].items():
        right.plot(range(1, len(caught) + 1), caught, label=label)
    right.axvline(FIRST, color="grey", linestyle=":")
    right.set_xlabel("reviews")
    right.set_ylabel("wrong ratings (off by 2+) reviewed, mean")
    right.set_title("Catching wrong ratings")
    right.legend(fontsize=8)
    fig.suptitle(f"{results['transcripts']} held-out conversations, {results['model']}", fontsize=9)
    fig.tight_layout()
    path = folder / "review_queue.png"
    fig.savefig(path, dpi=110)
    return path


def mean_curve(curves: list[list[float | None]]) -> list[float | None]:
    """The mean over seeds at each number of reviews, where half the seeds or more have a value there (the
    queue's random picks give no estimate before the first random pick)."""
    out: list[float | None] = []
    for values in zip(*curves, strict=True):
        known = [v for v in values if v is not None]
        out.append(statistics.fmean(known) if 2 * len(known) >= len(values) else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", type=Path, action="append", required=True)
    parser.add_argument("--results", type=Path, action="append", required=True,
                        help="hcp batch's results of the --labelled before it (made if missing)")
    parser.add_argument("--model", required=True, help="the .gguf to rate with")
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seeds", type=int, default=200)
    parser.add_argument("--random-share", type=float, default=0.2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--parallel", type=int, default=1)
    parser.add_argument("--no-rate", action="store_true", help="use the results as they are (some may be missing)")
    args = parser.parse_args()
    if len(args.labelled) != len(args.results):
        parser.error("give one --results for each --labelled")
    if not args.no_rate:
        for labelled, rated in zip(args.labelled, args.results, strict=True):
            rate(labelled, rated, args.model, args.config, args.threads, args.parallel)
    rubric = Rubric.from_config(load_config(args.config))
    sources = [str(p) for p in args.labelled]
    args.labelled, args.results = pool(args.labelled, args.results, args.out)
    found = transcripts(args.labelled, args.results, rubric)
    truth = statistics.fmean(f["agreement"] for f in found.values())
    randoms = [random_order(found, truth, seed) for seed in range(args.seeds)]
    queues = [queue_order(ReviewQueue(args.results, args.labelled, rubric, args.random_share, seed), found, truth)
              for seed in range(args.seeds)]
    priority = queue_order(ReviewQueue(args.results, args.labelled, rubric, 0.0, 0), found, truth)
    model = next(iter(read_results(args.results).values()))["model"]
    results = {
        "model": Path(model).name, "labelled": sources,
        "transcripts": len(found), "true_agreement": truth, "margin": MARGIN, "first": FIRST, "seeds": args.seeds,
        "random_share": args.random_share,
        "wrong": {"off2": sum(f["off2"] for f in found.values()), "off1": sum(f["off1"] for f in found.values()),
                  "off2_dimensions": sum(f["off2_dims"] for f in found.values()),
                  "off2_among_flagged": sum(f["off2"] for f in found.values() if f["flagged"]),
                  "off2_dimensions_among_flagged": sum(f["off2_dims"] for f in found.values() if f["flagged"])},
        "flagged": sum(f["flagged"] for f in found.values()),
        "random_order": summarize(randoms, len(found)),
        "queue": summarize(queues, len(found)),
        "queue_random_picks_in_first": spread([float(q["random_picks_in_first"]) for q in queues]),
        "priority_only": {"needed_naive": priority["needed_naive"], "off2_in_first": priority["off2"],
                          "off1_in_first": priority["off1"], "off2_dimensions_in_first": priority["off2_dims"]},
    }
    (args.out / "review_queue.json").write_text(json.dumps(results, indent=2) + "\n")
    curves = {
        "errors": {"random order": mean_curve([r["errors"] for r in randoms]),
                   f"queue ({args.random_share:g} random), random picks only":
                       mean_curve([q["errors"] for q in queues]),
                   f"queue ({args.random_share:g} random), every review (biased)":
                       mean_curve([q["naive_errors"] for q in queues])},
        "off2": {"random order": mean_curve([r["off2_curve"] for r in randoms]),
                 f"queue ({args.random_share:g} random)": mean_curve([q["off2_curve"] for q in queues]),
                 "queue (no random picks)": priority["off2_curve"]},
    }
    figure = plot(args.out, results, curves)
    print(json.dumps(results, indent=2))
    print(f"figure: {figure}")


if __name__ == "__main__":
    main()
