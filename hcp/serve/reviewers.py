"""Named reviewers and their tokens: the reviewers file of `hcp serve --reviewers FILE`.

One line per reviewer, `NAME SCRYPT-HASH`; blank lines and lines starting with '#' are skipped. The file is the
owner's alone (0600): `hcp serve add-reviewer NAME --reviewers FILE` adds a line and prints the new token once —
the file keeps only a salted scrypt hash of it, so a copy of the file signs no one in.

A token is `NAME.SECRET` (SECRET: 32 random bytes, URL-safe base64, which has no '.'): the name says which line
to check, so a request costs one scrypt at most, never one per reviewer. A token checked once is remembered for
the life of the server (by its SHA-256, never the token itself), so each reviewer pays the scrypt once; a wrong
token pays it every time, and only when it names a reviewer. The file is read again when it changes, so
reviewers added (or removed) while the server runs count from their next request.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import stat
import threading
from dataclasses import dataclass
from pathlib import Path

from hcp.errors import HcpError
from hcp.files import atomic_write_text
from hcp.serve.settings import ServeError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,39}")  # also the reviewer's file name: no '.', no path
NAME_RULE = "1 to 40 letters, digits, '_' or '-', starting with a letter or digit"
# scrypt's cost: 16 MiB and a few tens of milliseconds per check (RFC 7914's interactive-login setting).
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SALT_BYTES, SECRET_BYTES = 16, 32
SCHEME = "scrypt"


class ReviewerError(HcpError):
    """A request that would record a review under another reviewer than its own."""


def check_name(name: str, what: str = "reviewer name") -> str:
    if not NAME.fullmatch(name or ""):
        raise ServeError(f"{what} {name[:40]!r}: use {NAME_RULE}")
    return name


def hash_token(token: str, salt: bytes | None = None, n: int = SCRYPT_N, r: int = SCRYPT_R, p: int = SCRYPT_P) -> str:
    """'scrypt$N$r$p$SALT$HASH' (salt and hash URL-safe base64) of a token."""
    salt = secrets.token_bytes(SALT_BYTES) if salt is None else salt
    digest = hashlib.scrypt(token.encode(), salt=salt, n=n, r=r, p=p, maxmem=64 * 1024 * 1024, dklen=32)
    return "$".join([SCHEME, str(n), str(r), str(p), _b64(salt), _b64(digest)])


def token_matches(token: str, stored: str) -> bool:
    _, n, r, p, salt, _digest = stored.split("$")
    given = hash_token(token, base64.urlsafe_b64decode(salt + "=="), int(n), int(r), int(p))
    return hmac.compare_digest(given.encode(), stored.encode())


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


@dataclass(frozen=True)
class Reviewer:
    name: str
    hash: str


def parse_reviewers(path: Path, text: str) -> dict[str, Reviewer]:
    """The reviewers of a file's text, or a ServeError naming the line and what is wrong with it."""
    found: dict[str, Reviewer] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path}:{number}"
        parts = line.split()
        if len(parts) != 2:
            raise ServeError(f"{where}: expected 'NAME HASH' (two fields), got {len(parts)} — add reviewers with "
                             f"'hcp serve add-reviewer NAME --reviewers {path}', never by hand")
        name, stored = parts
        if not NAME.fullmatch(name):
            raise ServeError(f"{where}: reviewer name {name[:40]!r}: use {NAME_RULE}")
        fields = stored.split("$")
        if len(fields) != 6 or fields[0] != SCHEME or not all(f.isdigit() for f in fields[1:4]) or not all(fields[4:]):
            raise ServeError(f"{where}: the hash of {name} is not 'scrypt$N$r$p$salt$hash' — give them a new token "
                             f"with 'hcp serve add-reviewer {name} --reviewers {path} --replace'")
        if name in found:
            raise ServeError(f"{where}: {name} is named twice — keep one line per reviewer")
        found[name] = Reviewer(name, stored)
    return found


def read_reviewers(path: Path) -> dict[str, Reviewer]:
    """The reviewers file, checked: present, a file, the owner's alone, one valid line per reviewer, one or more."""
    try:
        info = path.stat()
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ServeError(f"--reviewers {path}: not found — create it with 'hcp serve add-reviewer NAME --reviewers "
                         f"{path}'") from None
    except IsADirectoryError:
        raise ServeError(f"--reviewers {path}: is a folder — give the reviewers file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ServeError(f"--reviewers {path}: cannot be read ({getattr(exc, 'strerror', None) or 'not UTF-8 text'})"
                         " — give the file 'hcp serve add-reviewer' wrote") from None
    found = parse_reviewers(path, text)
    if stat.S_IMODE(info.st_mode) & 0o077:
        raise ServeError(f"--reviewers {path}: others may read it (mode {stat.S_IMODE(info.st_mode):o}) — it holds "
                         f"the reviewers' token hashes: chmod 600 {path}")
    if not found:
        raise ServeError(f"--reviewers {path}: no reviewers in it — add one with 'hcp serve add-reviewer NAME "
                         f"--reviewers {path}'")
    return found


def add_reviewer(path: Path, name: str, replace: bool = False) -> str:
    """Add `name` to the reviewers file (created owner-only if missing) and return their new token, which is
    stored nowhere: only its hash is written."""
    check_name(name)
    existing = path.read_text(encoding="utf-8") if path.is_file() else ""
    if path.exists() and not path.is_file():
        raise ServeError(f"--reviewers {path}: is not a file — give the reviewers file")
    reviewers = parse_reviewers(path, existing)
    if name in reviewers and not replace:
        raise ServeError(f"{name} is in {path} already — pass --replace to give them a new token (their old one "
                         "stops working)")
    token = f"{name}.{secrets.token_urlsafe(SECRET_BYTES)}"
    kept = [line for line in existing.splitlines() if line.split()[:1] != [name]]
    atomic_write_text(path, "".join(f"{line}\n" for line in kept) + f"{name} {hash_token(token)}\n", private=True)
    return token


class Registry:
    """The reviewers of a running server: who a bearer token signs in (see the module's docstring)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reviewers = read_reviewers(path)
        self._stamp = self._stat()
        self._known: dict[bytes, str] = {}  # SHA-256 of a token checked already -> its reviewer
        self._lock = threading.Lock()

    def _stat(self) -> tuple[int, int] | None:
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_mtime_ns, info.st_size

    def _refresh(self) -> None:
        """Read the file again if it changed; a file made unreadable or invalid meanwhile keeps the last good
        reviewers (the server must not stop signing everyone in over a bad edit)."""
        stamp = self._stat()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            self.reviewers = read_reviewers(self.path)
        except ServeError:
            return
        self._known.clear()  # a removed reviewer, or a replaced token, is checked afresh

    def reviewer_of(self, token: bytes) -> str | None:
        """The reviewer a bearer token signs in, or None."""
        try:
            text = token.decode("ascii")
        except UnicodeDecodeError:
            return None
        name, dot, _secret = text.rpartition(".")
        key = hashlib.sha256(token).digest()
        with self._lock:
            self._refresh()
            known = self._known.get(key)
            if known is not None:
                return known
            reviewer = self.reviewers.get(name) if dot else None
        if reviewer is None or not token_matches(text, reviewer.hash):
            return None
        with self._lock:
            self._known[key] = reviewer.name
        return reviewer.name

