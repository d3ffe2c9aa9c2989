"""What the dashboard keeps in a browser session, and under which keys.

Each page owns the session-state keys that start with its prefix (`PageState`), so two pages never collide and a
test can find a page's widgets by key. The few things pages share have functions here: the current config (the
Config builder writes it, Train launches it), the runs launched from this session, the sweep Compare opens on.

Messages: an action's result is stored under its page (`PageState.post`) and shown on every run of that page,
fragment reruns included, until the next action replaces it or the user dismisses it, so feedback never flashes
by. Keeping the current config in the URL or a server-side draft (so a refresh keeps it) is a change to
`current_config` / `set_current_config` alone.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import streamlit as st

from lora_core.config import ConfigError, ExperimentConfig


@dataclass(frozen=True)
class Message:
    """One line of feedback: `level` is success, error, warning or info (the st.* call that shows it)."""
    level: str
    text: str


class PageState:
    """The session-state keys of one page: `key("launch")` is "train_launch" on the Train page."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def key(self, name: str) -> str:
        return self.prefix + name

    def __contains__(self, name: str) -> bool:
        return self.key(name) in st.session_state

    def __getitem__(self, name: str) -> Any:
        return st.session_state[self.key(name)]

    def __setitem__(self, name: str, value: Any) -> None:
        st.session_state[self.key(name)] = value

    def get(self, name: str, default: Any = None) -> Any:
        return st.session_state.get(self.key(name), default)

    def setdefault(self, name: str, value: Any) -> Any:
        return st.session_state.setdefault(self.key(name), value)

    def pop(self, name: str, default: Any = None) -> Any:
        return st.session_state.pop(self.key(name), default)

    # -- feedback that lasts until the next action -------------------------------------------------------------
    def post(self, level: str, text: str) -> None:
        self["message"] = Message(level, text)

    def message(self) -> Message | None:
        return self.get("message")

    def dismiss(self) -> None:
        self.pop("message")


TRAIN = PageState("train_")
BUILDER = PageState("cfg_")
ESTIMATOR = PageState("est_")
QLORA = PageState("qlora_")
RUNS = PageState("runs_")
COMPARE = PageState("compare_")
MERGE = PageState("merge_")
PLAYGROUND = PageState("play_")
TEAM = PageState("team_")


# -- the current config --------------------------------------------------------------------------------------------

def default_config() -> ExperimentConfig:
    """The offline default: bundled MiniLM, LoRA r=8 on Q+V, the bundled 2-class sentiment sample."""
    return ExperimentConfig.from_dict({"name": "minilm-lora-r8"})


def current_config() -> ExperimentConfig:
    """The last valid config the Config builder showed (or loaded from a run), else the default."""
    saved = BUILDER.get("current")
    if saved:
        try:
            return ExperimentConfig.from_dict(saved)
        except ConfigError:
            pass
    return default_config()


def set_current_config(cfg: ExperimentConfig) -> None:
    BUILDER["current"] = cfg.to_dict()


# -- runs this session cares about ---------------------------------------------------------------------------------

def launched_runs() -> list[str]:
    """Ids of the runs launched from this browser session, oldest first."""
    return TRAIN.setdefault("launched", [])


def track_runs(run_ids) -> None:
    launched_runs().extend(run_ids)


def focus_sweep(sweep_id: str) -> None:
    """Open Compare on this sweep next time."""
    COMPARE["sweep"] = sweep_id
