"""The registry: every export a numbered version, `--model NAME[:N]` resolved for the embedded backend, the
promotion gate against human labels, rollback, and the daemon side (`NAME:N`, `NAME` a copy) on the Ollama
double. Real parts throughout: a tiny model exported to GGUF once, rated by the real embedded llama.cpp."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from hcp.cli import cli
from hcp.registry import open_registry
from hcp.registry.lifecycle import Daemon, PromoteOptions, promote, register_version, rollback
from hcp.registry.store import RegistryError
from tests.test_export_ollama import SHORT, TRANSCRIPT

NAME = "tiny-rater"


@pytest.fixture(scope="module")
def export(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    """One real export of the tiny model (no daemon), registered as tiny-rater:1 in its own registry."""
    folder = tmp_path_factory.mktemp("registry_export")
    registry = folder / "registry"
    result = CliRunner().invoke(cli, ["export-ollama", str(tiny_llama_dir), "--name", NAME, "--quant", "q8_0",
                                      "--out", str(folder / "out"), "--no-create", "--threads", "1",
                                      "--no-parity-check", "--registry", str(registry), "--config", SHORT])
    assert result.exit_code == 0, result.output
    assert f"registry: {NAME}:1 is promoted (the first version of {NAME})" in result.output
    return {"registry": registry, "gguf": folder / "out" / f"{NAME}.Q8_0.gguf", "modelfile": folder / "out" /
            "Modelfile", "source": tiny_llama_dir}


def registry_with(export: dict[str, Path], folder: Path, versions: int = 2, **daemon: object):
    """A registry holding `versions` versions of tiny-rater made from the one export (the first promoted)."""
    registry = open_registry(folder)
    for _ in range(versions):
        register_version(registry, NAME, export["gguf"], export["modelfile"], source=export["source"], **daemon)
    return registry


def labelled(folder: Path, n: int = 3) -> Path:
    from hcp.data.dataset import write_jsonl
    from hcp.data.sample import generate_samples

    return write_jsonl(folder / "labelled.jsonl", [{"id": f"visit-{i}", **r}
                                                   for i, r in enumerate(generate_samples(n, seed=21))])


# --- versions -----------------------------------------------------------------------------------------------


def test_an_export_registers_a_numbered_version_with_its_manifest_for_its_owner_alone(export):
    registry = open_registry(export["registry"])
    (version,) = registry.versions(NAME)
    assert version.label == f"{NAME}:1" and registry.promoted(NAME) == version
    manifest = version.manifest
    assert manifest["gguf"]["sha256"] == __import__("hashlib").sha256(export["gguf"].read_bytes()).hexdigest()
    assert version.gguf.read_bytes() == export["gguf"].read_bytes()
    assert manifest["quant"] == "Q8_0" and manifest["rubric_digest"] and manifest["hcp_version"]
    assert manifest["daemon"] is None and manifest["parity"] == {"skipped": True}  # --no-create, --no-parity-check
    assert "FROM ./tiny-rater.Q8_0.gguf" in version.modelfile.read_text()
    for path in [export["registry"], *export["registry"].rglob("*")]:
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
    assert not list(export["registry"].rglob(".*")), "a half-built version folder was left behind"


def test_versions_are_numbered_in_order_and_the_later_ones_are_candidates(export, tmp_path):
    registry = registry_with(export, tmp_path / "reg", versions=3)
    assert [v.number for v in registry.versions(NAME)] == [1, 2, 3]
    assert registry.promoted(NAME).number == 1
    assert registry.resolve(NAME).number == 1 and registry.resolve(f"{NAME}:3").number == 3
    assert registry.resolve(f"{NAME}:latest").number == 1
    assert registry.resolve("mistral:7b") is None and registry.resolve(f"{NAME}:v2") is None
    with pytest.raises(RegistryError, match="no version 9"):
        registry.resolve(f"{NAME}:9")


def test_models_list_shows_the_newest_first_promoted_and_candidates(export, tmp_path):
    registry_with(export, tmp_path / "reg", versions=2)
    result = CliRunner().invoke(cli, ["models", "list", NAME, "--registry", str(tmp_path / "reg"), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert [(r["label"], r["status"]) for r in rows] == [(f"{NAME}:2", "candidate"), (f"{NAME}:1", "promoted")]
    assert rows[0]["quant"] == "Q8_0" and rows[0]["parity"] is None
    result = CliRunner().invoke(cli, ["models", "list", "--registry", str(tmp_path / "reg")])
    assert result.exit_code == 0 and "candidate" in result.output and "promoted" in result.output


def test_a_parity_entry_of_the_export_goes_into_the_manifest_and_the_list(export, tmp_path):
    registry = open_registry(tmp_path / "reg")
    parity = {"quant": "q8_0", "agreement": 0.8625, "mean_abs_expected": 0.0593, "max_kl": 0.0336,
              "ratings_equal": None, "scores_equal": None, "passed": False, "accepted_loss": True}
    change = register_version(registry, NAME, export["gguf"], export["modelfile"], parity=parity)
    assert change.version.manifest["parity"] == parity
    register_version(registry, NAME, export["gguf"], export["modelfile"], parity={"skipped": True})
    result = CliRunner().invoke(cli, ["models", "list", NAME, "--registry", str(tmp_path / "reg")], terminal_width=200)
    assert result.exit_code == 0, result.output
    first, second = sorted(line for line in result.output.splitlines() if line.startswith(f"{NAME}:"))  # :1, :2
    assert "parity 86.2% agree, |Δ| 0.059 (below target, accepted)" in first, result.output
    assert "parity not checked" in second, result.output


# --- --model NAME through the registry, embedded -------------------------------------------------------------


@pytest.mark.parametrize("spec, number", [(NAME, 1), (f"{NAME}:2", 2)])
def test_score_runs_a_registered_version_by_name_without_ollama(export, tmp_path, monkeypatch, spec, number):
    registry = registry_with(export, tmp_path / "reg", versions=2)
    monkeypatch.setenv("HCP_REGISTRY", str(tmp_path / "reg"))
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")  # no daemon: auto falls back to the registry's GGUF
    for backend in ("llama-cpp", "auto"):
        result = CliRunner().invoke(cli, ["score", TRANSCRIPT, "--backend", backend, "--model", spec, "--threads",
                                          "1", "--json", "--config", SHORT])
        assert result.exit_code == 0, result.output
        payload = json.loads(result.stdout)
        assert payload["backend"] == "llama-cpp"
        assert payload["model"] == str(registry.version(NAME, number).gguf)


# --- the gate -----------------------------------------------------------------------------------------------


def _scores(rubric, rows):
    from hcp.evaluate.metrics import OVERALL

    return {f"t{i}": {**dict(zip(rubric.names, row, strict=True)), OVERALL: rubric.overall(
        dict(zip(rubric.names, row, strict=True)))} for i, row in enumerate(rows)}


def test_the_gate_refuses_a_rater_of_shuffled_labels_and_accepts_a_faithful_one(rubric):
    """Human labels of 80 sample conversations; the promoted version is off by one on a third of the scores; a
    candidate trained on shuffled labels rates like the shuffled labels; a faithful candidate like the humans."""
    from hcp.data.sample import generate_samples
    from hcp.registry.gate import decide

    records = generate_samples(80, seed=3)
    rows = [[r[n] for n in rubric.names] for r in records]
    rng = random.Random(0)
    noisy = [[min(5, max(1, s + (rng.choice((-1, 1)) if rng.random() < 0.33 else 0))) for s in row] for row in rows]
    shuffled = rows[:]
    rng.shuffle(shuffled)
    human, promoted = _scores(rubric, rows), _scores(rubric, noisy)

    refused = decide(human, _scores(rubric, shuffled), promoted, rubric, resamples=400)
    assert not refused["promote"]
    assert any(not c["passes"] for c in refused["checks"] if c["metric"] == "qwk")
    accepted = decide(human, human, promoted, rubric, resamples=400)
    assert accepted["promote"] and accepted["reasons"] == []
    assert all(c["ci_low"] > -0.05 for c in accepted["checks"])
    # Identical ratings: every difference 0, so the interval [0, 0] lies above -margin.
    same = decide(human, promoted, promoted, rubric, resamples=400)
    assert same["promote"] and {c["difference"] for c in same["checks"]} == {0.0}
    # A candidate that fails a transcript the promoted version rated is refused, whatever its agreement.
    partial = {k: v for k, v in human.items() if k != "t0"}
    assert not decide(human, partial, promoted, rubric, resamples=400)["promote"]
    # With nothing promoted, rating the whole set validly is enough; missing one is not.
    assert decide(human, _scores(rubric, shuffled), None, rubric)["promote"]
    assert not decide(human, partial, None, rubric)["promote"]


def test_a_promotion_rates_both_versions_writes_the_report_and_appends_the_history(export, tmp_path):
    """End to end through real tiny versions: the decision is the gate's on the cached predictions, the report
    says it, the history keeps it; a second run rates nothing again."""
    from hcp.config import load_config
    from hcp.evaluate.run import read_labels, read_rater
    from hcp.registry.gate import decide
    from hcp.rubric import Rubric

    registry_with(export, tmp_path / "reg", versions=2)
    data = labelled(tmp_path)
    args = ["models", "promote", f"{NAME}:2", "--data", str(data), "--threads", "1", "--registry",
            str(tmp_path / "reg"), "--config", SHORT, "--margin", "0.5"]
    result = CliRunner().invoke(cli, args)
    registry = open_registry(tmp_path / "reg")
    report = tmp_path / "reg" / NAME / "promotions" / "2"
    payload = json.loads((report / "promotion.json").read_text())
    rubric = Rubric.from_config(load_config(SHORT))
    inputs, human = read_labels(data, rubric)
    files = sorted((tmp_path / "reg" / NAME / "predictions").glob("*.jsonl"))
    assert [f.name.split("-")[0] for f in files] == ["v1", "v2"]
    ratings = {f.name.split("-")[0]: read_rater("x", [f], rubric, inputs).runs[0] for f in files}
    expected = decide(human, ratings["v2"], ratings["v1"], rubric, margin=0.5)
    assert payload["decision"]["promote"] == expected["promote"]
    assert payload["decision"]["checks"] == json.loads(json.dumps(expected["checks"]))
    assert (report / "promotion.md").read_text().startswith(f"# Promotion of {NAME}:2: "
                                                             + ("PROMOTE" if expected["promote"] else "REFUSE"))
    assert "<table>" in (report / "promotion.html").read_text()
    event = registry.history(NAME)[-1]
    assert event["action"] == ("promote" if expected["promote"] else "refused") and event["version"] == 2
    assert event["metrics"]["labelled"] == 3 and event["previous"] == 1
    assert (result.exit_code == 0) == expected["promote"], result.output
    assert registry.version(NAME, 2).manifest["score_distribution"].keys() == set(rubric.names)
    for path in [tmp_path / "reg", *(tmp_path / "reg").rglob("*")]:  # ratings and reports: the owner's alone
        assert stat.S_IMODE(path.stat().st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert all(sum(c) == len(ratings["v2"]) for c in registry.version(NAME, 2).manifest["score_distribution"].values())
    before = [f.read_bytes() for f in files]
    if not expected["promote"]:  # the same set again: the cached ratings, nothing rated twice
        CliRunner().invoke(cli, args)
        assert [f.read_bytes() for f in files] == before


def test_force_promotes_with_its_reason_and_rollback_goes_back_and_forth(export, tmp_path):
    registry = registry_with(export, tmp_path / "reg", versions=3)
    with pytest.raises(RegistryError, match="--force needs --reason"):
        PromoteOptions(data=None, force=True)
    change = promote(registry, f"{NAME}:3", PromoteOptions(data=None, force=True, reason="hotfix"), None, None)
    assert change.promoted and registry.promoted(NAME).number == 3
    runner = CliRunner()
    reg = ["--registry", str(tmp_path / "reg")]
    result = runner.invoke(cli, ["models", "rollback", NAME, *reg])
    assert result.exit_code == 0, result.output
    assert registry.promoted(NAME).number == 1
    result = runner.invoke(cli, ["models", "rollback", NAME, "--reason", "undo", *reg])
    assert result.exit_code == 0 and registry.promoted(NAME).number == 3  # a rollback of the rollback
    history = registry.history(NAME)
    assert [(e["action"], e["version"], e["previous"]) for e in history] == [
        ("promote", 1, None), ("force", 3, 1), ("rollback", 1, 3), ("rollback", 3, 1)]
    assert history[1]["reason"] == "hotfix" and history[3]["reason"] == "undo"
    assert all(e["time"].endswith("Z") for e in history)
    rows = json.loads(runner.invoke(cli, ["models", "list", NAME, "--json", *reg]).stdout)
    assert [r["status"] for r in rows] == ["promoted", "candidate", "retired"]


def test_rollback_of_a_name_promoted_once_has_nowhere_to_go(export, tmp_path):
    registry = registry_with(export, tmp_path / "reg", versions=1)
    with pytest.raises(RegistryError, match="no earlier promoted version"):
        rollback(registry, NAME)


# --- the daemon: NAME:N, and NAME a copy of the promoted one -------------------------------------------------


def test_on_a_daemon_versions_are_tags_and_promotion_and_rollback_are_copies(export, tmp_path, ollama_double):
    ollama_double.reset()
    daemon = Daemon(ollama_double.url)
    registry = open_registry(tmp_path / "reg")
    ollama_double.add_model(f"{NAME}:1", export["gguf"])
    register_version(registry, NAME, export["gguf"], export["modelfile"], daemon_model=f"{NAME}:1", daemon=daemon)
    other = tmp_path / "other.gguf"
    other.write_bytes(export["gguf"].read_bytes())
    ollama_double.add_model(f"{NAME}:2", other)
    register_version(registry, NAME, export["gguf"], export["modelfile"], daemon_model=f"{NAME}:2", daemon=daemon)

    def latest() -> Path:
        tags = {m["name"]: m["digest"] for m in ollama_double.tags()["models"]}
        return next(n for n in (f"{NAME}:1", f"{NAME}:2") if tags[n] == tags[f"{NAME}:latest"])

    assert latest() == f"{NAME}:1"
    promote(registry, f"{NAME}:2", PromoteOptions(data=None, force=True, reason="test"), None, None, daemon)
    assert latest() == f"{NAME}:2"
    uploads = len(ollama_double.requests_to("/api/create"))
    rollback(registry, NAME, daemon=daemon)
    assert latest() == f"{NAME}:1"
    assert [r.body for r in ollama_double.requests_to("/api/copy")] == [
        {"source": f"{NAME}:1", "destination": NAME}, {"source": f"{NAME}:2", "destination": NAME},
        {"source": f"{NAME}:1", "destination": NAME}]
    assert len(ollama_double.requests_to("/api/create")) == uploads  # a rollback uploads nothing


def test_export_to_a_daemon_creates_name_n_and_name(export, tiny_llama_dir, tmp_path, ollama_double):
    ollama_double.reset()
    # F16 with the parity check on (a tiny model's flat score distributions move under Q8_0's rounding): the
    # check's figures go into the version's manifest.
    result = CliRunner().invoke(cli, ["export-ollama", str(tiny_llama_dir), "--name", "daemon-rater", "--quant",
                                      "f16", "--parity-transcripts", "2", "--out", str(tmp_path / "out"),
                                      "--host", ollama_double.url, "--threads", "1",
                                      "--registry", str(tmp_path / "reg"), "--config", SHORT])
    assert result.exit_code == 0, result.output
    parity = open_registry(tmp_path / "reg").version("daemon-rater", 1).manifest["parity"]
    assert parity["quant"] == "f16" and parity["agreement"] == 1.0
    assert ollama_double.requests_to("/api/create")[-1].body["model"] == "daemon-rater:1"
    assert ollama_double.requests_to("/api/copy")[-1].body == {"source": "daemon-rater:1",
                                                               "destination": "daemon-rater"}
    assert open_registry(tmp_path / "reg").promoted("daemon-rater").manifest["daemon"]["model"] == "daemon-rater:1"
