"""Registering an exported model with the Ollama daemon: the GGUF uploaded as a blob, then `/api/create`."""

from __future__ import annotations

from typing import Any

from hcp.scoring.backends.ollama import OllamaNotRunningError, ollama_errors, resolve_host


def register(spec: Any, host: str | None, timeout: float | None) -> bool:
    """Upload the GGUF of `spec` (a ModelfileSpec) and create the model; False, not an error, when no daemon
    answers: the export's files stand on their own and can be registered later with `ollama create`."""
    import ollama

    url = resolve_host(host)
    client = ollama.Client(host=url, timeout=timeout)
    try:
        with ollama_errors(url, f"the upload and creation of {spec.name}", timeout):
            digest = client.create_blob(spec.gguf)
            client.create(**spec.create_request(digest), stream=False)
    except OllamaNotRunningError:
        return False
    return True
