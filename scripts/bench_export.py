"""Benchmark of the export path, in one run, side by side.

1. Peak RSS of `hcp merge` (streaming, tensor by tensor) against peft's `merge_and_unload` + `save_pretrained`,
   each in its own process, on a random llama model of about 1B parameters saved in several shards.
2. GGUF conversion throughput (MB/s) of `hcp`'s converter against a plain file copy of the same bytes.
3. The time of each `hcp export-ollama` step for SmolLM2-135M (the embedded default model as the base, with a
   random LoRA adapter), no daemon.

    python scripts/bench_export.py [--work DIR] [--layers 16]

Needs about 12 GB of disk in --work (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import run_hcp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the tests' model builders, so that the benchmark builds what the tests check
from tests.tiny import build_tiny_llama_bpe, make_adapter  # noqa: E402

PYTHON = sys.executable

PEFT_MERGE = """
import sys, torch
from peft import PeftModel
from transformers import AutoModelForCausalLM
base, adapter, out = sys.argv[1:4]
model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float16)
merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
merged.save_pretrained(out, max_shard_size="500MB")
"""

HCP_MERGE = """
import sys
from hcp.export.merge import merge_adapter
merge_adapter(sys.argv[2], sys.argv[3], base=sys.argv[1], dtype="f16")
"""


def build_base(folder: Path, layers: int) -> int:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer_dir = build_tiny_llama_bpe(folder / "tok")  # any llama tokenizer will do; the vocab is padded
    config = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers,
                         num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                         tie_word_embeddings=False)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = LlamaForCausalLM(config).to(torch.float16)
    params = sum(p.numel() for p in model.parameters())
    base = folder / "base"
    model.save_pretrained(base, max_shard_size="500MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, base / name)
    return params


def bench_adapter(base: Path, folder: Path) -> Path:
    """An adapter of the LoRA size in configs/config.yaml (r 8, alpha 16), with random B (std 0.01) as after
    training. The base loads in float16, as it is stored: in float32 the 1B base would take twice the memory."""
    return make_adapter(base, folder, r=8, alpha=16, dtype="float16", std=0.01)


def run_measured(code: str, *args: str) -> tuple[float, float]:
    """(seconds, peak RSS in MB) of a child process; ru_maxrss of RUSAGE_CHILDREN is the largest child so far,
    so each measurement runs in a fresh grandchild and reports its own figure."""
    wrapper = (f"import resource, subprocess, sys, time; t=time.perf_counter(); "
               f"subprocess.run([sys.executable, '-c', {code!r}, *sys.argv[1:]], check=True); "
               f"print(time.perf_counter()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)")
    out = subprocess.run([PYTHON, "-c", wrapper, *args], check=True, capture_output=True, text=True).stdout
    seconds, rss = out.split()[-2:]
    return float(seconds), float(rss)


def folder_bytes(folder: Path, pattern: str = "*.safetensors") -> int:
    return sum(p.stat().st_size for p in folder.glob(pattern))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--layers", type=int, default=16, help="16 layers: about 1B parameters")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hcp-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        started = time.perf_counter()
        params = build_base(work, args.layers)
        bench_adapter(work / "base", work / "adapter")
        shards = len(list((work / "base").glob("*.safetensors")))
        print(f"base: {params / 1e9:.2f} B parameters, {folder_bytes(work / 'base') / 1e9:.2f} GB f16 in {shards} "
              f"shards (built in {time.perf_counter() - started:.0f} s)")

        peft_s, peft_rss = run_measured(PEFT_MERGE, str(work / "base"), str(work / "adapter"), str(work / "peft"))
        hcp_s, hcp_rss = run_measured(HCP_MERGE, str(work / "base"), str(work / "adapter"), str(work / "hcp"))
        print(f"merge  peft merge_and_unload + save_pretrained: {peft_s:6.1f} s, peak RSS {peft_rss:7.0f} MB")
        print(f"merge  hcp merge (streaming):                   {hcp_s:6.1f} s, peak RSS {hcp_rss:7.0f} MB  "
              f"ratio {hcp_rss / peft_rss:.2f}")

        from hcp.export.convert import convert_to_gguf

        size = folder_bytes(work / "hcp")
        copies = []
        for shard in sorted((work / "hcp").glob("*.safetensors")):
            t = time.perf_counter()
            shutil.copyfile(shard, work / f"copy-{shard.name}")
            copies.append(time.perf_counter() - t)
        copy_s = sum(copies)
        t = time.perf_counter()
        convert_to_gguf(work / "hcp", work / "model.F16.gguf", outtype="f16")
        convert_s = time.perf_counter() - t
        print(f"convert  {size / 1e6:.0f} MB: hcp {size / 1e6 / convert_s:6.0f} MB/s ({convert_s:.1f} s), "
              f"file copy {size / 1e6 / copy_s:6.0f} MB/s ({copy_s:.1f} s), ratio {copy_s / convert_s:.2f}")
        for path in work.glob("copy-*"):
            path.unlink()

        export_smollm2(work)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def export_smollm2(work: Path) -> None:
    from hcp.scoring.backends.llama_cpp import default_model_path
    from hcp.train.base_model import materialize_gguf

    t = time.perf_counter()
    base = materialize_gguf(default_model_path())
    print(f"SmolLM2 base materialized from the GGUF (cached after the first run): {time.perf_counter() - t:.1f} s")
    bench_adapter(base, work / "smol-adapter")
    config = json.loads((work / "smol-adapter" / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(base)
    (work / "smol-adapter" / "adapter_config.json").write_text(json.dumps(config))
    out = run_hcp(["export-ollama", str(work / "smol-adapter"), "--name", "bench-rater", "--no-create", "--out",
                   str(work / "smol-export")], cwd=work).stdout
    print("export-ollama steps for SmolLM2-135M (adapter on all linear layers, Q4_K_M):")
    print("\n".join("  " + line for line in out.splitlines()))


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    main()
