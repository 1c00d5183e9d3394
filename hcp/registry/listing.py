"""`hcp models list`: each version with its status, figures and parity, newest first."""

from __future__ import annotations

from typing import Any

from hcp.registry.store import CURRENT_CHANGES, REFUSED, Registry, RegistryError


def status_of(number: int, promoted: int | None, history: list[dict[str, Any]]) -> str:
    """'promoted' (current), 'retired' (promoted once, not now), 'refused' (the gate's last word), 'candidate'."""
    if number == promoted:
        return "promoted"
    mine = [e for e in history if e.get("version") == number and e.get("action") in (*CURRENT_CHANGES, REFUSED)]
    if any(e["action"] in CURRENT_CHANGES for e in mine):
        return "retired"
    return "refused" if mine and mine[-1]["action"] == REFUSED else "candidate"


def list_versions(registry: Registry, name: str | None = None) -> list[dict[str, Any]]:
    """One row per version of `name` (or of every name), newest first within a name."""
    names = [name] if name is not None else registry.names()
    if name is not None and not registry.versions(name):
        raise RegistryError(f"{name!r} is not in the registry at {registry.root} — 'hcp models list' shows the "
                            "names; 'hcp export-ollama MODEL_DIR --name NAME' registers one")
    rows = []
    for each in names:
        history = registry.history(each)
        promoted = registry.promoted(each)
        gates = {e["version"]: e.get("metrics") for e in history if e.get("metrics") and "version" in e}
        for version in reversed(registry.versions(each)):
            manifest = version.manifest
            rows.append({
                "label": version.label, "name": each, "version": version.number,
                "status": status_of(version.number, promoted.number if promoted else None, history),
                "created": manifest.get("created"), "quant": manifest.get("quant"),
                "rubric_digest": manifest.get("rubric_digest"), "validation": manifest.get("validation"),
                "gate": gates.get(version.number), "parity": manifest.get("parity"),
                "daemon": (manifest.get("daemon") or {}).get("model"), "gguf": str(version.gguf),
                "score_distribution": manifest.get("score_distribution"),
            })
    return rows
