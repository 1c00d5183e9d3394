"""Figure: what `/metrics` says per model version during a canary rollout.

The server (real uvicorn, in this process) rates with two embedded versions: the current one (`--current`, by
default the stock SmolLM2) and a canary (`--canary`, a GGUF) that rates `--share` of the transcripts, chosen by
content id. The canary carries a reference score distribution, as a registry manifest's `score_distribution`
would: the histogram of its ratings in `--reference`, a results file of `hcp batch` or `hcp evaluate` made with
it on its validation set. The transcripts of `--data` go through POST /batch; then the script prints each
transcript's version and the `hcp_version_*`, `hcp_drift_*` and `hcp_shadow_*` lines of /metrics.

    .venv/bin/python scripts/canary_metrics.py --canary models/rd/export/hcp-rater.Q8_0.gguf \\
        --reference eval/predictions/model-...jsonl --data test.jsonl --share 0.5 --threads 1

llama.cpp threads spin while they wait: each version gets --threads, and the server runs one at a time.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import httpx

from hcp.batch.results import read_results
from hcp.config import load_config
from hcp.rubric import Rubric
from hcp.scoring.backends.llama_cpp import LlamaCppBackend
from hcp.scoring.score import ScoreOptions
from hcp.serve.server import BackgroundServer, build_app
from hcp.serve.settings import ServeSettings
from hcp.serve.versions import Deployed, histogram

SHOWN = ("hcp_version_info", "hcp_version_ratings_total", "hcp_version_failures_total", "hcp_version_needs_review",
         "hcp_version_score_bucket", "hcp_version_confidence_sum", "hcp_version_confidence_count", "hcp_drift_",
         "hcp_shadow_")


def reference_distribution(results: Path, rubric: Rubric) -> dict[str, list[int]]:
    """{dimension: [count of each score]} of the ok ratings in a results file."""
    ratings = [r["rating"] for r in read_results(results).values() if r.get("status") == "ok"]
    return {dim: histogram((r[dim] for r in ratings), rubric.scores) for dim in rubric.names}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--current", default=None, help="GGUF of the current version (default: the embedded one)")
    parser.add_argument("--canary", required=True, help="GGUF of the canary version")
    parser.add_argument("--reference", type=Path, required=True, help="the canary's ratings of its validation set")
    parser.add_argument("--data", type=Path, required=True, help="JSONL of transcripts to rate")
    parser.add_argument("--share", type=float, default=0.5)
    parser.add_argument("--n", type=int, default=16, help="transcripts of --data to rate")
    parser.add_argument("--config", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--num-ctx", type=int, default=4096)
    args = parser.parse_args()

    rubric = Rubric.from_config(load_config(args.config))
    reference = reference_distribution(args.reference, rubric)
    rows = [json.loads(line) for line in args.data.read_text().splitlines() if line.strip()][: args.n]
    current = LlamaCppBackend(args.current, num_ctx=args.num_ctx, threads=args.threads)
    canary = LlamaCppBackend(args.canary, num_ctx=args.num_ctx, threads=args.threads)
    print(f"reference (canary on its validation set): {json.dumps(reference)}")
    with tempfile.TemporaryDirectory() as folder:
        settings = ServeSettings(reviews=Path(folder) / "reviews.jsonl", work_dir=Path(folder) / "work",
                                 canary_share=args.share)
        app = build_app(Deployed("smollm2:1", current), rubric, ScoreOptions(num_ctx=args.num_ctx), settings,
                        canary=Deployed("hcp-rater:2", canary, reference))
        try:
            with BackgroundServer(app, access_log=False) as server:
                started = time.perf_counter()
                batch = httpx.post(server.url + "/batch", json=[{"id": r.get("id", f"row{i}"),
                                                                 "transcript": r["transcript"]}
                                                                for i, r in enumerate(rows)], timeout=3600)
                seconds = time.perf_counter() - started
                text = httpx.get(server.url + "/metrics").text
        finally:
            app.state.service.close()
            current.close()
            canary.close()
    records = [json.loads(line) for line in batch.text.splitlines()]
    print(f"{len(records)} transcripts in {seconds:.0f} s; by version: " + ", ".join(
        f"{r['id']}={r.get('model_version')}:{r['status']}" for r in records))
    for line in text.splitlines():
        if line.startswith(SHOWN) and not line.startswith("#"):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
