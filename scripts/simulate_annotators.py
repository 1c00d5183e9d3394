"""Three simulated annotators with known noise, and what `hcp data agreement` and `hcp data consensus` find.

The sample generator's conversations (`generate_samples(200, 42)`) carry their true labels. Three annotators
rate them again:

- faithful: the true score, moved one point up or down (at random, clipped to 1..5) one time in ten;
- biased: the true score plus one, clipped to 5 (a 5 stays 5, so the expected offset is below +1);
- noisy: the true score moved one point up or down (at random, clipped) four times in ten.

Their files (faithful.jsonl, biased.jsonl, noisy.jsonl: the samples with the scores changed) go into FOLDER, with
the agreement report in FOLDER/report and the consensus labels in FOLDER/consensus.jsonl. Printed: alpha per
dimension and overall with 95% intervals, each annotator's overall offset, who is furthest from the others, what
the consensus wrote and left out, and how often each annotator's and the consensus's scores equal the truth.

    PYTHONPATH=. .venv/bin/python scripts/simulate_annotators.py bench/annotators
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from hcp.config import load_config
from hcp.data.dataset import write_jsonl
from hcp.data.sample import SAMPLE_DIMENSIONS, generate_samples
from hcp.raters.agreement import AgreementOptions, run_agreement
from hcp.raters.consensus import ConsensusOptions, run_consensus
from hcp.rubric import Rubric

FAITHFUL_SLIPS = 0.1  # share of the faithful annotator's scores moved one point
NOISY_SLIPS = 0.4  # share of the noisy annotator's scores moved one point


def clip(score: int) -> int:
    return min(5, max(1, score))


def annotators(samples: list[dict], seed: int) -> dict[str, list[dict]]:
    """Each annotator's records: the samples with every score changed by that annotator's rule."""
    rng = random.Random(seed)

    def slip(score: int, chance: float) -> int:
        return clip(score + rng.choice((-1, 1))) if rng.random() < chance else score

    rules = {
        "faithful": lambda s: slip(s, FAITHFUL_SLIPS),
        "biased": lambda s: clip(s + 1),
        "noisy": lambda s: slip(s, NOISY_SLIPS),
    }
    return {name: [{**r, **{d: rule(r[d]) for d in SAMPLE_DIMENSIONS}} for r in samples]
            for name, rule in rules.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="where to write the three files, the report and the consensus")
    parser.add_argument("--n", type=int, default=200, help="sample conversations")
    parser.add_argument("--seed", type=int, default=42, help="of the sample generator (the noise uses seed + 1)")
    args = parser.parse_args()

    rubric = Rubric.from_config(load_config())
    samples = generate_samples(args.n, args.seed)
    rated = annotators(samples, args.seed + 1)
    files = [write_jsonl(args.folder / f"{name}.jsonl", records) for name, records in rated.items()]

    agreement = run_agreement(AgreementOptions(tuple(files), args.folder / "report"), rubric).metrics
    print(f"{args.n} transcripts, 3 annotators; 95% bootstrap intervals ({agreement['resamples']} resamples)")
    print(f"{'':16} {'alpha':>22} {'mean pairwise QWK':>22}")
    for name, d in agreement["dimensions"].items():
        alpha, qwk = d["alpha"], d["qwk"]
        print(f"{name:16} {alpha['value']:>7.3f} [{alpha['ci_low']:.3f}, {alpha['ci_high']:.3f}] "
              f"{qwk['value']:>7.3f} [{qwk['ci_low']:.3f}, {qwk['ci_high']:.3f}]")
    for name, offsets in agreement["offsets"].items():
        o = offsets["overall"]
        print(f"offset of {name:9} overall {o['value']:+.3f} [{o['ci_low']:+.3f}, {o['ci_high']:+.3f}]")
    largest = agreement["largest_offset"]
    print(f"largest offset: {largest['annotator']} ({largest['overall']:+.3f} overall)")
    print(f"to adjudicate: {len(agreement['adjudicate'])} transcripts")

    out = args.folder / "consensus.jsonl"
    consensus = run_consensus(ConsensusOptions(tuple(files), out), rubric)
    print(f"consensus: wrote {consensus.written}, disputed and left out {consensus.disputed}, "
          f"without a verified quote {consensus.unsupported}")

    truth = {r["transcript"]: r for r in samples}
    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]

    def equal(records: list[dict]) -> float:
        same = [r[d] == truth[r["transcript"]][d] for r in records for d in SAMPLE_DIMENSIONS]
        return sum(same) / len(same)

    by_text = {name: {r["transcript"]: r for r in records} for name, records in rated.items()}
    kept = [r["transcript"] for r in written]
    shares = ", ".join(f"{name} {equal([by_text[name][t] for t in kept]):.3f}" for name in by_text)
    print(f"scores equal to the truth on the {len(kept)} written: consensus {equal(written):.3f}; {shares}")


if __name__ == "__main__":
    main()
