"""Folding a LoRA adapter into its base model, tensor by tensor.

peft's `merge_and_unload` needs the whole model in memory (and `save_pretrained` a second copy while it
serializes). Here each base shard is read lazily with safetensors, each targeted weight gets
`W + scale * B @ A` (computed in float32), and the result is streamed to a new shard: peak memory stays near
the largest single tensor, so a 7B model merges on a 16 GB laptop.

Besides lora_A / lora_B, a peft adapter file may hold tensors that replace the base's whole (trained biases,
saved as `...q_proj.base_layer.bias` for a wrapped layer; `modules_to_save` such as lm_head) and lora_B biases
(`lora_bias=True`), which merge as `b + scale * b_B`, as peft's own merge does. Every adapter tensor must land
on a base tensor of its shape, or the merge stops before writing: a tensor left out is a silently different
model.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hcp import __version__
from hcp.errors import ExportError
from hcp.files import atomic_write_text, copy_private, make_folder

ADAPTER_PREFIX = "base_model.model."
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "special_tokens_map.json",
                   "chat_template.jinja", "added_tokens.json", "vocab.json", "merges.txt")
OUT_DTYPES = {"f32": "float32", "f16": "float16", "bf16": "bfloat16"}
PROVENANCE_FILE = "hcp_provenance.json"


@dataclass(frozen=True)
class LoraPair:
    module: str  # e.g. model.layers.0.self_attn.q_proj
    a: str  # adapter tensor names
    b: str
    scale: float
    b_bias: str | None = None  # lora_B's bias (peft lora_bias=True), added times `scale` to the module's bias


@dataclass
class MergeResult:
    output: Path
    base: Path
    dtype: str
    merged_modules: int
    tensors: int
    bytes_written: int
    seconds: float
    replaced: list[str]  # base tensors the adapter saved whole (trained biases, modules_to_save)


def read_json_object(path: Path) -> dict[str, Any]:
    """A JSON object that 'hcp train' (or peft) wrote into an adapter folder, or one line saying it is damaged."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as exc:  # JSONDecodeError, UnicodeDecodeError, unreadable
        problem = f"not a readable JSON file ({exc.__class__.__name__})"
    else:
        if isinstance(data, dict):
            return data
        problem = f"expected a JSON object, got {type(data).__name__}"
    raise ExportError(f"{path}: {problem} — restore the file 'hcp train' wrote, or train the adapter again")


def read_adapter_config(adapter: Path) -> dict[str, Any]:
    path = adapter / "adapter_config.json"
    if not adapter.is_dir():
        raise ExportError(f"{adapter}: not a folder — give the adapter folder that 'hcp train' wrote")
    if not path.is_file():
        raise ExportError(f"{adapter}: no adapter_config.json — is this the output folder of 'hcp train'?")
    config = read_json_object(path)
    if config.get("peft_type", "LORA") != "LORA":
        raise ExportError(f"{path}: peft_type {config.get('peft_type')} — only LoRA adapters can be merged")
    for flag, what in (("use_dora", "DoRA"), ("fan_in_fan_out", "fan_in_fan_out (GPT-2 Conv1D)")):
        if config.get(flag):
            raise ExportError(f"{path}: {what} adapters are not supported by hcp merge")
    if not (adapter / "adapter_model.safetensors").is_file():
        raise ExportError(f"{adapter}: no adapter_model.safetensors — hcp only reads safetensors adapters")
    return config


def resolve_adapter_base(adapter: Path, base: str | Path | None) -> Path:
    """The base an adapter was trained on: `base` if given, else what training recorded."""
    from hcp.train.base_model import resolve_base

    if base is None:
        training = adapter / "training_config.json"
        recorded = read_json_object(training).get("base", {}) if training.is_file() else {}
        if isinstance(recorded, dict) and recorded.get("path") and Path(recorded["path"]).is_dir():
            base = recorded["path"]
        elif isinstance(recorded, dict) and recorded.get("given"):
            base = recorded["given"]
        else:
            base = read_adapter_config(adapter).get("base_model_name_or_path")
        if not base:
            raise ExportError(f"{adapter}: the adapter does not say which base it was trained on — pass --base")
    ref = resolve_base(str(base))
    return ref.path


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    # peft matches rank_pattern / alpha_pattern keys against the end of the module name.
    for key, value in patterns.items():
        if re.fullmatch(rf"(.*\.)?{key}", module):
            return value
    return default


