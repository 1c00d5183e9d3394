""".ci/run, run in a copy of the project whose setup, ruff and python are stand-ins: which pytest selections it
runs, and the exit status it gives for each outcome of them."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Stands in for .venv/bin/python: records its arguments (and whether a missing llama-server must fail the tests),
# exits with the next status listed in exits.txt.
FAKE_PYTHON = """#!/usr/bin/env bash
here=$(dirname "$0")
echo "$*${HCP_REQUIRE_LLAMA_SERVER:+ [llama-server required]}" >> "$here/calls.txt"
status=$(head -n 1 "$here/exits.txt")
sed -i 1d "$here/exits.txt"
exit "$status"
"""


def run_ci(tmp_path: Path, exits: list[int]) -> tuple[int, list[str], str]:
    """(exit status of .ci/run, the pytest calls it made, its output), the stand-in pytest exiting with `exits`."""
    (tmp_path / ".ci").mkdir()
    shutil.copy2(ROOT / ".ci" / "run", tmp_path / ".ci" / "run")
    (tmp_path / "scripts").mkdir()
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    setup = '#!/usr/bin/env bash\necho "setup $*" >> "$(dirname "$0")/../.venv/bin/calls.txt"\n'
    for path, text in ((tmp_path / "scripts" / "setup.sh", setup),
                       (bin_dir / "ruff", "#!/usr/bin/env bash\nexit 0\n"), (bin_dir / "python", FAKE_PYTHON)):
        path.write_text(text)
        path.chmod(0o755)
    (bin_dir / "exits.txt").write_text("".join(f"{e}\n" for e in exits))
    done = subprocess.run([str(tmp_path / ".ci" / "run")], capture_output=True, text=True, timeout=60)
    calls = (bin_dir / "calls.txt").read_text().splitlines()
    return done.returncode, calls, done.stdout + done.stderr


def test_ci_runs_the_default_selection_then_the_slow_tests(tmp_path):
    status, calls, _ = run_ci(tmp_path, [0, 0])
    assert status == 0
    # The slow tests are the README's CPU path (training from the SmolLM2 GGUF), the export's tokenization, and
    # --backend openai against llama-server, which setup builds first: there a missing build fails, never skips.
    assert calls == ["setup --llama-server", "-m pytest", "-m pytest -m slow and not gpu [llama-server required]"]


@pytest.mark.parametrize(
    "exits, expected",
    [
        pytest.param([5, 0], 1, id="default-collected-nothing"),
        pytest.param([0, 5], 1, id="slow-collected-nothing"),
        pytest.param([1, 0], 1, id="a-default-test-failed"),
        pytest.param([0, 1], 1, id="a-slow-test-failed"),
        pytest.param([2, 5], 2, id="both-failed-default-status-wins"),
    ],
)
def test_ci_fails_when_either_run_fails_or_collects_nothing(tmp_path, exits, expected):
    status, calls, output = run_ci(tmp_path, exits)
    assert status == expected
    assert len(calls) == 3  # setup, then the slow tests even after the default run failed: CI reports both
    if 5 in exits:
        assert "collected no tests" in output
