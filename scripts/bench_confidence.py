"""Benchmark: seconds per rating with score probabilities against without, on the embedded default model.

Side by side in one run: each sample transcript is rated with and without the distribution (the same greedy
answer; "without" skips reading the score logits), alternating which goes first, after one warm-up rating.
Run: python scripts/bench_confidence.py [--n 5] [--threads 1] [--repeats 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
from unittest import mock


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()

    import hcp.scoring.backends.llama_cpp as embedded
    from hcp.config import load_config
    from hcp.data.sample import generate_samples
    from hcp.rubric import Rubric
    from hcp.scoring.score import ScoreOptions, score_transcript

    rubric = Rubric.from_config(load_config(None))
    backend = embedded.LlamaCppBackend(None, num_ctx=8192, threads=args.threads)
    transcripts = [s["transcript"] for s in generate_samples(args.n, seed=42)]
    options = ScoreOptions(max_retries=0)
    score_transcript(transcripts[0], backend, rubric, options)  # warm-up: the shared prefix, the digit tokens
    times: dict[str, list[float]] = {"with": [], "without": []}
    tokens: dict[str, list[int]] = {"with": [], "without": []}
    for repeat in range(args.repeats):
        for k, transcript in enumerate(transcripts):
            order = ("with", "without") if (k + repeat) % 2 == 0 else ("without", "with")
            for kind in order:
                if kind == "with":
                    result = score_transcript(transcript, backend, rubric, options)
                    assert result.distribution is not None
                else:
                    with mock.patch.object(embedded, "score_fields", lambda schema: {}):
                        result = score_transcript(transcript, backend, rubric, options)
                    assert result.distribution is None
                times[kind].append(result.seconds)
                tokens[kind].append(result.output_tokens)
    backend.close()
    for kind in ("with", "without"):
        print(f"{kind:>8} probabilities: mean {statistics.mean(times[kind]):.2f} s/rating, per rating "
              f"{[round(t, 2) for t in times[kind]]}, output tokens {tokens[kind]}")
    ratio = sum(times["with"]) / sum(times["without"])
    print(f"ratio with/without: {ratio:.3f} (threads {args.threads}, load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()