LORA_TENSORS = (".lora_A.weight", ".lora_B.weight", ".lora_B.bias")


def lora_pairs(config: dict[str, Any], adapter_tensors: dict[str, Any]) -> list[LoraPair]:
    pairs = []
    for name in adapter_tensors:
        if ".lora_" in name and not name.endswith(LORA_TENSORS):
            if ".lora_embedding_" in name:
                raise ExportError(f"adapter tensor {name}: LoRA on embeddings is not supported by hcp merge")
            raise ExportError(f"adapter tensor {name} is not a tensor hcp merge knows (LoRA A/B weights, lora_B "
                              "bias, whole saved modules) — merge it with peft's merge_and_unload")
        if not name.endswith(".lora_A.weight"):
            continue
        module = name[: -len(".lora_A.weight")].removeprefix(ADAPTER_PREFIX)
        b = name.replace(".lora_A.weight", ".lora_B.weight")
        if b not in adapter_tensors:
            raise ExportError(f"adapter tensor {name} has no matching lora_B — the adapter file is incomplete")
        rank = adapter_tensors[name].shape[0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", rank))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        b_bias = name.replace(".lora_A.weight", ".lora_B.bias")
        pairs.append(LoraPair(module, name, b, scale, b_bias if b_bias in adapter_tensors else None))
    if not pairs:
        raise ExportError("the adapter holds no LoRA weights (no *.lora_A.weight tensors)")
    return pairs


def saved_whole(adapter_tensors: dict[str, Any]) -> dict[str, Any]:
    """The adapter's tensors that replace a base tensor, by the base's name: biases trained with `bias` (peft
    saves a LoRA-wrapped layer's as `...q_proj.base_layer.bias`) and `modules_to_save` (peft strips their
    `.modules_to_save.<adapter>` part on saving; a full peft state dict keeps it)."""
    saved = {}
    for name, tensor in adapter_tensors.items():
        if ".lora_" in name:
            continue
        base_name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", name.removeprefix(ADAPTER_PREFIX))
        saved[base_name.replace(".base_layer.", ".")] = tensor
    return saved


def merge_adapter(
    adapter: str | Path, output: str | Path, *, base: str | Path | None = None, dtype: str | None = None
) -> MergeResult:
    """Merge `adapter` into its base and write an HF safetensors model folder at `output`."""
    from safetensors.torch import load_file

    from hcp.export.safetensors_stream import ShardReader, shard_paths, write_streaming

    started = time.perf_counter()
    adapter, output = Path(adapter), Path(output)
    config = read_adapter_config(adapter)
    base_dir = resolve_adapter_base(adapter, base)
    dtype = _merged_dtype(json.loads((base_dir / "config.json").read_text()), dtype)
    if output.resolve() in (adapter.resolve(), base_dir.resolve()):
        raise ExportError(f"{output}: the output folder must differ from the adapter and the base folders")

    adapter_tensors = load_file(str(adapter / "adapter_model.safetensors"))
    pairs = {p.module + ".weight": p for p in lora_pairs(config, adapter_tensors)}
    replaced = saved_whole(adapter_tensors)
    shards = shard_paths(base_dir, "no *.safetensors weights in the base model folder")
    readers = [ShardReader(shard) for shard in shards]
    layouts = plan_merge(readers, pairs, adapter_tensors, dtype, base_dir, replaced)

    make_folder(output, private=True)  # the trained weights, folded in: the owner's alone, as the adapter is
    written = 0
    for reader, layout in zip(readers, layouts, strict=True):
        tensors = _merged_tensors(reader, pairs, replaced, adapter_tensors, dtype)
        written += write_streaming(output / reader.path.name, layout, tensors, metadata={"format": "pt"},
                                   private=True)
    _copy_side_files(base_dir, adapter, output, OUT_DTYPES[dtype])
    if len(shards) > 1:
        _write_index(base_dir, output, layouts)
    _write_provenance(adapter, output, base_dir, config, dtype, len(pairs), sorted(replaced))
    return MergeResult(output, base_dir, dtype, len(pairs), sum(map(len, layouts)), written,
                       round(time.perf_counter() - started, 2), sorted(replaced))


def _merged_dtype(base_config: dict[str, Any], dtype: str | None) -> str:
    """The merged model's weight type: the one asked for, else the base's."""
    if dtype is None:
        source = base_config.get("dtype") or base_config.get("torch_dtype") or "float32"
        dtype = {v: k for k, v in OUT_DTYPES.items()}.get(source, "f32")
    if dtype not in OUT_DTYPES:
        raise ExportError(f"dtype {dtype!r}: use one of {', '.join(OUT_DTYPES)}")
    return dtype


Layout = list[tuple[str, str, tuple[int, ...]]]  # one shard's tensors: (name, safetensors dtype, shape)


def plan_merge(readers: list[Any], pairs: dict[str, LoraPair], adapter_tensors: dict[str, Any], dtype: str,
               base_dir: Path, replaced: dict[str, Any]) -> list[Layout]:
    """Each output shard's layout, after checking, before a single tensor is written, that every LoRA pair
    lands on a base weight of its shape, every lora_B bias on a base bias, and every tensor saved whole on a base
    tensor of its shape. `replaced` loses a tied lm_head that only repeats the embedding."""
    out_name = dtype.upper()  # hcp's names of the merged types are safetensors' own in lower case
    shapes = {name: reader.shape(name) for reader in readers for name in reader.keys()}
    _check_tied_embeddings(shapes, replaced, base_dir)
    for name, pair in pairs.items():
        a, b = adapter_tensors[pair.a], adapter_tensors[pair.b]
        if name not in shapes:
            continue  # counted below
        if (b.shape[0], a.shape[1]) != shapes[name]:
            raise ExportError(
                f"adapter does not match the base: {name} is {list(shapes[name])} in {base_dir} but the "
                f"adapter's B·A is {[b.shape[0], a.shape[1]]} — pass the --base it was trained on")
        if pair.b_bias and pair.module + ".bias" not in shapes:
            raise ExportError(f"adapter's lora_B has a bias (peft lora_bias=True) but the base's {pair.module} has "
                              f"none in {base_dir}, so there is nothing to add it to (peft cannot merge it either) — "
                              "train without lora_bias")
    missing = sorted(set(pairs) - set(shapes))
    if missing:
        raise ExportError(f"adapter targets {len(missing)} weight(s) the base does not have (first: {missing[0]}) "
                          f"— pass the --base it was trained on")
    for name, tensor in sorted(replaced.items()):
        if name not in shapes:
            raise ExportError(f"adapter saves a whole {name}, which the base {base_dir} does not have — pass the "
                              "--base it was trained on")
        if tuple(tensor.shape) != shapes[name]:
            raise ExportError(f"adapter does not match the base: {name} is {list(tensor.shape)} in the adapter but "
                              f"{list(shapes[name])} in {base_dir} — pass the --base it was trained on")
    layouts: list[Layout] = []
    for reader in readers:
        layout: Layout = []
        for name in reader.keys():
            dtype_name = reader.dtype(name)
            floating = dtype_name in ("F32", "F16", "BF16", "F64")
            layout.append((name, out_name if floating else dtype_name, shapes[name]))
        layouts.append(layout)
    return layouts


def _check_tied_embeddings(shapes: dict[str, tuple[int, ...]], replaced: dict[str, Any], base_dir: Path) -> None:
    """A base that ties lm_head to embed_tokens stores only the embedding. An adapter may replace that one
    matrix (peft's ensure_weight_tying saves it under both names, equal), but not one side of it: the merged
    model would need the two untied."""
    import torch

    head, embed = "lm_head.weight", "model.embed_tokens.weight"
    if head in shapes or not ({head, embed} & set(replaced)):
        return
    if head in replaced and embed in replaced and torch.equal(replaced[head], replaced[embed]):
        del replaced[head]
        return
    which = " and ".join(sorted({head, embed} & set(replaced)))
    raise ExportError(f"the base {base_dir} ties lm_head to embed_tokens, but the adapter saves its own {which} (peft "
                      "modules_to_save) — retrain with LoraConfig(ensure_weight_tying=True), or merge with peft")


def _merged_tensors(reader: Any, pairs: dict[str, LoraPair], replaced: dict[str, Any],
                    adapter_tensors: dict[str, Any], dtype: str) -> Iterator[tuple[str, Any]]:
    """One shard's tensors with the adapter folded in, one tensor in memory at a time."""
    import torch

    out_dtype = getattr(torch, OUT_DTYPES[dtype])
    bias_pairs = {p.module + ".bias": p for p in pairs.values() if p.b_bias}
    for name in reader.keys():
        tensor = replaced[name] if name in replaced else reader.get(name)
        if name in pairs:
            pair = pairs[name]
            delta = adapter_tensors[pair.b].float() @ adapter_tensors[pair.a].float()  # [out, in]
            tensor = tensor.float() + pair.scale * delta
        elif name in bias_pairs:
            pair = bias_pairs[name]
            tensor = tensor.float() + pair.scale * adapter_tensors[pair.b_bias].float()  # [out]
        yield name, tensor.to(out_dtype) if tensor.is_floating_point() else tensor


def _write_index(base_dir: Path, output: Path, layouts: list[Layout]) -> None:
    from hcp.export.safetensors_stream import SIZES

    index = json.loads((base_dir / "model.safetensors.index.json").read_text())
    index["metadata"] = {"total_size": sum(
        math.prod(shape) * SIZES[dtype] for layout in layouts for _, dtype, shape in layout)}
    atomic_write_text(output / "model.safetensors.index.json", json.dumps(index, indent=2), private=True)


def _write_provenance(adapter: Path, output: Path, base_dir: Path, config: dict[str, Any], dtype: str,
                      merged_modules: int, replaced: list[str]) -> None:
    from hcp.train.base_model import sha256_file

    provenance = {
        "hcp_version": __version__, "base": str(base_dir), "adapter": str(adapter.resolve()),
        "adapter_sha256": sha256_file(adapter / "adapter_model.safetensors"), "dtype": dtype,
        "merged_modules": merged_modules, "replaced_tensors": replaced, "lora_alpha": config.get("lora_alpha"),
        "r": config.get("r"),
    }
    training = adapter / "training_config.json"
    if training.is_file():
        copy_private(training, output / "training_config.json")
    atomic_write_text(output / PROVENANCE_FILE, json.dumps(provenance, indent=2), private=True)


def _copy_side_files(base: Path, adapter: Path, output: Path, torch_dtype: str) -> None:
    config = json.loads((base / "config.json").read_text())
    config["dtype"] = torch_dtype
    config.pop("torch_dtype", None)
    config.pop("quantization_config", None)
    atomic_write_text(output / "config.json", json.dumps(config, indent=2), private=True)
    for name in ("generation_config.json", "LICENSE", "LICENSE.txt", "LICENSE.md"):
        if (base / name).is_file():
            copy_private(base / name, output / name)
    # The tokenizer and chat template the adapter was trained with win over the base's.
    source = adapter if (adapter / "tokenizer_config.json").is_file() else base
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            copy_private(source / name, output / name)
