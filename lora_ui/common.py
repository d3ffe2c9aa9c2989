"""Small helpers every page uses: the run manager, error display, number formatting, the shared config."""
from __future__ import annotations

import math
import time
from typing import Any

import streamlit as st

from lora_core.config import ConfigError, ExperimentConfig
from lora_core.errors import LoraLabError
from lora_core.paths import dir_bytes  # noqa: F401 - for the pages
from lora_core.runs import Runs, RunStatus, default_runs_dir

STATUS_ICON = {RunStatus.QUEUED: "⏳", RunStatus.RUNNING: "🏃", RunStatus.SUCCEEDED: "✅", RunStatus.FAILED: "❌",
               RunStatus.STOPPED: "⏹️"}
DONE = (RunStatus.SUCCEEDED, RunStatus.STOPPED)  # runs that ended with results worth showing


def runs() -> Runs:
    """The run manager for $LORA_LAB_RUNS_DIR or ./runs (re-read each call, so tests can set it); one per
    directory, shared by every session."""
    return _runs_in(str(default_runs_dir()))


@st.cache_resource(show_spinner=False)
def _runs_in(path: str) -> Runs:
    return Runs(path)


# -- errors ------------------------------------------------------------------------------------------------

def error_text(exc: BaseException) -> str:
    """One readable line for any engine error: ConfigError/DataError/ModelError already name the field."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])
    text = str(exc).strip() or type(exc).__name__
    if isinstance(exc, LoraLabError) or type(exc) is ValueError:
        return text
    return f"{type(exc).__name__}: {text}"


def show_error(exc: BaseException, where=None) -> None:
    """Show an engine error as st.error (in `where` if given) — never a traceback."""
    (where or st).error(error_text(exc), icon="🚫")


class FieldSlots:
    """An empty slot under each form field, so a ConfigError lands next to the field it names."""

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}

    def add(self, dotted: str) -> None:
        self._slots[dotted] = st.empty()

    def _best(self, dotted: str):
        # "lora.target_modules[0]" -> "lora.target_modules"; fall back to the section
        key = dotted.split("[")[0]
        while key:
            if key in self._slots:
                return self._slots[key]
            key = key.rpartition(".")[0]
        return None

    def show(self, exc: BaseException, fallback=None) -> None:
        field = getattr(exc, "field", "")
        slot = self._best(field) if field else None
        (slot or fallback or st).error(error_text(exc), icon="🚫")


# -- formatting --------------------------------------------------------------------------------------------

def fmt_bytes(n: float | None) -> str:
    if n is None or (isinstance(n, float) and math.isnan(n)):
        return "—"
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.2f} {unit}"
        n /= 1000
    return f"{n:.2f} TB"


def fmt_count(n: float | None) -> str:
    if n is None:
        return "—"
    n = float(n)
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return "—"
    seconds = max(0, int(round(seconds)))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h {m:02d}m" if h else (f"{m}m {s:02d}s" if m else f"{s}s")


def fmt_time(ts: float | str | None) -> str:
    if ts in (None, ""):
        return "—"
    if isinstance(ts, str):
        return ts.replace("T", " ")[:19]
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


# -- the shared config -------------------------------------------------------------------------------------

CURRENT_CONFIG_KEY = "cfg_current"  # a validated config dict, written by the Config builder, read by Train


def default_config() -> ExperimentConfig:
    """The offline default: bundled MiniLM, LoRA r=8 on Q+V, the bundled 2-class sentiment sample."""
    return ExperimentConfig.from_dict({"name": "minilm-lora-r8"})


def current_config() -> ExperimentConfig:
    data = st.session_state.get(CURRENT_CONFIG_KEY)
    if data:
        try:
            return ExperimentConfig.from_dict(data)
        except ConfigError:
            pass
    return default_config()


def set_current_config(cfg: ExperimentConfig) -> None:
    st.session_state[CURRENT_CONFIG_KEY] = cfg.to_dict()


# -- run helpers ---------------------------------------------------------------------------------------------

def primary_metric(results: dict | None) -> tuple[str, float | None]:
    """(name, value) of the headline eval metric: accuracy for classification, eval loss for causal LM."""
    if not results:
        return "accuracy", None
    metrics = results.get("metrics") if isinstance(results.get("metrics"), dict) else results
    for key in ("eval_accuracy", "accuracy"):
        if metrics.get(key) is not None:
            return "accuracy", float(metrics[key])
    for key in ("eval_loss",):
        if metrics.get(key) is not None:
            return "eval loss", float(metrics[key])
    return "accuracy", None


def pick_run(status: RunStatus | list[RunStatus], key: str, empty: str, *, keep=None, show_task: bool = False):
    """A selectbox over runs with the given status (reconciled first), or st.stop() with `empty` when there are
    none. `keep(record)` filters further. Returns the chosen RunRecord."""
    try:
        found = [r for r in runs().list(status=status) if keep is None or keep(r)]
    except Exception as exc:  # noqa: BLE001 - a broken registry is shown, not raised
        show_error(exc)
        st.stop()
    if not found:
        st.info(empty)
        st.stop()
    by_id = {r.id: r for r in found}

    def label(run_id: str) -> str:
        r = by_id[run_id]
        rank = f" r={r.lora_r}" if r.lora_r else ""
        return f"{r.name} · {r.task + ' · ' if show_task else ''}{r.method}{rank} · {run_id}"

    return by_id[st.selectbox("Run", list(by_id), key=key, format_func=label)]


# How numeric columns of run tables are shown, by column name (Runs and Compare share the names).
NUMBER_FORMATS = {
    "trainable": "localized", "trainable %": "%.3f%%", "accuracy": "%.4f", "macro-F1": "%.4f",
    "eval loss": "%.4f", "train time (s)": "%.1f", "peak mem (GB)": "%.3f", "est. peak (GB)": "%.3f",
    "adapter (MB)": "%.2f", "vs full: accuracy": "%.3f×", "vs full: time": "%.3f×",
    "vs full: trainable": "%.5f×", "vs full: memory": "%.3f×",
}


def number_columns(frame) -> dict:
    """st.dataframe column_config for the numeric run-table columns present in `frame`."""
    return {name: st.column_config.NumberColumn(format=fmt)
            for name, fmt in NUMBER_FORMATS.items() if name in frame.columns}
