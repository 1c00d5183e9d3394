"""Benchmark: what hcp's scoring costs on top of bare llama.cpp, on the embedded default model.

Side by side in one run, alternating so that machine noise hits both alike:
  warm  (a) hcp's scorer in-process (schema grammar, validation) vs (b) bare llama-cpp-python on the same
            prompt tokens without a grammar, generating the same number of tokens (EOS banned);
  cold  `hcp score` as a new process vs a bare script that loads the same GGUF and generates as many tokens.
Run on a quiet machine (llama.cpp threads spin): python scripts/bench_score.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import run_hcp

ROOT = Path(__file__).resolve().parent.parent
BARE = """
import sys, time
from llama_cpp import Llama
path, n, threads, tokens = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), [int(t) for t in sys.argv[4].split(",")]
llm = Llama(model_path=path, n_ctx=8192, n_threads=threads, n_threads_batch=threads, verbose=False)
out = llm.create_completion(tokens, max_tokens=n, temperature=0, logit_bias={llm.token_eos(): -1e9})
assert out["usage"]["completion_tokens"] == n, out["usage"]
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    from hcp.config import load_config
    from hcp.rubric import Rubric
    from hcp.scoring.backends.llama_cpp import LlamaCppBackend
    from hcp.scoring.score import ScoreOptions, score_transcript

    rubric = Rubric.from_config(load_config())
    transcript = (ROOT / "data" / "sample_transcript.txt").read_text()
    backend = LlamaCppBackend(None, threads=args.threads)
    from llama_cpp import Llama

    tokens = backend.prompt_tokens(rubric.messages(transcript))
    options = ScoreOptions(raw_output_dir=Path(tempfile.mkdtemp()))

    first = score_transcript(transcript, backend, rubric, options)  # warm-up: loads pages, compiles the grammar
    n = first.output_tokens
    backend.close()
    # Cold first, while this process holds no model: nothing else runs llama.cpp threads meanwhile.
    hcp_args = ["score", "--file", str(ROOT / "data" / "sample_transcript.txt"), "--backend", "llama-cpp", "--json",
                "--threads", str(args.threads)]
    bare_cmd = [sys.executable, "-c", BARE, str(backend.path), str(n), str(args.threads), ",".join(map(str, tokens))]
    cold_a, cold_b = [], []
    for _ in range(args.repeats):
        cold_a.append(run_hcp(hcp_args).seconds)
        started = time.perf_counter()
        subprocess.run(bare_cmd, check=True, capture_output=True)
        cold_b.append(time.perf_counter() - started)

    backend = LlamaCppBackend(None, threads=args.threads)
    bare = Llama(model_path=str(backend.path), n_ctx=8192, n_threads=args.threads,
                 n_threads_batch=args.threads, verbose=False)
    score_transcript(transcript, backend, rubric, options)
    warm_a, warm_b, n_out = [], [], []
    for _ in range(args.repeats):
        backend._llm.reset()  # both sides evaluate the whole prompt: this compares generation, not caching
        started = time.perf_counter()
        result = score_transcript(transcript, backend, rubric, options)
        warm_a.append(time.perf_counter() - started)
        n_out.append(result.output_tokens)
        bare.reset()
        started = time.perf_counter()
        out = bare.create_completion(tokens, max_tokens=result.output_tokens, temperature=0,
                                     logit_bias={bare.token_eos(): -1e9})
        warm_b.append(time.perf_counter() - started)
        assert out["usage"]["completion_tokens"] == result.output_tokens
    cached = []
    for _ in range(args.repeats):  # hcp as a batch sees it: the rubric prefix already in the KV cache
        started = time.perf_counter()
        score_transcript(transcript, backend, rubric, options)
        cached.append(time.perf_counter() - started)
    backend.close()
    bare.close()

    med = statistics.median
    print(f"prompt {len(tokens)} tokens, answer {n} tokens (warm runs: {n_out}), {args.threads} threads, "
          f"median of {args.repeats}")
    print(f"warm  (a) hcp scorer        {med(warm_a):7.2f} s")
    print(f"warm  (b) bare, no grammar  {med(warm_b):7.2f} s   a/b = {med(warm_a) / med(warm_b):.2f}")
    print(f"warm  hcp, rubric prefix cached {med(cached):7.2f} s")
    print(f"cold  hcp score process     {med(cold_a):7.2f} s")
    print(f"cold  bare load + generate  {med(cold_b):7.2f} s   ratio = {med(cold_a) / med(cold_b):.2f}")


if __name__ == "__main__":
    main()
