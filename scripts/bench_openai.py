"""hcp batch through an OpenAI-compatible server at --parallel 1, 2, 4: throughput, and whether the ratings
equal those of --parallel 1.

The server is llama-cpp-python's own (`python -m llama_cpp.server`, the `server` extra), started here on
127.0.0.1 with the embedded SmolLM2 GGUF. It decodes one request at a time, so here --parallel can only overlap
hcp's own work (tokenize calls, validation, writing) with the server's; an engine that batches requests (vLLM,
llama-server with -np N) is where it multiplies throughput.

    .venv/bin/python scripts/bench_openai.py                 # 20 sample transcripts, server on 2 threads
    .venv/bin/python scripts/bench_openai.py --n 6 --parallel 1 4
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from benchlib import run_hcp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hcp.data.sample import generate_samples  # noqa: E402
from hcp.scoring.backends.llama_cpp import default_model_path  # noqa: E402
from tests.openai_server import LlamaCppServer  # noqa: E402


def ratings(path: Path) -> dict[str, dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return {r["id"]: r["rating"] for r in records if r["status"] == "ok"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="sample transcripts")
    parser.add_argument("--parallel", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--threads", type=int, default=2, help="the server's llama.cpp threads")
    parser.add_argument("--config", type=Path, default=None, help="a config for hcp batch (e.g. scoring.evidence)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-openai-"))
    visits = work / "visits.jsonl"
    visits.write_text("".join(json.dumps({"id": f"v{i}", "transcript": s["transcript"]}) + "\n"
                              for i, s in enumerate(generate_samples(args.n, seed=5))))
    print(f"{args.n} sample transcripts, SmolLM2-135M Q4_1 in llama-cpp-python's server, {args.threads} threads, "
          f"load average before {os.getloadavg()[0]:.2f}")
    server = LlamaCppServer(default_model_path(), threads=args.threads)
    results: dict[int, tuple[float, Path]] = {}
    with server:
        for parallel in args.parallel:
            out = work / f"ratings-p{parallel}.jsonl"
            config = ["--config", str(args.config.resolve())] if args.config else []
            run = run_hcp(["batch", str(visits), "--out", str(out), "--backend", "openai", "--base-url", server.url,
                           "--parallel", str(parallel), *config], cwd=work)
            results[parallel] = (run.seconds, out)
    base_seconds, base_out = results[args.parallel[0]]
    reference = ratings(base_out)
    print(f"{'parallel':>8} {'seconds':>8} {'transcripts/min':>16} {'vs first':>9} {'same ratings':>13}")
    for parallel, (seconds, out) in results.items():
        got = ratings(out)
        same = sum(got.get(i) == r for i, r in reference.items())
        print(f"{parallel:>8} {seconds:>8.1f} {60 * len(got) / seconds:>16.1f} {base_seconds / seconds:>8.2f}x "
              f"{same:>6}/{len(reference)}")
    print(f"load average after {os.getloadavg()[0]:.2f}; files in {work}")


if __name__ == "__main__":
    main()
