"""Finding the base model that training (and later merge and export) start from.

A base is one string, given the way users think of it:

- an HF model folder (config.json, *.safetensors, tokenizer files with a chat template);
- a `.gguf` file: transformers loads it into torch (dequantized). Merge and export need the same weights as
  safetensors, so the first use materializes it once as an HF folder under `<cache>/bases/<sha256>/`, keyed by
  the GGUF's digest; every later command reads that folder;
- a hub id (`owner/name`): taken from the local Hugging Face cache when it is there, else downloaded where the
  hub answers. Where it does not (an offline machine, HF_HUB_OFFLINE), one short probe fails in seconds
  instead of the hub client's minutes of retries.

Every base carries a digest for provenance: the GGUF's sha256, or a sha256 over the folder's weight files.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import urllib.error
import urllib.request
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from hcp.errors import ModelNotFoundError
from hcp.files import atomic_folder
from hcp.gguf_file import is_gguf

BASE_MARKER = "hcp_base.json"  # written last into a materialized base: a folder without it is incomplete
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
HUB_PROBE_TIMEOUT_S = 5.0
# Weights and tokenizer only: Mistral repos also hold consolidated.safetensors, the same 14 GB again.
HUB_IGNORE = ["consolidated*", "*.bin", "*.pt", "*.pth", "*.gguf", "original/*", "*.msgpack", "*.h5"]

BaseKind = Literal["hf_dir", "gguf", "hub"]


@dataclass(frozen=True)
class BaseModelRef:
    """A resolved base model: where to load it from (`path`, always an HF folder) and what it is."""

    given: str  # as the user wrote it
    kind: BaseKind
    path: Path  # an HF folder: from_pretrained(path)
    gguf_sha256: str | None = None  # of the GGUF file, when the base is one (hashed to find its cache folder)
    gguf_file: Path | None = None

    @cached_property
    def sha256(self) -> str:
        """Of the GGUF file, or over the folder's weight files — hashed only when asked (training records it;
        merge and export need only the path, and a 7B model is 14 GB to read)."""
        return self.gguf_sha256 or weights_digest(self.path)

    def provenance(self) -> dict[str, Any]:
        return {
            "given": self.given, "kind": self.kind, "path": str(self.path), "sha256": self.sha256,
            "gguf_file": str(self.gguf_file) if self.gguf_file else None,
        }


def cache_dir() -> Path:
    """hcp's cache: $HCP_CACHE_DIR, else $XDG_CACHE_HOME/hcp, else ~/.cache/hcp."""
    if os.environ.get("HCP_CACHE_DIR"):
        return Path(os.environ["HCP_CACHE_DIR"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "hcp"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_digest(folder: Path) -> str:
    """sha256 over the weight files of an HF folder (name and digest of each, sorted)."""
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    if not files:
        raise ModelNotFoundError(f"{folder}: no *.safetensors weights — expected an HF model folder "
                                 "(config.json, model.safetensors, tokenizer) or a .gguf file")
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"{file.name}:{sha256_file(file)}\n".encode())
    return digest.hexdigest()


def resolve_base(given: str | Path) -> BaseModelRef:
    """Turn `--base` into an HF folder to load, materializing a GGUF or fetching a hub model first."""
    text = str(given)
    path = Path(text).expanduser()
    if path.exists():
        return _local_base(text, path)
    if not HUB_ID.match(text) or text.endswith(".gguf"):
        raise ModelNotFoundError(f"{text}: base model not found — pass an HF model folder, a .gguf file or a "
                                 "Hugging Face hub id (owner/name) with --base or model.name")
    return _hub_base(text)


def _local_base(given: str, path: Path) -> BaseModelRef:
    if path.is_file():
        if not is_gguf(path):
            raise ModelNotFoundError(f"{path}: not a GGUF file (no GGUF header) — pass a .gguf file or an HF "
                                     "model folder")
        digest = sha256_file(path)
        return BaseModelRef(given, "gguf", materialize_gguf(path, digest), digest, path.resolve())
    if (path / "adapter_config.json").is_file():
        raise ModelNotFoundError(f"{path}: is a LoRA adapter, not a base model — pass the model it was trained "
                                 "on (see base_model in its training_config.json)")
    if not (path / "config.json").is_file():
        raise ModelNotFoundError(f"{path}: no config.json — expected an HF model folder (config.json, "
                                 "*.safetensors, tokenizer files) or a .gguf file")
    return BaseModelRef(given, "hf_dir", path.resolve())


# --- GGUF -------------------------------------------------------------------------------------------------


def materialized_path(digest: str) -> Path:
    return cache_dir() / "bases" / digest


def materialize_gguf(gguf: Path, digest: str | None = None) -> Path:
    """The GGUF's weights and tokenizer as an HF safetensors folder, made once per digest and cached.

    transformers dequantizes a GGUF into a torch model that `save_pretrained` refuses ("quantized with
    gguf"), so its tensors are moved into a model built from the same config, without the GGUF marker.
    """
    digest = digest or sha256_file(gguf)
    dest = materialized_path(digest)
    if (dest / BASE_MARKER).is_file():
        return dest
    # Built beside the cache entry and renamed into place: an interrupted run leaves no half-written base that a
    # later command would take as complete.
    with atomic_folder(dest) as work:
        _write_hf_copy(gguf, work)
        (work / BASE_MARKER).write_text(json.dumps({"source": str(gguf.resolve()), "sha256": digest}, indent=2))
    return dest


def _write_hf_copy(gguf: Path, folder: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise ModelNotFoundError(f"{gguf}: transformers cannot load this GGUF as a torch model ({exc}) — use a "
                                 "GGUF of a llama-family model, or an HF model folder") from None
    config = type(loaded.config).from_dict({k: v for k, v in loaded.config.to_dict().items()
                                            if k != "quantization_config"})
    # On the meta device the copy costs no memory until the loaded tensors are assigned into it.
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), assign=True, strict=False)
    model.tie_weights()
    missing = [name for name, tensor in model.state_dict().items() if tensor.is_meta]
    if missing:
        raise ModelNotFoundError(f"{gguf}: the GGUF lacks tensors the model needs ({', '.join(missing[:3])}) — "
                                 "it cannot serve as a training base")
    model.generation_config = loaded.generation_config
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


