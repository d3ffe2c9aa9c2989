"""What the dashboard keeps in a browser session, and under which keys.

Each page owns the session-state keys that start with its prefix (`PageState`), so two pages never collide and a
test can find a page's widgets by key. The few things pages share have functions here: the current config (the
Config builder writes it, Train launches it), the runs launched from this session, the sweep Compare opens on.

Messages: an action's result is stored under its page (`PageState.post`) and shown on every run of that page,
fragment reruns included, until the next action replaces it or the user dismisses it, so feedback never flashes
by.

The current config also lives in the URL, one query parameter per field that differs from the defaults
(`?name=my+run&lora.r=16`), written whenever it changes and again on every page (a page switch drops query
parameters), so a refresh, the same link in a new tab, or a link shared with a colleague shows the same config.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import streamlit as st

from lora_core.config import ConfigError, ExperimentConfig, get_dotted, set_dotted
from lora_core.errors import ConfigProblems

_DEFAULTS = ExperimentConfig().to_dict()


@dataclass(frozen=True)
class Message:
    """Feedback on an action: `level` is success, error, warning or info (the st.* call that shows it); `note`
    is a smaller line under it (e.g. that a double-click was ignored)."""
    level: str
    text: str
    note: str = ""


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
    def post(self, level: str, text: str, note: str = "") -> None:
        self["message"] = Message(level, text, note)

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
INSPECT = PageState("insp_")
TEAM = PageState("team_")


# -- the current config --------------------------------------------------------------------------------------------

def default_config() -> ExperimentConfig:
    """The offline default: bundled MiniLM, LoRA r=8 on Q+V, the bundled 2-class sentiment sample."""
    return ExperimentConfig.from_dict({"name": "minilm-lora-r8"})


def current_config() -> ExperimentConfig:
    """The last valid config the Config builder showed (or loaded from a run or a link), else the default."""
    saved = BUILDER.get("current")
    if saved:
        try:
            return ExperimentConfig.from_dict(saved)
        except ConfigError:
            pass
    return default_config()


def set_current_config(cfg: ExperimentConfig) -> None:
    if cfg.to_dict() != BUILDER.get("current", _DEFAULTS):
        BUILDER.pop("link_problem")  # a config was chosen: the bad link no longer matters
    BUILDER["current"] = cfg.to_dict()
    keep_config_in_url()


def _flat_changes(data: dict, base: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} for every field of `data` that differs from `base`."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            out.update(_flat_changes(value, base[key], f"{prefix}{key}."))
        elif base.get(key, object()) != value:
            out[prefix + key] = value
    return out


def _is_field(key: str) -> bool:
    """True for a config field's dotted name (not a section, not another page's parameter)."""
    try:
        return not isinstance(get_dotted(_DEFAULTS, key), dict)
    except ConfigError:
        return False


def _url_value(value: Any) -> str:
    """Text as it is (unless it would read back as another type), anything else as JSON."""
    if isinstance(value, str):
        try:
            return value if json.loads(value) == value else json.dumps(value)
        except ValueError:
            return value
    return json.dumps(value, separators=(",", ":"))


def _from_url(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def config_to_params(cfg: ExperimentConfig) -> dict[str, str]:
    """The config as URL query parameters: one `dotted.field=value` per field that differs from the defaults,
    e.g. `?name=my+run&lora.r=16` (short, readable, editable by hand)."""
    return {key: _url_value(value) for key, value in _flat_changes(cfg.to_dict(), _DEFAULTS).items()}


def config_from_params(params) -> ExperimentConfig | None:
    """The config the URL's field parameters describe (None when it has none); ConfigProblems lists every bad
    one."""
    fields = {key: _from_url(params[key]) for key in params if _is_field(key)}
    if not fields:
        return None
    data = ExperimentConfig().to_dict()
    for key, value in fields.items():
        set_dotted(data, key, value)
    problems = ExperimentConfig.problems(data)
    if problems:
        raise ConfigProblems(problems, "the link")
    return ExperimentConfig.from_dict(data)


def restore_config_from_url() -> str | None:
    """On a session's first run, the config in the URL becomes the current config (a refresh, a new tab, a
    shared link). Returns what was wrong with the link's config, if anything, on every page until a config is
    chosen."""
    if not BUILDER.get("url_read"):
        BUILDER["url_read"] = True
        try:
            cfg = config_from_params(st.query_params)
        except ConfigError as exc:
            BUILDER["link_problem"] = ("The config in this link could not be used, so the default config is "
                                       f"shown. {exc}")
            cfg = None
        if cfg is not None:
            BUILDER["current"] = cfg.to_dict()
    return BUILDER.get("link_problem")


def keep_config_in_url() -> None:
    """Write the current config into the URL (no parameters for the default config), leaving other
    parameters alone."""
    cfg = current_config()
    wanted = {} if cfg == default_config() else config_to_params(cfg)
    params = st.query_params
    for key in [k for k in params if _is_field(k) and k not in wanted]:
        del params[key]
    for key, value in wanted.items():
        if params.get(key) != value:
            params[key] = value


# -- runs this session cares about ---------------------------------------------------------------------------------

def launched_runs() -> list[str]:
    """Ids of the runs launched from this browser session, oldest first."""
    return TRAIN.setdefault("launched", [])


def track_runs(run_ids) -> None:
    launched_runs().extend(run_ids)


def focus_sweep(sweep_id: str) -> None:
    """Open Compare on this sweep next time."""
    COMPARE["sweep"] = sweep_id
