"""Benchmark: where training memory goes, and what answer-only logits and checkpointing save.

The same short `hcp train` run (SmolLM2-135M from its GGUF, the same sample transcripts, the same steps and
seed), each in a process of its own, in three settings:

  all logits      logits for every position, the loss taken on the answer (hcp before answer-only logits;
                  the child's PadCollator is told to keep them all)
  answer logits   logits only from the position that predicts the first answer token (hcp's default)
  + checkpointing answer logits, and model.gradient_checkpointing: true

It prints each setting's peak resident memory, training tokens per second and loss per step, with the ratios to
the first setting and the largest loss difference per step (answer-only logits change what is computed, not the
loss). Run it on a quiet machine; `--repeats 2` alternates the settings twice.

    .venv/bin/python scripts/bench_train_memory.py                      # 8 transcripts, 6 steps
    .venv/bin/python scripts/bench_train_memory.py --n 4 --steps 2       # a smoke run
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import yaml
from benchlib import OtherLoad, run_hcp

ALL_LOGITS = ("import hcp.train.trainer as trainer\n"
              "trainer.PadCollator.__init__.__defaults__ = (False,)  # answer_logits_only=False\n")
SETTINGS = (("all logits", ALL_LOGITS, False), ("answer logits", None, False), ("+ checkpointing", None, True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=8, help="sample transcripts to train on")
    parser.add_argument("--steps", type=int, default=6, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--work", type=Path, default=Path("bench/train_memory"))
    args = parser.parse_args()

    from hcp.scoring.backends.llama_cpp import default_model_path

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    env = {"OMP_NUM_THREADS": str(args.threads), "TOKENIZERS_PARALLELISM": "false"}
    data = work / "data.jsonl"
    run_hcp(["data", "sample", "--n", str(args.n), "--seed", "42", "--out", str(data)], env=env)
    training = {"learning_rate": 1e-3, "batch_size": args.batch_size, "gradient_accumulation_steps": 1,
                "warmup_steps": 0, "logging_steps": 1, "eval_steps": 1000, "save_steps": 1000, "seed": 42}
    other = OtherLoad()
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in SETTINGS}
    for repeat in range(args.repeats):
        for index, (name, prelude, checkpointing) in enumerate(SETTINGS):
            config = work / f"config-{index}.yaml"
            config.write_text(yaml.safe_dump({"training": training,
                                              "model": {"gradient_checkpointing": checkpointing}}))
            out = work / f"adapter-{index}-{repeat}"
            run_hcp(["train", "--data", str(data), "--val-fraction", "0", "--base", str(default_model_path()),
                     "--output", str(out), "--config", str(config), "--max-steps", str(args.steps)],
                    env=env, log=work / f"train-{index}-{repeat}.log", prelude=prelude)
            metrics = json.loads((out / "metrics.json").read_text())
            runs[name].append({**metrics["summary"], "losses": [e["loss"] for e in metrics["train"]]})

    first = runs[SETTINGS[0][0]]
    print(f"{args.steps} steps of {args.batch_size} of {args.n} sample transcripts, SmolLM2-135M on the CPU, "
          f"{args.threads} threads, {args.repeats} repeat(s); others' CPU meanwhile {other.seconds():.0f} s\n")
    print(f"{'setting':<16} {'peak MB':>8} {'x':>6} {'tokens/s':>9} {'x':>6}   largest loss difference per step")
    result = {}
    for name, _, _ in SETTINGS:
        mine = runs[name]
        peak = max(r["peak_memory_mb"] for r in mine)
        speed = sum(r["tokens_per_second"] for r in mine) / len(mine)
        base_peak = max(r["peak_memory_mb"] for r in first)
        base_speed = sum(r["tokens_per_second"] for r in first) / len(first)
        drift = max(abs(a - b) for r, f in zip(mine, first, strict=True)
                    for a, b in zip(r["losses"], f["losses"], strict=True))
        result[name] = {"peak_memory_mb": round(peak), "tokens_per_second": round(speed, 1),
                        "peak_ratio": round(peak / base_peak, 3), "speed_ratio": round(speed / base_speed, 3),
                        "loss_difference": drift, "losses": [r["losses"] for r in mine],
                        "train_tokens": mine[0]["train_tokens"]}
        print(f"{name:<16} {peak:8.0f} {peak / base_peak:6.2f} {speed:9.1f} {speed / base_speed:6.2f}   {drift:.2e}")
    (work / "bench_train_memory.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nfigures: {work / 'bench_train_memory.json'}")


if __name__ == "__main__":
    main()
