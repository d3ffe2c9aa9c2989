"""The server's settings, in one place.

Three come from the environment, fixed for the life of the server (the `serve` command sets the first):

    LORA_LAB_MODE          local (default): one user on this machine, no sign-in, bound to localhost
                           team: sign-in required, roles, files confined to the data roots
                           open: served to the network without sign-in (--insecure-no-auth); confined like team
    LORA_LAB_DATA_ROOTS    folders (separated by the OS path separator) whose files browser users may name
    LORA_LAB_MAX_UPLOAD_MB the largest dataset upload (default 50, as server.maxUploadSize)

The rest (`TeamSettings`) are changed by an admin on the Team page or with `python -m lora_core settings KEY=VALUE`,
kept in the run registry and written to the audit log. They are a dataclass whose fields carry their help text,
checked by the config's own conversion routine, so a bad value is refused naming the setting.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..config import ConfigError, parse_fields

MODES = ("local", "team", "open")
LOCAL, TEAM, OPEN = MODES
DEFAULT_MAX_UPLOAD_MB = 50


def _setting(default: Any, help: str, **limits: Any):
    if isinstance(default, list):
        return field(default_factory=list, metadata={"help": help, **limits})
    return field(default=default, metadata={"help": help, **limits})


@dataclass
class TeamSettings:
    trust_remote_code: list[str] = _setting(
        [], "Models (hub ids or local directories) whose own code (auto_map) a browser user may ask training to "
            "run with model.trust_remote_code. Empty: none. Never run while a page renders.")
    hub_models: list[str] = _setting(
        [], "Hub model ids browser users may name in model.source. Empty: any hub id (bundled models always).")
    hub_datasets: list[str] = _setting(
        [], "Hub dataset ids browser users may name in data.train / data.eval. Empty: any (samples always).")
    max_queued_per_user: int = _setting(
        8, "Runs one dashboard user may have queued or running at once.", min=1, max=10000)
    max_sweep_runs: int = _setting(16, "Runs one sweep from the dashboard may create.", min=1, max=10000)
    default_role: Literal["none", "viewer", "operator"] = _setting(
        "none", "Role of someone the identity provider signs in who is not on the user list; none refuses them.")

    @classmethod
    def names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def help(cls, name: str) -> str:
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}[name]

    @classmethod
    def parse(cls, data: dict) -> "TeamSettings":
        """Checked settings (ConfigError names the setting and the allowed values)."""
        return parse_fields(cls, data, "")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def team_settings(saved: dict) -> TeamSettings:
    """The defaults overlaid with what was saved; a saved value that no longer parses (an older version's, a
    hand edit) falls back to its default rather than locking the server out."""
    values = {}
    for name in TeamSettings.names():
        if name in saved:
            try:
                TeamSettings.parse({name: saved[name]})
                values[name] = saved[name]
            except ConfigError:
                continue
    return TeamSettings.parse(values)


def mode() -> str:
    value = os.environ.get("LORA_LAB_MODE", "").strip().lower() or LOCAL
    if value not in MODES:
        raise ConfigError("LORA_LAB_MODE", f"{value!r} is not a mode; allowed: {', '.join(MODES)}")
    return value


def data_roots() -> list[Path]:
    """LORA_LAB_DATA_ROOTS as absolute folders (links resolved)."""
    raw = os.environ.get("LORA_LAB_DATA_ROOTS", "")
    return [Path(p).expanduser().resolve() for p in raw.split(os.pathsep) if p.strip()]


def max_upload_bytes() -> int:
    raw = os.environ.get("LORA_LAB_MAX_UPLOAD_MB", "").strip()
    try:
        mb = float(raw) if raw else DEFAULT_MAX_UPLOAD_MB
    except ValueError:
        raise ConfigError("LORA_LAB_MAX_UPLOAD_MB", f"must be a number of megabytes, got {raw!r}") from None
    if mb <= 0:
        raise ConfigError("LORA_LAB_MAX_UPLOAD_MB", f"must be > 0, got {raw!r}")
    return int(mb * 1_000_000)
