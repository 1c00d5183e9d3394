"""Benchmark: `hcp batch --parallel N` on the embedded default model, N transcripts decoded together.

Rates the same sample transcripts with N = 1 (one at a time: the default), 2, 4 and 8, each run in a process of
its own as a user runs it, and prints the throughput of each, its speed-up over N = 1, and the share of its
ratings identical to N = 1's (llama.cpp's numbers depend on how tokens are batched, so a rating decoded beside
others may differ; the same seed at the same N gives the same ratings).

    .venv/bin/python scripts/bench_parallel.py                  # 20 sample transcripts, 2 threads, N = 1 2 4 8
    .venv/bin/python scripts/bench_parallel.py --n 8 --threads 1 --parallel 1 4

llama.cpp threads spin while they wait: run it on a quiet machine (the script refuses above a load of 1.5
unless --force), and never beside another llama.cpp process. `others' CPU` says how much of the machine other
processes took meanwhile; where it is not near 0%, the figures measure them too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchlib import OtherLoad, quiet_embedded_model, run_hcp


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="transcripts (default 20)")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads (default 2)")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4, 8], help="the N to run (1 first)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample transcripts")
    parser.add_argument("--force", action="store_true", help="run even on a busy machine")
    args = parser.parse_args()
    if args.parallel[0] != 1:
        sys.exit("--parallel must start with 1: every N is compared with one at a time")

    model, load = quiet_embedded_model(args.force)

    from hcp.data.sample import generate_samples

    samples = generate_samples(args.n, args.seed)
    rows, first = [], None
    with tempfile.TemporaryDirectory(prefix="hcp-bench-") as tmp:
        data = Path(tmp) / "visits.jsonl"
        data.write_text("".join(json.dumps({"id": f"v{n:02d}", "transcript": s["transcript"]}) + "\n"
                                for n, s in enumerate(samples)))
        for parallel in args.parallel:
            out = Path(tmp) / f"ratings-{parallel}.jsonl"
            other = OtherLoad()
            seconds, _ = run_hcp(["batch", str(data), "--out", str(out), "--backend", "llama-cpp", "--threads",
                                  str(args.threads), "--parallel", str(parallel)])
            others = other.seconds() / (cores() * seconds)
            got = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
            ok = [r for r in got.values() if r["status"] == "ok"]
            first = first or got
            same = sum(r.get("rating") == first[i].get("rating") for i, r in got.items() if r["status"] == "ok")
            rows.append((parallel, seconds, len(ok), sum(r["prompt_tokens"] for r in ok),
                         sum(r["output_tokens"] for r in ok), same, others))
            print(f"N={parallel}: {seconds:.1f} s, {len(ok)}/{args.n} rated, others' CPU {others:.0%}", flush=True)

    base = rows[0][1]
    table = [("N", "wall s", "transcripts/s", "vs N=1", "rated", "prompt tok", "answer tok", "same as N=1",
              "others' CPU")]
    for parallel, seconds, ok, prompt, answer, same, others in rows:
        table.append((str(parallel), f"{seconds:.1f}", f"{args.n / seconds:.3f}", f"{base / seconds:.2f}x",
                      f"{ok}/{args.n}", str(prompt), str(answer), f"{same}/{ok}", f"{others:.0%}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"\n{args.n} sample transcripts, {model.name}, {args.threads} threads on {cores()} cores, load average "
          f"before {load:.2f}")
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    best = min(rows[1:], key=lambda row: row[1], default=None)  # the fastest N > 1
    if best is not None:
        print(f"best: N={best[0]}, {base / best[1]:.2f}x the throughput of N=1")
    if max(row[-1] for row in rows) > 0.05:
        print("other processes used the CPU meanwhile (others' CPU): the times are not clean — run it again on a "
              "quiet machine")


if __name__ == "__main__":
    main()
