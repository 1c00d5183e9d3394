"""Score parity of each quantization type against the trained model: the table of issue 22.

For a fine-tuned adapter (default: the README's CPU path, SmolLM2-135M), the export's own steps run once (merge,
F16 conversion, the parity reference: the F16 GGUF's answers to N transcripts and the trained model's score
distributions there), then each type is quantized and checked exactly as `hcp export-ollama` checks it
(hcp/export/parity.py). Printed, per type: the file's size, the share of dimension scores whose most likely score
agrees with the trained model's, the mean |Δ expected score|, the largest KL divergence, the shares of free ratings
and of their scores equal to the F16 GGUF's (compared here for every type; the export compares only a type it
keeps), the seconds per free rating (made as `hcp score` makes one), and the check's seconds per transcript. Then
what `--quant auto` keeps (the smallest type that meets the target), and, with --run-auto, what a real
`hcp export-ollama --quant auto` chose.

    python scripts/bench_parity.py ADAPTER [--transcripts 20] [--config CONFIG] [--threads 2] [--run-auto]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import run_hcp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from hcp.config import load_config  # noqa: E402
from hcp.export.convert import convert_to_gguf  # noqa: E402
from hcp.export.merge import merge_adapter  # noqa: E402
from hcp.export.parity import (  # noqa: E402
    ParityTarget,
    build_reference,
    check_parity,
    parity_transcripts,
    trained_dtype,
)
from hcp.export.pipeline import AUTO_ORDER  # noqa: E402
from hcp.export.quantize import quantize_gguf  # noqa: E402
from hcp.rubric import Rubric  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("adapter", type=Path)
    parser.add_argument("--transcripts", type=int, default=20)
    parser.add_argument("--config", type=Path, default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None, help="folder for the GGUFs (default: a temporary one)")
    parser.add_argument("--run-auto", action="store_true", help="also run `hcp export-ollama --quant auto`")
    args = parser.parse_args()

    config = load_config(args.config)
    rubric, target = Rubric.from_config(config), ParityTarget()
    work = args.work or Path(tempfile.mkdtemp(prefix="hcp-parity-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        merged = merge_adapter(args.adapter, work / "merged").output
        wide = work / "bench.F16.gguf"
        convert_to_gguf(merged, wide, outtype="f16", name="bench")
        print(f"merge + convert: {time.perf_counter() - started:.1f} s", flush=True)
        transcripts, origin = parity_transcripts(args.adapter, args.transcripts)
        dtype = trained_dtype(args.adapter)
        reference = build_reference(merged, wide, transcripts, origin, rubric, config, dtype, args.threads)
        print(f"reference: {len(transcripts)} {origin} transcripts, trained model in {dtype}, "
              f"{reference.seconds:.1f} s", flush=True)
        rows = []
        for quant in AUTO_ORDER:
            gguf = wide if quant == "f16" else work / f"bench.{quant.upper()}.gguf"
            if quant != "f16":
                quantize_gguf(wide, gguf, quant, threads=args.threads)
            report = check_parity(reference, gguf, quant, rubric, config, target, args.threads, free=True)
            rows.append((quant, gguf.stat().st_size / 1e6, report))
            print(f"  {report.line()} (check {report.seconds:.1f} s, {report.seconds_per_rating:.2f} s a rating)",
                  flush=True)
        print_table(rows, target, len(transcripts), origin, args.threads)
        if args.run_auto:
            run_auto(args, work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def print_table(rows: list, target: ParityTarget, transcripts: int, origin: str, threads: int) -> None:
    print(f"\nparity against the trained model, {transcripts} {origin} transcripts, {threads} thread(s); "
          f"target: {target}")
    print("| type | size MB | most likely agrees | mean abs Δ expected | max KL | ratings = F16's | scores = F16's "
          "| s / rating | check s / transcript |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for quant, size, r in rows:
        print(f"| {quant} | {size:.1f} | {r.agreement:.1%} | {r.mean_abs_expected:.3f} | {r.max_kl:.4f} | "
              f"{r.ratings_equal:.0%} | {r.scores_equal:.0%} | {r.seconds_per_rating:.2f} | "
              f"{r.seconds_per_transcript:.2f} |")
    chosen = next((quant for quant, _, r in rows if r.passed), None)
    print(f"\n--quant auto keeps: {chosen or 'none (even f16 falls short)'} — the smallest type meeting the target")


def run_auto(args: argparse.Namespace, work: Path) -> None:
    command = ["export-ollama", str(args.adapter), "--name", "bench-auto", "--quant", "auto", "--no-create",
               "--out", str(work / "auto"), "--parity-transcripts", str(args.transcripts),
               "--threads", str(args.threads)]
    if args.config:
        command += ["--config", str(args.config)]
    result = run_hcp(command, cwd=work)
    chosen = [line for line in result.stdout.splitlines() if line.startswith("auto")]
    print(f"\nhcp export-ollama --quant auto ({result.seconds:.0f} s): {' '.join(chosen)}")
    print(json.dumps([line for line in result.stdout.splitlines() if line.startswith("parity")], indent=1))


if __name__ == "__main__":
    main()
