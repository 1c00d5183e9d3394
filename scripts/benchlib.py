"""What the bench scripts share: one way to run an `hcp` command as a child process, timed.

Every benchmark runs hcp as the user does, in a process of its own (`python -m hcp ...` with this interpreter,
the virtual environment's), so that imports, model loading and exit are part of what is measured. A command
that fails stops the benchmark with the tail of its output: a benchmark that half-ran reports nothing.

The scripts import it as `from benchlib import run_hcp`: run as `python scripts/bench_X.py`, scripts/ is
sys.path[0].
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple, NoReturn

# After a prelude, what `python -m hcp` runs: hcp/__main__.py as __main__, with the child's argv.
HCP_ENTRY = "\nimport runpy\nrunpy.run_module('hcp', run_name='__main__', alter_sys=True)\n"

TAIL_LINES = 10  # of a failed command's output, in the error: enough to see why, hcp logs no transcript text


class HcpRun(NamedTuple):
    seconds: float  # wall time of the child process, start to exit
    stdout: str  # empty when the output went to a log file


def hcp_command(args: Sequence[str], prelude: str | None = None) -> list[str]:
    """The argv of a child that runs `hcp ARGS`; with `prelude`, that Python code runs first in the same
    process (to patch or count something inside hcp), then hcp exactly as `-m hcp` would."""
    if prelude is None:
        return [sys.executable, "-m", "hcp", *args]
    return [sys.executable, "-c", prelude + HCP_ENTRY, *args]


def run_hcp(args: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
            log: Path | None = None, prelude: str | None = None) -> HcpRun:
    """Run `hcp ARGS` in a child process and return its wall time and stdout; exit with the tail of its
    output when it fails.

    `env` is added to this process's environment. With `log`, stdout and stderr go to that file together, in
    the order the command wrote them; without, they are captured apart, so that stdout can be parsed.
    """
    command = hcp_command(args, prelude)
    child_env = {**os.environ, **env} if env else None
    started = time.perf_counter()
    if log is None:
        done = subprocess.run(command, env=child_env, cwd=cwd, capture_output=True, text=True, check=False)
    else:
        with log.open("w") as out:
            done = subprocess.run(command, env=child_env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                  check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        fail(args, done.returncode, log.read_text(errors="replace") if log else done.stderr or done.stdout, log)
    return HcpRun(seconds, done.stdout or "")


def fail(args: Sequence[str], returncode: int, output: str, log: Path | None = None) -> NoReturn:
    """Stop the benchmark with the last lines of what the command wrote (its stderr, where it was captured)."""
    tail = output.strip().splitlines()[-TAIL_LINES:]
    where = f" — all of it in {log}" if log else ""
    raise SystemExit(f"hcp {' '.join(args[:1])} failed (exit {returncode}){where}:\n" + "\n".join(tail))


class OtherLoad:
    """CPU seconds that processes other than this benchmark used meanwhile (from /proc/stat; Linux): the
    load average cannot tell, since the benchmark's own llama.cpp threads count in it."""

    def __init__(self) -> None:
        self.start = self._busy(), self._ours()

    @staticmethod
    def _busy() -> float:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().split("\n")[0].split()[1:9]]
        except OSError:
            return float("nan")
        return (sum(values) - values[3] - values[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait

    @staticmethod
    def _ours() -> float:
        return sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))

    def seconds(self) -> float:
        return max(0.0, (self._busy() - self.start[0]) - (self._ours() - self.start[1]))


MAX_LOAD = 1.5  # load average above which a timing benchmark refuses to start without --force


def quiet_embedded_model(force: bool) -> tuple[Path, float]:
    """The embedded default GGUF, read once into the page cache so that the first timed run does not pay for the
    disk, and the load average before; exits first when the machine is busy (llama.cpp threads spin while they
    wait, so a busy neighbour would be measured too) unless `force`."""
    load = os.getloadavg()[0]
    if load > MAX_LOAD and not force:
        sys.exit(f"load average {load:.2f} is over {MAX_LOAD}: the timings would measure the other jobs — wait, "
                 "or --force")
    from hcp.scoring.backends.llama_cpp import default_model_path

    model = default_model_path()
    model.read_bytes()
    return model, load
