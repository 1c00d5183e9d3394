"""Errors a user can act on.

Every error hcp raises for a user's mistake or a missing resource is an `HcpError`: its message is one line
that says what was given, what was expected and what to do. The CLI prints it and exits non-zero; anything
else is a bug and keeps its traceback.
"""

from __future__ import annotations


class HcpError(Exception):
    """A problem the user can fix; `str(error)` is the one-line message.

    `reason` is the same problem without the place it happened (the file name, say), for callers that record
    the place on their own, as the batch results file does.
    """

    exit_code = 1

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        self.reason = reason or message


class ConfigError(HcpError):
    """The configuration file is missing or invalid."""


class DataError(HcpError):
    """An input data file is missing, unreadable or invalid."""


class BackendError(HcpError):
    """A scoring backend could not be reached or used."""


class ModelNotFoundError(BackendError):
    """The requested model does not exist where it was looked for."""


class ContextOverflowError(HcpError):
    """A transcript does not fit the model's context together with the prompt and the answer."""


class InvalidOutputError(HcpError):
    """The model's answer did not validate against the rating schema, even after retries."""


class ExportError(HcpError):
    """A step of merge / convert / quantize / register cannot go on."""


class TrainingError(HcpError):
    """Training cannot start or go on."""
