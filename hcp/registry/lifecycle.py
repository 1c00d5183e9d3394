"""A name's versions over time: registered by the export, promoted through the gate, rolled back.

On the Ollama daemon a version is the model `NAME:N`, created by the export; `NAME` (`NAME:latest`, what
`ollama run NAME` runs) is a copy of the promoted version, made with `/api/copy` (`ollama cp`): a promotion or
a rollback uploads nothing. Without a daemon (`--no-create`, or none running) the registry still records every
version and promotion, and `hcp score --model NAME` runs the promoted GGUF embedded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hcp.errors import DataError
from hcp.evaluate.run import EvaluateOptions, Opener, read_labels, score_rater
from hcp.files import make_folder
from hcp.registry.gate import DEFAULT_MARGIN, decide
from hcp.registry.manifest import build_manifest, score_distribution
from hcp.registry.report import write_promotion_report
from hcp.registry.store import FORCED, PROMOTED, REFUSED, ROLLBACK, Registry, RegistryError, Version, now
from hcp.rubric import Rubric

FIRST_VERSION_REASON = "the first version of the name, promoted at registration: there is none to be worse than"


@dataclass(frozen=True)
class Daemon:
    """Where the versions live on an Ollama daemon (None host: $OLLAMA_HOST, else this machine's)."""

    host: str | None = None
    timeout: float | None = 600.0
    allow_remote: bool = False


@dataclass
class Change:
    """What a registration, promotion or rollback did: the version now current, and what the daemon did."""

    version: Version
    previous: Version | None
    promoted: bool
    event: dict[str, Any] | None = None
    daemon: str = ""  # one line for the user: copied, or the command to run when the daemon was not there
    decision: dict[str, Any] | None = None
    report: list[Path] = field(default_factory=list)


# --- registration -------------------------------------------------------------------------------------------


def register_version(registry: Registry, name: str, gguf: Path, modelfile: Path, *, source: Path | None = None,
                     parity: Mapping[str, Any] | None = None, number: int | None = None,
                     daemon_model: str | None = None, daemon: Daemon | None = None) -> Change:
    """Record `gguf` (with its Modelfile) as the next version of `name`. `daemon_model`: the name the export
    created it under on the daemon (`NAME:N`), None when it created none. The first version of a name is promoted
    at once (there is nothing for the gate to compare it with), and copied to `NAME` on the daemon."""
    from hcp.files import read_text_file

    manifest = build_manifest(gguf, source, parity)
    if daemon_model is not None:
        manifest["daemon"] = {"model": daemon_model, "host": (daemon or Daemon()).host}
    version = registry.add(name, gguf, read_text_file(modelfile), manifest, number=number)
    if registry.promoted(name) is not None or len(registry.versions(name)) > 1:
        return Change(version, registry.promoted(name), promoted=False)
    copied = make_current(version, daemon)
    event = registry.record(name, {"action": PROMOTED, "version": version.number, "previous": None,
                                   "reason": FIRST_VERSION_REASON, "metrics": {"validation": manifest["validation"]}})
    return Change(version, None, True, event, copied)


# --- promotion ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PromoteOptions:
    data: Path | None  # labelled transcripts; may be left out only with force
    report: Path | None = None  # default: <registry>/<name>/promotions/<N>
    margin: float = DEFAULT_MARGIN
    force: bool = False
    reason: str | None = None
    resamples: int = 1000
    seed: int = 42  # of the bootstrap
    parallel: int = 1
    progress: bool | None = None

    def __post_init__(self) -> None:
        if self.force and not (self.reason or "").strip():
            raise RegistryError("--force needs --reason TEXT: the history records why the gate was overruled")
        if self.reason and not self.force:
            raise RegistryError("--reason goes with --force (a promotion through the gate records its figures)")
        if self.data is None and not self.force:
            raise RegistryError("give --data labelled.jsonl: the gate rates it with both versions (or --force "
                                "--reason TEXT to promote without it)")
        if not 0 <= self.margin < 1:
            raise RegistryError(f"--margin {self.margin:g}: give a difference from 0 to 1 (default "
                                f"{DEFAULT_MARGIN:g})")


def promote(registry: Registry, spec: str, options: PromoteOptions, rubric: Rubric, open_rater: Opener,
            daemon: Daemon | None = None) -> Change:
    """Rate the labelled set with the candidate `NAME:N` and the promoted version, decide by the gate, write the
    report, and promote when it passes (or when forced); every outcome is appended to the history."""
    candidate = version_of(registry, spec)
    name = candidate.name
    current = registry.promoted(name)
    if current is not None and current.number == candidate.number:
        raise RegistryError(f"{candidate.label} is already the promoted version of {name} — 'hcp models list {name}' "
                            "shows the candidates")
    check_daemon(candidate, daemon)
    decision, files = None, []
    if options.data is not None:
        decision, files, candidate, current = _run_gate(registry, candidate, current, options, rubric, open_rater)
    passed = bool(decision and decision["promote"])
    metrics = _event_metrics(decision)
    if not passed and not options.force:
        event = registry.record(name, {"action": REFUSED, "version": candidate.number,
                                       "previous": current.number if current else None, "metrics": metrics,
                                       "reason": "; ".join(decision["reasons"]) if decision else "",
                                       "data": str(options.data), "report": str(files[1]) if files else None})
        return Change(candidate, current, False, event, "", decision, files)
    copied = make_current(candidate, daemon)  # first: a daemon that refuses the copy leaves the history as it was
    event = registry.record(name, {
        "action": PROMOTED if passed else FORCED, "version": candidate.number,
        "previous": current.number if current else None, "metrics": metrics,
        "reason": options.reason if options.force and not passed else "the gate passed: not worse than "
        + (current.label if current else "nothing (first promotion: every transcript rated validly)"),
        "data": str(options.data) if options.data else None, "report": str(files[1]) if files else None})
    return Change(candidate, current, True, event, copied, decision, files)


def version_of(registry: Registry, spec: str) -> Version:
    """The version `NAME:N` names (the candidate of a promotion), or an error saying what to give."""
    from hcp.registry.store import NUMBERED, split_spec

    name, tag = split_spec(spec)
    if tag is None or NUMBERED.fullmatch(tag) is None:
        raise RegistryError(f"{spec!r}: name the version to promote as NAME:N (e.g. {name}:2) — 'hcp models list "
                            f"{name}' shows them")
    return registry.version(name, int(tag))


def _run_gate(registry: Registry, candidate: Version, current: Version | None, options: PromoteOptions,
              rubric: Rubric, open_rater: Opener) -> tuple[dict[str, Any], list[Path], Version, Version | None]:
    """Both versions rate the set (cached in the name's predictions folder, as `hcp evaluate` caches: a rerun
    rates nothing twice); the decision, the report, and the versions with their score distributions recorded."""
    assert options.data is not None
    inputs, human = read_labels(options.data, rubric)
    if not human:
        raise DataError(f"{options.data}: no labelled transcripts — the gate needs human scores to compare with")
    cache = EvaluateOptions(data=options.data, report=registry.folder(candidate.name), parallel=options.parallel,
                            progress=options.progress)
    make_folder(cache.report / "predictions", private=True)  # the model's answers: its owner's alone
    raters = {}
    for version in (candidate, current):
        if version is not None:
            raters[version.number] = score_rater(f"v{version.number}", str(version.gguf), inputs, rubric,
                                                 open_rater, cache).runs[0]
    promoted = raters[current.number] if current is not None else None
    decision = decide(human, raters[candidate.number], promoted, rubric, margin=options.margin,
                      resamples=options.resamples, seed=options.seed)
    source = {"data": str(options.data), "data_sha256": _file_digest(options.data), "made": now()}
    versions = {}
    for version in (candidate, current):
        if version is not None and (version is candidate or "score_distribution" not in version.manifest):
            counts = score_distribution(raters[version.number], rubric.names, rubric.scores)
            version = registry.update_manifest(version, score_distribution=counts,
                                               score_distribution_source={**source, "n": len(raters[version.number])})
        if version is not None:
            versions[version.number] = version
    candidate = versions[candidate.number]
    current = versions[current.number] if current is not None else None
    promotions = make_folder(registry.folder(candidate.name) / "promotions", private=True)
    report = options.report or promotions / str(candidate.number)
    files = write_promotion_report(decision, candidate, current, options, report)
    return decision, files, candidate, current


def _event_metrics(decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the history keeps of a gate: each rater's overall QWK and the checks."""
    if decision is None:
        return None
    overall = {role: (decision[role] or {}).get("metrics", {}).get("overall", {}).get("qwk")
               for role in ("candidate", "promoted")}
    return {"labelled": decision["labelled"], "overall_qwk": overall, "margin": decision["margin"],
            "checks": decision["checks"], "candidate_failed": decision["candidate_failed"]}


def _file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --- rollback -----------------------------------------------------------------------------------------------


def rollback(registry: Registry, name: str, reason: str | None = None, daemon: Daemon | None = None) -> Change:
    """Make the version promoted before the current one current again. The history keeps both events, so a
    rollback of a rollback returns to where it started."""
    if not registry.versions(name):
        registry.version(name, 1)  # the error for a name not registered
    current = [e for e in registry.history(name) if e.get("action") in (PROMOTED, FORCED, ROLLBACK)]
    if not current or current[-1].get("previous") is None:
        raise RegistryError(f"{name} has no earlier promoted version to roll back to — 'hcp models list {name}' "
                            "shows its history")
    now_current = registry.version(name, int(current[-1]["version"]))
    target = registry.version(name, int(current[-1]["previous"]))
    check_daemon(target, daemon)
    copied = make_current(target, daemon)
    event = registry.record(name, {"action": ROLLBACK, "version": target.number, "previous": now_current.number,
                                   "metrics": None, "reason": reason or ""})
    return Change(target, now_current, True, event, copied)


# --- the daemon ---------------------------------------------------------------------------------------------


def check_daemon(version: Version, daemon: Daemon | None) -> None:
    """The daemon's address, checked before any work (a malformed one, or one off this machine unless allowed)."""
    from hcp.export.register import check_register_host

    created = version.manifest.get("daemon") or {}
    host = (daemon.host if daemon else None) or created.get("host")
    if created.get("model") or (daemon and daemon.host):
        check_register_host(host, bool(daemon and daemon.allow_remote))


def make_current(version: Version, daemon: Daemon | None) -> str:
    """Copy `NAME:N` to `NAME` on the daemon the version was created on; one line saying what happened."""
    from hcp.export.register import copy_model

    created = version.manifest.get("daemon") or {}
    if not created.get("model"):
        return (f"no Ollama model was created for {version.label} (exported with --no-create): 'hcp score --model "
                f"{version.name}' runs it embedded")
    daemon = daemon or Daemon()
    host = daemon.host or created.get("host")
    if copy_model(str(created["model"]), version.name, host, daemon.timeout, allow_remote=daemon.allow_remote):
        return f"Ollama: {version.name} is now a copy of {created['model']}"
    return f"Ollama is not running; when it is: ollama cp {created['model']} {version.name}"
