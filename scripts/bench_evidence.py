"""Benchmark: what quoted evidence costs and how often the quotes check out, on the embedded default model.

The same sample transcripts rated with scoring.evidence on and off, side by side in one run, alternating per
transcript so that machine noise hits both alike (one model loaded, warm; temperature 0, seed 42). Prints, per
setting, seconds and output tokens per rating, and with evidence on the share of quotes verified.
Run: python scripts/bench_evidence.py [--n 5] [--threads 1] [--model FINE_TUNED.gguf]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections import Counter
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=5, help="sample transcripts (hcp data sample, seed 42)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--model", type=Path, default=None,
                        help="a GGUF to rate with (default: the embedded SmolLM2), e.g. bench_train's fine-tuned one")
    args = parser.parse_args()

    from hcp.config import load_config
    from hcp.data.sample import generate_samples
    from hcp.errors import InvalidOutputError
    from hcp.rubric import Rubric
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.score import ScoreOptions, score_transcript

    scoring = load_config().scoring
    rubrics = {"on": Rubric(scoring), "off": Rubric(scoring.model_copy(update={"evidence": False}))}
    transcripts = [s["transcript"] for s in generate_samples(args.n, seed=42)]
    backend = LlamaCppBackend(str(args.model) if args.model else None, num_ctx=8192, threads=args.threads)
    options = ScoreOptions(raw_output_dir=Path(tempfile.mkdtemp()))
    score_transcript(transcripts[0], backend, rubrics["off"], options)  # warm-up: pages, grammar code paths
    seconds: dict[str, list[float]] = {"on": [], "off": []}
    tokens: dict[str, list[int]] = {"on": [], "off": []}
    problems: Counter[str] = Counter()
    failed = Counter()
    print(f"load average before: {os.getloadavg()}")
    for n, transcript in enumerate(transcripts):
        for setting in ("on", "off") if n % 2 == 0 else ("off", "on"):
            try:
                result = score_transcript(transcript, backend, rubrics[setting], options)
            except InvalidOutputError:
                failed[setting] += 1
                continue
            seconds[setting].append(result.seconds / result.attempts)
            tokens[setting].append(result.output_tokens)
            for checks in result.evidence.values():
                problems.update(c["problem"] or "verified" for c in checks)
    print(f"load average after: {os.getloadavg()}")
    backend.close()
    for setting in ("off", "on"):
        print(f"evidence {setting}: {len(seconds[setting])} ratings ({failed[setting]} invalid), "
              f"{statistics.mean(seconds[setting]):.1f} s/rating (median {statistics.median(seconds[setting]):.1f}), "
              f"{statistics.mean(tokens[setting]):.0f} output tokens/rating")
    ratio = statistics.mean(seconds["on"]) / statistics.mean(seconds["off"])
    total = sum(problems.values())
    print(f"time with evidence / without: {ratio:.2f}x")
    print(f"quotes: {total}, verified {problems['verified']} ({problems['verified'] / max(total, 1):.0%}); "
          f"problems: {dict(problems - Counter(verified=problems['verified']))}")


if __name__ == "__main__":
    main()
