"""Benchmark of the export path, in one run, side by side.

1. Peak RSS of `hcp merge` (streaming, tensor by tensor) against peft's `merge_and_unload` + `save_pretrained`,
   each in its own process, on a random model of about 1B parameters (llama, or --arch qwen2 / phi3) saved in
   several shards.
2. GGUF conversion (F16) of that merged model: time and peak RSS of hcp's writer (llama family only) and of
   llama.cpp's converter (convert_hf_to_gguf.py with hcp's additions, run the way export runs it), each in its
   own process, and the throughput of a plain file copy of the same bytes for scale.
3. The time of each `hcp export-ollama` step for SmolLM2-135M (the embedded default model as the base, with a
   random LoRA adapter), no daemon.

    python scripts/bench_export.py [--work DIR] [--layers 16] [--arch llama]

Needs about 12 GB of disk in --work (default: a temporary folder, removed afterwards).
"""

from __future__ import annotations

import argparse
import json
import os
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
from tests.tiny import LORA_TARGETS, build_tiny_llama_bpe, make_adapter  # noqa: E402

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

# The reference runs in a child of this process (as in export): the peak is the larger of the two processes'.
CONVERT = """
import sys
from hcp.export.convert import convert_to_gguf
convert_to_gguf(sys.argv[1], sys.argv[2], outtype="f16", engine=sys.argv[3])
"""

# ~1B parameters in each architecture's own layout (Phi-3 fuses q/k/v and gate/up).
SHAPES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", {"original_max_position_embeddings": 4096, "pad_token_id": 0}),
}


def build_base(folder: Path, layers: int, arch: str = "llama") -> int:
    import torch
    import transformers

    tokenizer_dir = build_tiny_llama_bpe(folder / "tok")  # any byte-level BPE tokenizer will do; the vocab is padded
    config_name, model_name, extra = SHAPES[arch]
    config = getattr(transformers, config_name)(
        vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=layers, num_attention_heads=32,
        num_key_value_heads=8, max_position_embeddings=4096, tie_word_embeddings=False, **extra)
    torch.manual_seed(0)
    with torch.device("cpu"):
        model = getattr(transformers, model_name)(config).to(torch.float16)
    params = sum(p.numel() for p in model.parameters())
    base = folder / "base"
    model.save_pretrained(base, max_shard_size="500MB")
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        if (tokenizer_dir / name).is_file():
            shutil.copy2(tokenizer_dir / name, base / name)
    return params


def bench_adapter(base: Path, folder: Path) -> Path:
    """An adapter of the LoRA size in configs/config.yaml (r 8, alpha 16) on every linear layer, with random B (std
    0.01) as after training. The base loads in float16, as it is stored: in float32 the 1B base would take twice
    the memory."""
    from transformers import AutoConfig

    fused = AutoConfig.from_pretrained(base).model_type == "phi3"
    targets = ("qkv_proj", "o_proj", "gate_up_proj", "down_proj") if fused else LORA_TARGETS
    return make_adapter(base, folder, r=8, alpha=16, dtype="float16", std=0.01, targets=targets)


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
    parser.add_argument("--arch", choices=sorted(SHAPES), default="llama",
                        help="the base's architecture (hcp's own writer converts llama only)")
    parser.add_argument("--skip-smollm2", action="store_true", help="leave out the export-ollama steps (part 3)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="hcp-bench-export-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the start")
        started = time.perf_counter()
        params = build_base(work, args.layers, args.arch)
        bench_adapter(work / "base", work / "adapter")
        shards = len(list((work / "base").glob("*.safetensors")))
        print(f"base: {args.arch}, {params / 1e9:.2f} B parameters, {folder_bytes(work / 'base') / 1e9:.2f} GB f16 in "
              f"{shards} shards (built in {time.perf_counter() - started:.0f} s)")

        peft_s, peft_rss = run_measured(PEFT_MERGE, str(work / "base"), str(work / "adapter"), str(work / "peft"))
        hcp_s, hcp_rss = run_measured(HCP_MERGE, str(work / "base"), str(work / "adapter"), str(work / "hcp"))
        print(f"merge  peft merge_and_unload + save_pretrained: {peft_s:6.1f} s, peak RSS {peft_rss:7.0f} MB")
        print(f"merge  hcp merge (streaming):                   {hcp_s:6.1f} s, peak RSS {hcp_rss:7.0f} MB  "
              f"ratio {hcp_rss / peft_rss:.2f}")
        shutil.rmtree(work / "peft", ignore_errors=True)
        bench_convert(work, args.arch)
        if not args.skip_smollm2:
            export_smollm2(work)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


def bench_convert(work: Path, arch: str) -> None:
    """hcp's writer and llama.cpp's converter on the same merged model, each in a fresh process, one after the
    other; a file copy of the same bytes for scale."""
    size = folder_bytes(work / "hcp")
    copies = []
    for shard in sorted((work / "hcp").glob("*.safetensors")):
        t = time.perf_counter()
        shutil.copyfile(shard, work / f"copy-{shard.name}")
        copies.append(time.perf_counter() - t)
    copy_s = sum(copies)
    for path in work.glob("copy-*"):
        path.unlink()
    print(f"convert  {size / 1e6:.0f} MB merged (f16) to F16 GGUF; file copy {size / 1e6 / copy_s:5.0f} MB/s "
          f"({copy_s:.1f} s)")
    engines = ("hcp", "reference") if arch == "llama" else ("reference",)
    results = {}
    for engine in engines:
        seconds, rss = run_measured(CONVERT, str(work / "hcp"), str(work / f"{engine}.F16.gguf"), engine)
        results[engine] = (seconds, rss)
        label = "hcp's writer" if engine == "hcp" else "llama.cpp's converter (+ hcp's additions)"
        print(f"convert  {label:42s} {seconds:6.1f} s, {size / 1e6 / seconds:5.0f} MB/s, peak RSS {rss:6.0f} MB")
    if len(results) == 2:
        (hs, hr), (rs, rr) = results["hcp"], results["reference"]
        print(f"convert  hcp / reference: time {hs / rs:.2f}, peak RSS {hr / rr:.2f}")
    for engine in engines:
        (work / f"{engine}.F16.gguf").unlink(missing_ok=True)


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