# --- hub --------------------------------------------------------------------------------------------------


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}


def _hub_base(repo_id: str) -> BaseModelRef:
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(repo_id, local_files_only=True, ignore_patterns=HUB_IGNORE))
    except Exception:  # noqa: BLE001 - any cache miss (not cached, partial): try the hub below
        folder = None
    if folder is None or not (folder / "config.json").is_file():
        _probe_hub(repo_id)
        try:
            folder = Path(snapshot_download(repo_id, ignore_patterns=HUB_IGNORE))
        except Exception as exc:  # noqa: BLE001 - the hub client's many error types all mean "cannot fetch"
            raise ModelNotFoundError(f"{repo_id}: download from the Hugging Face hub failed "
                                     f"({exc.__class__.__name__}) — check the id and your access to it") from None
    return BaseModelRef(repo_id, "hub", folder)


def _probe_hub(repo_id: str) -> None:
    """Fail in seconds when the hub cannot answer, rather than through the client's retries."""
    local_hint = ("pass a local HF model folder or .gguf file with --base (or set model.name), or download "
                  "the model where the hub is reachable")
    if _hub_offline():
        raise ModelNotFoundError(f"{repo_id}: not a local folder or file, not in the Hugging Face cache, and "
                                 f"HF_HUB_OFFLINE is set — {local_hint}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{repo_id}", method="HEAD")
    try:
        urllib.request.urlopen(request, timeout=HUB_PROBE_TIMEOUT_S).close()
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise ModelNotFoundError(f"{repo_id}: no such folder or file here, and no such model on the hub "
                                     f"({endpoint}) — check the spelling") from None
        # 401 / 403 (gated, private) and the like: the hub answers; the download reports what it needs.
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModelNotFoundError(f"{repo_id}: no such folder or file here, and the Hugging Face hub at {endpoint} "
                                 f"cannot be reached ({reason}) — {local_hint}") from None
