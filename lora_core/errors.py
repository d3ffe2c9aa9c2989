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

    def __reduce__(self):
        # subclasses take other constructor arguments: rebuild from the state, so errors pickle (caches, queues)
        return _rebuild, (type(self), self.args, self.__dict__)


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


class TrainingDiverged(RunError):
    """The loss or the gradient norm became NaN or infinite: the run ends at once, its weights are not saved."""


class ConfigProblems(ConfigError):
    """Every problem with one config, found at once (`lora_core.checks`). `problems` holds each (a LoraLabError
    naming its field); the message is the one problem, or a count and every problem one a line, so a terminal
    shows every bad field of a file in one go. `field` is the first problem's."""

    def __init__(self, problems: list[LoraLabError], source: str = ""):
        self.problems = list(problems)
        first = self.problems[0] if self.problems else LoraLabError("no problems")
        if len(self.problems) == 1:
            text = str(first)
        else:
            where = f" in {source}" if source else ""
            text = "\n".join([f"{len(self.problems)} problems{where}:", *(f"  - {p}" for p in self.problems)])
        super().__init__(first.field, text)
        self.args = (text,)

    def __str__(self) -> str:
        return self.args[0]


def _rebuild(cls, args: tuple, state: dict) -> LoraLabError:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class StorageError(RunError):
    """The runs directory cannot be written or read: a full disk, an I/O error. The message names the file."""


class TrackingError(LoraLabError):
    """An experiment tracker (MLflow, TensorBoard) could not be opened."""


class HubError(LoraLabError):
    """Pushing to the Hugging Face Hub failed (offline, no token, no such repo)."""
