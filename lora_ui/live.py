"""Reading a run's metrics stream into what the pages show: progress, ETA, throughput, curves."""
from __future__ import annotations

import os
from typing import Any

import streamlit as st

from lora_ui import charts
from lora_ui.format import fmt_bytes, fmt_duration
from lora_ui.service import RunStatus

try:  # how often a live panel re-reads the registry while a run is live (the browser test uses 1 s)
    REFRESH_S = max(0.5, float(os.environ.get("LORA_LAB_REFRESH_S", "2")))
except ValueError:
    REFRESH_S = 2.0
# how often an idle page checks whether a run started elsewhere (another tab, a teammate, the CLI): one registry
# read, no redraw
IDLE_CHECK_S = max(REFRESH_S, 10.0)


def last(events: list[dict], key: str, kind: str | None = None) -> Any:
    """The latest value of `key` in the stream (optionally only in events of one kind)."""
    for e in reversed(events):
        if (kind is None or e.get("kind") == kind) and e.get(key) is not None:
            return e[key]
    return None


def phase(events: list[dict]) -> str | None:
    return last(events, "phase", kind="phase") or last(events, "name", kind="phase")


def progress_line(rec, events: list[dict]) -> tuple[float, str]:
    """(fraction done, one line of text) for a live or finished run."""
    frac = last(events, "progress")
    if frac is None:
        frac = rec.progress
    frac = min(1.0, max(0.0, float(frac or 0.0)))
    parts = []
    step = last(events, "step")
    total = last(events, "max_steps")
    if total is None and step and frac > 0:
        total = round(step / frac)  # events carry progress = step / max_steps
    if step is not None:
        parts.append(f"step {step}" + (f"/{total}" if total else ""))
    epoch = last(events, "epoch")
    if epoch is not None:
        parts.append(f"epoch {float(epoch):.2f}")
    if rec.status == RunStatus.RUNNING:
        current = phase(events)
        if current and current != "training":
            parts.insert(0, current.replace("_", " ") + "…")
        eta = last(events, "eta_s")
        if eta is not None:
            parts.append(f"ETA {fmt_duration(eta)}")
    elapsed = last(events, "elapsed_s")
    if elapsed is not None:
        parts.append(f"elapsed {fmt_duration(elapsed)}")
    return frac, " · ".join(parts) or rec.status.lower()


def run_average(events: list[dict], key: str) -> float | None:
    """The run's average rate from its logging windows: each window covers the same number of steps, so the
    run's rate (all samples / all time) is the harmonic mean of the windows' rates."""
    rates = [e[key] for e in events if e.get("kind") == "log" and e.get(key)]
    return len(rates) / sum(1.0 / r for r in rates) if rates else None


def throughput_metrics(events: list[dict], cols) -> None:
    """Samples/s and tokens/s (the run's average, the last logging window as the delta line), peak memory and
    the latest loss as st.metric tiles in `cols` (4 columns)."""
    for col, key, label, fmt in ((cols[0], "samples_per_s", "Samples / s (run average)", "{:.1f}"),
                                 (cols[1], "tokens_per_s", "Tokens / s (run average)", "{:,.0f}")):
        average, window = run_average(events, key), last(events, key, kind="log")
        col.metric(label, fmt.format(average) if average is not None else "—",
                   delta=f"last window {fmt.format(window)}" if window is not None else None, delta_color="off",
                   help="Average over every logging window so far; the line below is the latest window alone.")
    peak = last(events, "peak_mem_bytes")
    loss = last(events, "loss", kind="log")
    cols[2].metric("Peak memory", fmt_bytes(peak))
    cols[3].metric("Train loss", f"{loss:.4f}" if loss is not None else "—")


def curves(label: str, events: list[dict], key: str, x: str = "step") -> None:
    """Loss (train + eval) and eval-metric charts for one run, side by side."""
    has_loss = any(e.get("kind") == "log" and e.get("loss") is not None for e in events)
    if not has_loss and last(events, "eval_loss") is None:
        st.caption("No loss logged yet — the first point appears after `logging_steps` steps.")
        return
    c1, c2 = st.columns(2)
    with c1:
        st.plotly_chart(charts.curves_figure([(label, events)], x=x, title="Loss"), key=f"{key}_loss",
                        width="stretch")
    fig = charts.eval_metrics_figure(events, x=x)
    with c2:
        if fig is not None:
            st.plotly_chart(fig, key=f"{key}_eval", width="stretch")
        else:
            st.caption("Eval metrics appear after the first evaluation.")
