"""Registering an exported model with the Ollama daemon: the GGUF uploaded as a blob, then `/api/create`."""

from __future__ import annotations

from typing import Any

from hcp.scoring.backends import DIRECT
from hcp.scoring.backends.ollama import (
    OllamaNotRunningError,
    check_remote,
    host_source,
    ollama_errors,
    resolve_host,
)

SENDS_MODEL = "the fine-tuned model (trained on patient data)"
INSTEAD = "else register with a daemon on this machine, or pass --no-create and copy the files yourself"


def check_register_host(host: str | None, allow_remote: bool) -> str:
    """The daemon's URL, checked before any work: a malformed address is an error, and a host off this machine
    is refused unless `allow_remote` (the model may have learned from the transcripts it was trained on)."""
    url = resolve_host(host)
    check_remote(url, allow_remote, source=host_source(host), sends=SENDS_MODEL, instead=INSTEAD)
    return url


def register(spec: Any, host: str | None, timeout: float | None, *, allow_remote: bool = False) -> bool:
    """Upload the GGUF of `spec` (a ModelfileSpec) and create the model; False, not an error, when no daemon
    answers: the export's files stand on their own and can be registered later with `ollama create`."""
    import ollama

    url = check_register_host(host, allow_remote)
    with ollama.Client(host=url, timeout=timeout, follow_redirects=False, **DIRECT) as client:
        try:
            with ollama_errors(url, f"the upload and creation of {spec.name}", timeout):
                digest = client.create_blob(spec.gguf)
                client.create(**spec.create_request(digest), stream=False)
        except OllamaNotRunningError:
            return False
    return True


def copy_model(source: str, destination: str, host: str | None, timeout: float | None, *,
               allow_remote: bool = False) -> bool:
    """`ollama cp SOURCE DESTINATION` through `/api/copy`: the daemon points the new name at the same layers, no
    upload. False, not an error, when no daemon answers."""
    import ollama

    url = check_register_host(host, allow_remote)
    with ollama.Client(host=url, timeout=timeout, follow_redirects=False, **DIRECT) as client:
        try:
            with ollama_errors(url, f"the copy of {source} to {destination}", timeout, model=source):
                client.copy(source, destination)
        except OllamaNotRunningError:
            return False
    return True
