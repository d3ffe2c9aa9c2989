"""Every error the engine raises on purpose. One base class, so the CLI and the dashboard catch one thing.

Each error says what is wrong in one line a user can act on. `field` names the config field when there is one
(dotted, e.g. `lora.r`), so the dashboard can put the message under the widget that holds it.
"""
from __future__ import annotations


class LoraLabError(ValueError):
    """Base of every engine error. `str(err)` is the whole message; `field` is the config field or ""."""

    def __init__(self, message: str = "", field: str = ""):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field and not message.startswith(f"{field}:") else message)


class ConfigError(LoraLabError):
    """A config value is wrong. `field` is the dotted path, e.g. `lora.r`."""

    def __init__(self, field: str, message: str):
        super().__init__(message, field)


class DataError(LoraLabError):
    """The data cannot be used; the message names the file, the column and the row."""


class ModelError(LoraLabError):
    """A model source, target module or model file is wrong. The message says what exists instead."""


class EstimateError(LoraLabError):
    """The memory estimator cannot estimate this input."""


class RunError(LoraLabError):
    """A run action cannot be done: unknown run id, nothing to resume from, a run that is still running."""


class StatusError(RunError):
    """An illegal status change, e.g. from a terminal state."""


class StorageError(RunError):
    """The runs directory cannot be written or read: a full disk, an I/O error. The message names the file."""
