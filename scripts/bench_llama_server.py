"""Benchmark: what a batching engine gives on the same model and machine — the embedded backend against
llama.cpp's own server (`llama-server`, built by `scripts/setup.sh --llama-server`), side by side in one run.

Rates the same sample transcripts (`hcp data sample`) with
  - the embedded backend: `hcp batch --backend llama-cpp --parallel N` for N in --embedded (default 1 4), and
  - llama-server with the same GGUF (the embedded SmolLM2), N slots and continuous batching
    (`llama-server -np N --cont-batching`), driven by `hcp batch --backend openai --parallel N` for N in --slots
    (default 1 4 8),
each run in a process of its own as a user runs it (the server is started before and is not in the time), and
prints transcripts per minute, answer tokens per second, and how many ratings are identical to N = 1's (of the
same engine, and of the embedded backend's). The answer budgets are the config's (default: the default config,
evidence quotes included).

    .venv/bin/python scripts/bench_llama_server.py                    # 20 transcripts, 2 threads
    .venv/bin/python scripts/bench_llama_server.py --n 10 --slots 1 4

llama.cpp threads spin while they wait: run it on a quiet machine (the script refuses above a load of 1.5 unless
--force). `others' CPU` says how much of the machine other processes took meanwhile; where it is not near 0%, the
figures measure them too.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from benchlib import OtherLoad, quiet_embedded_model, run_hcp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.llama_server import LlamaServer  # noqa: E402

SLOT_CONTEXT = 8192  # each slot gets the embedded backend's default num_ctx (SmolLM2's trained context)


@dataclass
class Run:
    label: str
    parallel: int
    seconds: float
    records: dict[str, dict]
    others: float  # share of the machine's CPU other processes took meanwhile

    @property
    def ok(self) -> list[dict]:
        return [r for r in self.records.values() if r["status"] == "ok"]

    def same_as(self, other: Run) -> int:
        return sum(r["rating"] == other.records.get(r["id"], {}).get("rating") for r in self.ok)


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def cpu_seconds(pid: int) -> float:
    """CPU time of a process still running (the server: not in this process's children's usage until it exits)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def batch(label: str, parallel: int, data: Path, out: Path, backend: list[str], config: list[str],
          server_pid: int | None = None) -> Run:
    other = OtherLoad()
    server_before = cpu_seconds(server_pid) if server_pid else 0.0
    seconds, _ = run_hcp(["batch", str(data), "--out", str(out), *backend, "--parallel", str(parallel), *config])
    server_used = cpu_seconds(server_pid) - server_before if server_pid else 0.0
    others = max(0.0, other.seconds() - server_used) / (cores() * seconds)
    records = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    run = Run(label, parallel, seconds, records, others)
    print(f"{label} N={parallel}: {seconds:.1f} s, {len(run.ok)}/{len(records)} rated, others' CPU {others:.0%}",
          flush=True)
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=20, help="sample transcripts (default 20)")
    parser.add_argument("--seed", type=int, default=7, help="seed of the sample transcripts")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads, embedded and server (default 2)")
    parser.add_argument("--embedded", type=int, nargs="+", default=[1, 4], help="embedded --parallel N (1 first)")
    parser.add_argument("--slots", type=int, nargs="+", default=[1, 4, 8],
                        help="llama-server -np N, rated with --parallel N (1 first)")
    parser.add_argument("--config", type=Path, default=None, help="a config for hcp (default: the default config)")
    parser.add_argument("--force", action="store_true", help="run even on a busy machine")
    args = parser.parse_args()
    if args.embedded[0] != 1 or args.slots[0] != 1:
        sys.exit("--embedded and --slots must start with 1: every N is compared with one at a time")

    from hcp.export.llama_server import build_info, find_server

    binary = find_server()  # says how to build it when it is not built
    info = build_info(binary.parent)
    model, load = quiet_embedded_model(args.force)
    config = ["--config", str(args.config.resolve())] if args.config else []
    threads = str(args.threads)
    with tempfile.TemporaryDirectory(prefix="hcp-bench-llama-server-") as tmp:
        work = Path(tmp)
        data = work / "visits.jsonl"
        run_hcp(["data", "sample", "--n", str(args.n), "--seed", str(args.seed), "--out", str(data)])
        embedded = [batch("embedded", n, data, work / f"embedded-{n}.jsonl",
                          ["--backend", "llama-cpp", "--threads", threads], config) for n in args.embedded]
        served = []
        for slots in args.slots:
            with LlamaServer(model, slots=slots, slot_context=SLOT_CONTEXT, threads=args.threads, binary=binary,
                             log=work / f"server-{slots}.log") as server:
                served.append(batch("llama-server", slots, data, work / f"server-{slots}.jsonl",
                                    ["--backend", "openai", "--base-url", server.url], config,
                                    server.process.pid if server.process else None))

    table = [("engine", "N", "wall s", "transcripts/min", "vs its N=1", "answer tok/s", "rated", "same as its N=1",
              "same as embedded N=1", "others' CPU")]
    for runs in (embedded, served):
        for run in runs:
            answer = sum(r["output_tokens"] for r in run.ok)
            table.append((run.label, str(run.parallel), f"{run.seconds:.1f}", f"{60 * len(run.ok) / run.seconds:.2f}",
                          f"{runs[0].seconds / run.seconds:.2f}x", f"{answer / run.seconds:.1f}",
                          f"{len(run.ok)}/{args.n}", f"{run.same_as(runs[0])}/{len(run.ok)}",
                          f"{run.same_as(embedded[0])}/{len(run.ok)}", f"{run.others:.0%}"))
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    print(f"\n{args.n} sample transcripts (seed {args.seed}), {model.name}, {args.threads} threads on {cores()} cores, "
          f"config {args.config or 'default'}; llama-server of llama-cpp-python {info['version']} "
          f"(llama.cpp {info['llama_cpp']}, {'CUDA' if info['cuda'] else 'CPU'}), {SLOT_CONTEXT} tokens a slot; "
          f"load average before {load:.2f}")
    for row in table:
        print("  ".join(cell.rjust(width) for cell, width in zip(row, widths, strict=True)))
    if max(run.others for run in embedded + served) > 0.05:
        print("other processes used the CPU meanwhile (others' CPU): the times are not clean — run it again on a "
              "quiet machine")


if __name__ == "__main__":
    main()
