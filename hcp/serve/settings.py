"""What `hcp serve` is asked to do, and the rule that keeps it private: loopback unless a token guards it."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from hcp.errors import HcpError

TOKEN_ENV = "HCP_API_TOKEN"
MB = 1024 * 1024


class ServeError(HcpError):
    """hcp serve cannot start as asked."""


@dataclass(frozen=True)
class ServeSettings:
    host: str = "127.0.0.1"
    port: int = 8000
    token: str | None = None  # every API request must carry it as 'Authorization: Bearer TOKEN'
    reviews: Path = Path("reviews.jsonl")  # reviewed ratings, in the training data format
    work_dir: Path = Path("hcp-serve")  # batch results (batches/) and saved invalid answers
    parallel: int = 1  # ratings at once on Ollama; the embedded backend rates one at a time
    queue: int = 16  # requests that may wait for the model beyond those being rated; more get 503
    max_body: int = 20 * MB  # larger request bodies get 413
    cors_origins: tuple[str, ...] = field(default_factory=tuple)  # CORS is off unless origins are named
    retry_after: int = 5  # seconds, in the Retry-After of a 503

    def check(self) -> None:
        """Refuse to listen beyond this machine without a token, before anything is loaded."""
        if self.token is not None and not self.token.strip():
            raise ServeError(f"--token is empty — give a long random string (or unset {TOKEN_ENV})")
        if not is_loopback(self.host) and not self.token:
            raise ServeError(
                f"--host {self.host} listens beyond this machine, and transcripts hold patient data — set a bearer "
                f"token with --token or {TOKEN_ENV} (e.g. {TOKEN_ENV}=$(openssl rand -hex 24)), or listen on "
                "127.0.0.1")
        if self.parallel < 1 or self.queue < 0 or self.max_body < 1:
            raise ServeError(f"parallel ({self.parallel}) must be at least 1, queue ({self.queue}) at least 0 and "
                             f"the body limit ({self.max_body}) positive")

    @property
    def batch_dir(self) -> Path:
        return self.work_dir / "batches"

    def access(self) -> str:
        """How the server can be reached, for the start-up line."""
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
