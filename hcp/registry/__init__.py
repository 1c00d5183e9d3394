"""Registry: numbered versions of each model name, the promotion gate, rollback.

Takes an export (its GGUF, Modelfile and training folder) and a labelled set; gives numbered versions with their
manifests, a promotion decided against human labels with its report, and the history of what was current.

Every `hcp export-ollama` adds a version (store: the GGUF, its Modelfile and a manifest, manifest: what the
manifest records); `hcp models promote` rates a labelled set with the candidate and the promoted version and
promotes only when the candidate is not worse (gate, report); `hcp models rollback` makes the version before
current again (lifecycle). `--model NAME` and `NAME:N` resolve here for every backend that runs a GGUF.

The small API other stages use: `open_registry(path)`, `Registry.resolve("NAME" | "NAME:N") -> Version | None`,
`Version.name`, `.number`, `.label`, `.gguf`, `.manifest` (with `score_distribution` once the gate rated a set).
"""

from hcp.registry.store import Registry, RegistryError, Version, open_registry

__all__ = ["Registry", "RegistryError", "Version", "open_registry"]
