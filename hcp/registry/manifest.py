"""What a version records about itself: where it came from and how it did.

The GGUF's own `hcp.*` metadata (base model, adapter digest, rubric digest, quant type, hcp version) is the
first source, so a GGUF exported before the registry existed registers as well; the training folder beside it,
when known, adds what only training knew: the base model's digest, the training data's digests and the
validation figures of the run (`training_config.json`, `metrics.json`).

Training records its validation loss, not its validation predictions, so a version's score distribution is not
known at export: `score_distribution` (per dimension, the count of each score 1..5) is added when the promotion
gate rates its labelled set with the version (`hcp.registry.promote`), with the set it came from.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hcp import __version__
from hcp.gguf_file import read_scalars
from hcp.registry.store import now
from hcp.train.base_model import sha256_file

GGUF_KEYS = {"hcp.version", "hcp.base_model", "hcp.adapter_sha256", "hcp.rubric_digest", "hcp.quant_type"}


def _json_object(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def build_manifest(gguf: Path, source: Path | None = None, parity: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of a version made from `gguf`; `source` is the adapter (or HF model) folder it was exported
    from, `parity` the export's parity figures where it has them. The registry adds name and number."""
    try:
        meta = read_scalars(gguf, GGUF_KEYS)
    except (OSError, ValueError):
        meta = {}
    training = _json_object(source / "training_config.json") if source else {}
    base = training.get("base") if isinstance(training.get("base"), dict) else {}
    manifest: dict[str, Any] = {
        "created": now(),
        "hcp_version": __version__,
        "exported_with": meta.get("hcp.version"),
        "gguf": {"file": gguf.name, "sha256": sha256_file(gguf), "bytes": gguf.stat().st_size},
        "quant": meta.get("hcp.quant_type") or gguf.name.rsplit(".", 2)[-2],
        "rubric_digest": meta.get("hcp.rubric_digest"),
        "base_model": {"path": base.get("given") or meta.get("hcp.base_model"), "sha256": base.get("sha256")},
        "adapter_sha256": meta.get("hcp.adapter_sha256"),
        "training_data": training.get("data"),
        "validation": validation_metrics(training, _json_object(source / "metrics.json") if source else {}),
        "source": str(source.resolve()) if source else None,
        "daemon": None,
    }
    if parity is not None:
        manifest["parity"] = dict(parity)
    return manifest


def validation_metrics(training: Mapping[str, Any], metrics: Mapping[str, Any]) -> dict[str, Any] | None:
    """The training run's validation figures: examples held out, the best and the last validation loss."""
    examples = training.get("examples") if isinstance(training.get("examples"), dict) else {}
    summary = metrics.get("summary") if isinstance(metrics.get("summary"), dict) else {}
    evals = [e for e in metrics.get("eval") or [] if isinstance(e, dict) and "eval_loss" in e]
    if not examples and not summary and not evals:
        return None
    return {"examples": examples.get("validation"), "steps": summary.get("global_step"),
            "best_eval_loss": summary.get("best_eval_loss"),
            "last_eval_loss": evals[-1]["eval_loss"] if evals else None,
            "final_train_loss": summary.get("final_loss")}


def score_distribution(predictions: Mapping[str, Mapping[str, float]], dimensions: Sequence[str],
                       levels: Sequence[int]) -> dict[str, list[int]]:
    """{dimension: [count of levels[0], ..., count of levels[-1]]} over a version's ratings."""
    return {name: [sum(1 for p in predictions.values() if p.get(name) == level) for level in levels]
            for name in dimensions}
