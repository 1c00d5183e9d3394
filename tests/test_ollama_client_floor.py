"""The lowest ollama-python that setup.cfg allows, for real: a fresh virtual environment holding that version
(and only what scoring imports, from PyPI), hcp from this checkout on PYTHONPATH, rating through the protocol
double over HTTP: `hcp score` in auto mode (the probe and close() use the client as a context manager), `hcp
batch` through Ollama, and an export's registration (blob upload, /api/create). The default suite runs the
version installed in .venv; together they test both ends of the declared range's lows and the one in use."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from hcp.scoring.backends.llama_cpp import default_model_path
from tests.fakes import GOOD_ANSWER
from tests.ollama_double import ForcedReply

ROOT = Path(__file__).resolve().parent.parent
SHORT = str(ROOT / "tests" / "data" / "short_answers.yaml")
TRANSCRIPT = "RD: Hello, what brings you in today? Patient: My blood pressure is high and I love salty snacks."
# What `hcp score` and `hcp batch` import besides the standard library (ollama brings httpx and pydantic).
SCORING_PACKAGES = ["click", "pyyaml", "rich", "tqdm"]


def lowest_allowed() -> str:
    match = re.search(r"^\s*ollama>=([0-9.]+),", (ROOT / "setup.cfg").read_text(), re.M)
    assert match, "setup.cfg: no 'ollama>=X,' requirement"
    return match.group(1)


@pytest.fixture(scope="module")
def floor_python(tmp_path_factory) -> Path:
    venv = tmp_path_factory.mktemp("ollama-floor") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    pip = subprocess.run([python, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                          f"ollama=={lowest_allowed()}", *SCORING_PACKAGES],
                         capture_output=True, text=True, timeout=600)
    assert pip.returncode == 0, f"pip could not build the environment (PyPI reachable?): {pip.stderr[-2000:]}"
    return python


def run(python: Path, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([python, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


@pytest.mark.slow
def test_the_lowest_allowed_client_rates_and_registers(floor_python, ollama_double, tmp_path):
    from tests.test_ollama_backend import sentencepiece_gguf

    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(ROOT), "PYTHONNOUSERSITE": "1", "HOME": str(tmp_path),
           "XDG_CACHE_HOME": str(tmp_path / "cache"), "OLLAMA_HOST": ollama_double.url}
    probe = run(floor_python, ["-c", "import importlib.metadata as m, ollama, llama_cpp"], env, tmp_path)
    assert "No module named 'llama_cpp'" in probe.stderr  # nothing leaks in from the main environment
    version = run(floor_python, ["-c", "import importlib.metadata as m, ollama; print(m.version('ollama'), "
                                 "ollama.__file__)"], env, tmp_path).stdout.split()
    assert version[0] == lowest_allowed() and version[1].startswith(str(floor_python.parent.parent))

    ollama_double.reset()
    ollama_double.add_model("hcp-rater", default_model_path())
    try:
        # auto: probes the daemon (a client as a context manager), finds hcp-rater, rates for real.
        score = run(floor_python, ["-m", "hcp", "-v", "score", TRANSCRIPT, "--json", "--config", SHORT], env,
                    tmp_path)
        assert score.returncode == 0, score.stderr
        payload = json.loads(score.stdout)
        assert (payload["backend"], payload["model"]) == ("ollama", "hcp-rater") and payload["output_tokens"] > 5

        (tmp_path / "in.jsonl").write_text("".join(json.dumps({"id": f"v{n}", "transcript": f"{TRANSCRIPT} {n}"})
                                                   + "\n" for n in range(3)))
        ollama_double.force_replies(*[ForcedReply(json.dumps(GOOD_ANSWER))] * 3)
        batch = run(floor_python, ["-m", "hcp", "batch", "in.jsonl", "--out", "out.jsonl", "--backend", "ollama",
                                   "--parallel", "2"], env, tmp_path)
        assert batch.returncode == 0, batch.stderr
        records = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
        assert sorted(r["id"] for r in records) == ["v0", "v1", "v2"] and {r["status"] for r in records} == {"ok"}

        gguf = sentencepiece_gguf(tmp_path / "m.gguf")
        code = ("import sys, types; from hcp.export.register import register; "
                "spec = types.SimpleNamespace(name='floor-rater', gguf=sys.argv[1], create_request=lambda d: "
                "{'model': 'floor-rater', 'files': {'m.gguf': d}, 'system': 'Rate.'}); "
                "print(register(spec, None, 60))")
        registered = run(floor_python, ["-c", code, str(gguf)], env, tmp_path)
        assert registered.stdout.strip() == "True", registered.stderr
        assert "floor-rater:latest" in [m["name"] for m in ollama_double.tags()["models"]]
    finally:
        ollama_double.reset()
        for name in ("hcp-rater", "floor-rater"):
            if f"{name}:latest" in [m["name"] for m in ollama_double.tags()["models"]]:
                ollama_double.delete({"model": name})
