"""The registry on disk: numbered versions of each model name, and the history of which one is in use.

    <registry>/<name, %-quoted>/
        1/manifest.json, 1/<model>.gguf, 1/Modelfile      a version: written in a hidden folder, then renamed
        2/...
        history.json                                     every promotion, forced promotion, rollback, refusal
        predictions/                                     the gate's ratings, cached as `hcp evaluate` caches them
        promotions/<N>/                                  the promotion reports

Everything is its owner's alone (folders 0700, files 0600): the GGUF holds weights trained on patient
transcripts, the predictions the model's answers. Each file is written atomically (hcp.files), so a reader sees
the old content or the new. The promoted version is the one the last promotion or rollback made current; the
history is the only record of it, so that a rollback can always name the version before.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote

from hcp.errors import HcpError
from hcp.files import PRIVATE_DIR_MODE, PRIVATE_MODE, atomic_path, atomic_write_text, fsync_path, make_folder

REGISTRY_ENV = "HCP_REGISTRY"
MANIFEST = "manifest.json"
HISTORY = "history.json"
MODELFILE = "Modelfile"
# History actions that change the promoted version; a refusal is recorded too, but changes nothing.
PROMOTED, FORCED, ROLLBACK, REFUSED = "promote", "force", "rollback", "refused"
CURRENT_CHANGES = (PROMOTED, FORCED, ROLLBACK)
NUMBERED = re.compile(r"[1-9][0-9]{0,8}")


class RegistryError(HcpError):
    """The registry, a name or a version in it is missing, damaged or used wrongly."""


def default_registry() -> Path:
    """$HCP_REGISTRY, else $XDG_DATA_HOME/hcp/registry, else ~/.local/share/hcp/registry."""
    if os.environ.get(REGISTRY_ENV):
        return Path(os.environ[REGISTRY_ENV]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "hcp" / "registry"


@dataclass(frozen=True)
class Version:
    """One registered version: `name:number`, its files and its manifest."""

    name: str
    number: int
    folder: Path
    manifest: dict[str, Any]

    @property
    def label(self) -> str:
        return f"{self.name}:{self.number}"

    @property
    def gguf(self) -> Path:
        return self.folder / str(self.manifest["gguf"]["file"])

    @property
    def modelfile(self) -> Path:
        return self.folder / MODELFILE


def split_spec(spec: str) -> tuple[str, str | None]:
    """'clinic/hcp-rater:3' -> ('clinic/hcp-rater', '3'); 'hcp-rater' -> ('hcp-rater', None)."""
    name, colon, tag = spec.rpartition(":")
    if not colon or "/" in tag:
        return spec, None
    return name, tag


class Registry:
    """The versions under one registry folder. Reading never creates anything; writing creates the folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if self.root.exists() and not self.root.is_dir():
            raise RegistryError(f"{self.root}: a file is in the way of the registry folder — give --registry a "
                                f"folder (or set ${REGISTRY_ENV})")

    # -- reading

    def folder(self, name: str) -> Path:
        return self.root / quote(name, safe="")

    def names(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(unquote(p.name) for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))

    def versions(self, name: str) -> list[Version]:
        """Every version of `name`, oldest first ([] for a name not registered)."""
        folder = self.folder(name)
        if not folder.is_dir():
            return []
        numbers = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and NUMBERED.fullmatch(p.name))
        return [self._read(name, n) for n in numbers]

    def version(self, name: str, number: int) -> Version:
        folder = self.folder(name) / str(number)
        if not folder.is_dir():
            known = ", ".join(str(v.number) for v in self.versions(name))
            if not known:
                raise RegistryError(f"{name!r} is not in the registry at {self.root} — register it with "
                                    f"'hcp export-ollama MODEL_DIR --name {name}' ('hcp models list' shows the names)")
            raise RegistryError(f"{name} has no version {number} (versions: {known}) — 'hcp models list {name}' "
                                "shows them")
        return self._read(name, number)

    def _read(self, name: str, number: int) -> Version:
        folder = self.folder(name) / str(number)
        path = folder / MANIFEST
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(manifest, dict) or not isinstance(manifest.get("gguf"), dict) \
                    or not isinstance(manifest["gguf"].get("file"), str):
                raise ValueError("no gguf.file")
            if Path(manifest["gguf"]["file"]).name != manifest["gguf"]["file"]:
                raise ValueError("gguf.file must name a file in the version's folder")
        except FileNotFoundError:
            raise RegistryError(f"{path}: the manifest of {name}:{number} is missing — the version is damaged; "
                                "remove its folder, or export the model again") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: the manifest of {name}:{number} is not a registry manifest ({exc}) — "
                                "the version is damaged; remove its folder, or export the model again") from None
        return Version(name, number, folder, manifest)

    def history(self, name: str) -> list[dict[str, Any]]:
        path = self.folder(name) / HISTORY
        try:
            events = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return []
        except (ValueError, UnicodeDecodeError) as exc:
            raise RegistryError(f"{path}: the history of {name} is not JSON ({exc}) — restore it from a backup; "
                                "without it no version of this name is known to be promoted") from None
        if not isinstance(events, list) or not all(isinstance(e, dict) for e in events):
            raise RegistryError(f"{path}: the history of {name} is not a list of events — restore it from a backup")
        return events

    def promoted(self, name: str) -> Version | None:
        """The version the last promotion or rollback made current (None before the first)."""
        current = [e for e in self.history(name) if e.get("action") in CURRENT_CHANGES]
        return self.version(name, int(current[-1]["version"])) if current else None

    def resolve(self, spec: str) -> Version | None:
        """'NAME' (or 'NAME:latest') -> the promoted version; 'NAME:N' -> that version; None when NAME is not
        registered (another tag of it, 'NAME:v2', too: a name the daemon may know). A name registered without a
        promoted version, or an unknown N, is an error."""
        name, tag = split_spec(spec)
        if not self.versions(name):
            return None
        if tag is None or tag == "latest":
            version = self.promoted(name)
            if version is None:
                raise RegistryError(f"{name} has no promoted version yet — promote one: hcp models promote "
                                    f"{name}:N --data labelled.jsonl")
            return version
        if NUMBERED.fullmatch(tag) is None:
            return None
        return self.version(name, int(tag))

    # -- writing

    def next_number(self, name: str) -> int:
        versions = self.versions(name)
        return versions[-1].number + 1 if versions else 1

    def add(self, name: str, gguf: Path, modelfile_text: str, manifest: dict[str, Any],
            number: int | None = None) -> Version:
        """A new version of `name` from a GGUF and its Modelfile (its FROM line pointed at the copy), numbered
        `number` or the next free one. Built in a hidden folder and renamed into place, so a version folder is
        whole or absent; the GGUF is hard-linked when it already is its owner's alone, else copied."""
        make_folder(self.root, private=True)
        folder = make_folder(self.folder(name), private=True)
        work = folder / f".new-{secrets.token_hex(4)}"
        work.mkdir(mode=PRIVATE_DIR_MODE)
        try:
            _place_gguf(gguf, work / gguf.name)
            atomic_write_text(work / MODELFILE, point_from(modelfile_text, gguf.name), private=True)
            while True:
                chosen = number or self.next_number(name)
                record = {**manifest, "name": name, "version": chosen, "label": f"{name}:{chosen}",
                          "gguf": {**manifest.get("gguf", {}), "file": gguf.name}}
                atomic_write_text(work / MANIFEST, json.dumps(record, indent=2, ensure_ascii=False) + "\n",
                                  private=True)
                try:
                    os.rename(work, folder / str(chosen))  # fails if another export took the number first
                    break
                except OSError:
                    if number is not None:
                        raise RegistryError(f"{name}:{number} was registered meanwhile by another export — "
                                            "export again") from None
            fsync_path(folder)
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        return self._read(name, chosen)

    def update_manifest(self, version: Version, **fields: Any) -> Version:
        manifest = {**version.manifest, **fields}
        atomic_write_text(version.folder / MANIFEST, json.dumps(manifest, indent=2, ensure_ascii=False) + "\n",
                          private=True)
        return Version(version.name, version.number, version.folder, manifest)

    def record(self, name: str, event: dict[str, Any]) -> dict[str, Any]:
        """Append one event (time added) to the history of `name`; the file is rewritten atomically."""
        event = {"time": now(), **event}
        events = [*self.history(name), event]
        atomic_write_text(self.folder(name) / HISTORY, json.dumps(events, indent=2, ensure_ascii=False) + "\n",
                          private=True)
        return event


def open_registry(path: Path | None = None) -> Registry:
    """The registry at `path` (None: $HCP_REGISTRY, else hcp's data folder)."""
    return Registry(path if path is not None else default_registry())


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def point_from(modelfile_text: str, gguf_name: str) -> str:
    """The Modelfile with its FROM line pointing at the GGUF beside it."""
    lines = [f"FROM ./{gguf_name}" if line.startswith("FROM ") else line for line in modelfile_text.split("\n")]
    return "\n".join(lines)


def _place_gguf(source: Path, target: Path) -> None:
    if source.stat().st_mode & 0o077 == 0:
        try:
            os.link(source, target)  # the same bytes, no copy; a later export replaces its file, not this one
            return
        except OSError:
            pass  # another file system
    with atomic_path(target, private=True) as tmp:
        shutil.copyfile(source, tmp)
        os.chmod(tmp, PRIVATE_MODE)
