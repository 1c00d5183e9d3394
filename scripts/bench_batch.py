"""Benchmark: one `hcp batch` against N separate `hcp score` processes, on the embedded default model.

For each way it measures the wall time and the prompt tokens llama.cpp actually evaluated (each child process
wraps `llama_cpp.Llama.eval`: tokens evaluated inside hcp's sampling loop are answer tokens, the rest prompt
tokens). A batch loads the model once and keeps the KV cache of the rubric prompt that
every transcript shares, so it should evaluate that prefix once, not N times. The ratings must be the same both
ways (same seed; the embedded backend primes the prompt in the same chunks whether or not it is cached).

    .venv/bin/python scripts/bench_batch.py                 # 20 sample transcripts, 2 threads
    .venv/bin/python scripts/bench_batch.py --n 5 --threads 1

llama.cpp threads spin while they wait: run it on a quiet machine (the script refuses above a load of 1.5
unless --force), and never beside another llama.cpp process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from benchlib import HcpRun, OtherLoad, quiet_embedded_model, run_hcp

# The prelude of each hcp child: count the tokens llama.cpp evaluates, report them at exit.
COUNT_EVALS = r"""
import atexit, json, os
import llama_cpp
from hcp.scoring.backends import llama_cpp as embedded

counts = {"prompt": 0, "answer": 0}
state = {"in_answer": False}
_eval, _sample = llama_cpp.Llama.eval, embedded.GrammarFirstCheck.generate

def eval(self, tokens):
    # hcp evaluates the whole prompt before its sampling loop starts; in the loop, every eval is a sampled token.
    counts["answer" if state["in_answer"] else "prompt"] += len(tokens)
    return _eval(self, tokens)

def sample(self, *args, **kwargs):
    state["in_answer"] = True
    try:
        return _sample(self, *args, **kwargs)
    finally:
        state["in_answer"] = False

llama_cpp.Llama.eval, embedded.GrammarFirstCheck.generate = eval, sample

@atexit.register
def _report():
    with open(os.environ["HCP_BENCH_COUNTS"], "a") as f:
        f.write(json.dumps(counts) + "\n")
"""


def run_counted(args: list[str], counts: Path) -> HcpRun:
    """Run `hcp ARGS`, its llama.cpp token counts appended to `counts`; return its wall time and stdout."""
    return run_hcp(args, env={"HCP_BENCH_COUNTS": str(counts)}, prelude=COUNT_EVALS)


def read_counts(path: Path) -> dict[str, int]:
    total = {"prompt": 0, "answer": 0, "processes": 0}
    for line in path.read_text().splitlines():
        counts = json.loads(line)
        total["prompt"] += counts["prompt"]
        total["answer"] += counts["answer"]
        total["processes"] += 1
    return total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="transcripts (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample transcripts")
    parser.add_argument("--force", action="store_true", help="run even on a busy machine")
    args = parser.parse_args()

    model, load = quiet_embedded_model(args.force)

    from hcp.data.sample import generate_samples

    samples = generate_samples(args.n, args.seed)
    backend = ["--backend", "llama-cpp", "--threads", str(args.threads)]
    with tempfile.TemporaryDirectory(prefix="hcp-bench-") as tmp:
        folder = Path(tmp)
        data = folder / "visits.jsonl"
        data.write_text("".join(json.dumps({"id": f"v{n:02d}", "transcript": s["transcript"]}) + "\n"
                                for n, s in enumerate(samples)))

        batch_counts = folder / "batch.counts"
        out = folder / "ratings.jsonl"
        other = OtherLoad()
        batch_seconds, _ = run_counted(["batch", str(data), "--out", str(out), *backend], batch_counts)
        batch_other = other.seconds()
        batch_records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}

        score_counts = folder / "score.counts"
        score_seconds, same = 0.0, 0
        other = OtherLoad()
        for n, sample in enumerate(samples):
            visit = folder / f"v{n:02d}.txt"
            visit.write_text(sample["transcript"])
            seconds, stdout = run_counted(["score", "--file", str(visit), "--json", *backend], score_counts)
            score_seconds += seconds
            same += json.loads(stdout)["rating"] == batch_records[f"v{n:02d}"]["rating"]

        score_other = other.seconds()
        batch, single = read_counts(batch_counts), read_counts(score_counts)

    sent = sum(r["prompt_tokens"] for r in batch_records.values())
    rows = [
        ("", "processes", "wall s", "transcripts/s", "prompt tokens evaluated", "answer tokens", "others' CPU s"),
        ("hcp batch", batch["processes"], f"{batch_seconds:.1f}", f"{args.n / batch_seconds:.3f}", batch["prompt"],
         batch["answer"], f"{batch_other:.0f}"),
        (f"{args.n} x hcp score", single["processes"], f"{score_seconds:.1f}", f"{args.n / score_seconds:.3f}",
         single["prompt"], single["answer"], f"{score_other:.0f}"),
        ("score / batch", "", f"{score_seconds / batch_seconds:.2f}x", "", f"{single['prompt'] / batch['prompt']:.2f}x",
         "", ""),
    ]
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    print(f"{args.n} sample transcripts, {model.name}, {args.threads} threads, load average before {load:.2f}")
    for row in rows:
        print("  ".join(str(cell).rjust(width) if i else str(cell).ljust(width)
                        for i, (cell, width) in enumerate(zip(row, widths, strict=True))))
    shared = (sent - batch["prompt"]) / max(1, args.n - 1)
    print(f"prompt tokens sent: {sent} ({sent / args.n:.0f} per transcript); the batch evaluated {batch['prompt']}, "
          f"so about {shared:.0f} shared tokens per transcript came from the cache")
    print(f"same rating both ways: {same}/{args.n}")
    if max(batch_other, score_other) > 0.05 * (batch_seconds + score_seconds):
        print("other processes used the CPU meanwhile (others' CPU s): the times are not clean — run it again")


if __name__ == "__main__":
    main()
