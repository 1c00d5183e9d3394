"""What `hcp serve` is asked to do, and the rules that keep it private: loopback unless a token guards it, and
its files (reviews, batches: patient data) in folders of the owner's alone, by default in hcp's per-user state
folder, never in the folder it was started from (a project's work tree, which others may read or commit)."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from hcp.errors import HcpError
from hcp.files import PRIVATE_DIR_MODE, state_dir

TOKEN_ENV = "HCP_API_TOKEN"
MB = 1024 * 1024


class ServeError(HcpError):
    """hcp serve cannot start as asked."""


def serve_folder() -> Path:
    """Where hcp serve keeps its reviews and batches unless told otherwise: <hcp's state folder>/serve
    ($XDG_STATE_HOME/hcp/serve, else ~/.local/state/hcp/serve)."""
    return state_dir() / "serve"


def make_private_folder(folder: Path, option: str) -> Path:
    """Create `folder` and any missing parents readable by their owner only (0700, whatever the umask); a folder
    that exists keeps the mode its owner gave it. A ServeError naming `option` when it cannot be created."""
    missing = [path for path in (folder, *folder.parents) if not path.is_dir()]
    try:
        for path in reversed(missing):
            path.mkdir(mode=PRIVATE_DIR_MODE, exist_ok=True)
            os.chmod(path, PRIVATE_DIR_MODE)
    except OSError as exc:
        reason = "a file is in the way" if isinstance(exc, (FileExistsError, NotADirectoryError)) else exc.strerror
        raise ServeError(f"{option}: cannot create the folder {folder} ({reason}) — choose a location you can write "
                         "to") from None
    return folder


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # every API request must carry it as 'Authorization: Bearer TOKEN'
    reviews: Path = field(default_factory=lambda: serve_folder() / "reviews.jsonl")  # in the training data format
    work_dir: Path = field(default_factory=serve_folder)  # batch results (batches/), invalid answers
    parallel: int = 1  # ratings at once on Ollama; the embedded backend rates one at a time
    queue: int = 16  # requests that may wait for the model beyond those being rated; more get 503
    max_body: int = 20 * MB  # larger request bodies get 413
    cors_origins: tuple[str, ...] = field(default_factory=tuple)  # CORS is off unless origins are named
    retry_after: int = 5  # seconds, in the Retry-After of a 503
    canary_share: float = 0.0  # of the transcripts, rated by the canary version (chosen by content id)
    drift_window: int = 200  # a version's last N ratings, whose score distribution /metrics compares (PSI)
    shadow_backlog: int = 8  # transcripts that may wait for the shadow version; more are dropped (and counted)
    reviewers: Path | None = None  # the reviewers file: named reviewers, each signing in with a token of their own
    queue_from: Path | None = None  # a results file of hcp batch: the review queue's ratings
    queue_input: Path | None = None  # the input that batch rated: the queue's transcripts
    random_share: float = 0.2  # of the queue's picks, drawn at random rather than least confident first
    queue_seed: int | None = None  # of those random picks (None: a new seed each start)

    def check(self) -> None:
        """Refuse to listen beyond this machine without a token, before anything is loaded."""
        if self.token is not None and not self.token.strip():
            raise ServeError(f"--token is empty — give a long random string (or unset {TOKEN_ENV})")
        if not is_loopback(self.host) and not self.token and self.reviewers is None:
            raise ServeError(
                f"--host {self.host} listens beyond this machine, and transcripts hold patient data — set a bearer "
                f"token with --token or {TOKEN_ENV} (e.g. {TOKEN_ENV}=$(openssl rand -hex 24)), give each reviewer "
                "a token of their own with --reviewers FILE, or listen on 127.0.0.1")
        if not 0 <= self.random_share <= 1:
            raise ServeError(f"--random-share {self.random_share}: give a share from 0 to 1 (e.g. 0.2)")
        if (self.queue_from is None) != (self.queue_input is None):
            given, other = ("--queue-from", "--queue-input") if self.queue_from else ("--queue-input", "--queue-from")
            raise ServeError(f"{given} needs {other} too: a results file holds ratings, never the transcripts they "
                             "rate — give the results (--queue-from) and the input that batch rated (--queue-input)")
        if self.parallel < 1 or self.queue < 0 or self.max_body < 1:
            raise ServeError(f"parallel ({self.parallel}) must be at least 1, queue ({self.queue}) at least 0 and "
                             f"the body limit ({self.max_body}) positive")
        if not 0.0 <= self.canary_share <= 1.0:
            raise ServeError(f"--canary-share {self.canary_share:g}: must be between 0 and 1 (0.1: a tenth of the "
                             "transcripts go to the canary)")
        if self.drift_window < 1 or self.shadow_backlog < 0:
            raise ServeError(f"the drift window ({self.drift_window}) must be at least 1 and the shadow backlog "
                             f"({self.shadow_backlog}) at least 0")

    def make_folders(self) -> None:
        """Create the folders the server writes patient data to (any that are missing, the owner's alone), or
        say in one line why one cannot be, before anything is loaded."""
        make_private_folder(self.reviews.parent, "--reviews")
        make_private_folder(self.batch_dir, "--work-dir")

    @property
    def batch_dir(self) -> Path:
        return self.work_dir / "batches"

    def access(self) -> str:
        """How the server can be reached, for the start-up line."""
        if self.reviewers is not None:
            where = "loopback only (this machine)" if is_loopback(self.host) else f"listening on {self.host}"
            return f"{where}: every API request needs a reviewer's token (or the server's)"
        if is_loopback(self.host):
            guard = "every API request needs the bearer token" if self.token else "no token"
            return f"loopback only (this machine), {guard}"
        return f"listening beyond this machine on {self.host}: every API request needs the bearer token"


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 or 'localhost'; any other name or address may be reachable from elsewhere."""
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
