"""Train: launch the built config (or a sweep over ranks / methods), then watch live runs.

Runs are launched through the run manager (lora_ui.common.runs) into their own worker processes; this script
only reads the registry and the metrics streams. The live panel is a fragment that re-runs every few seconds by itself,
so the curves grow without rerunning the page.
"""
import os

import pandas as pd
import streamlit as st

from lora_core.config import BUNDLED_MODELS, LORA_METHODS, ConfigError, ExperimentConfig
from lora_ui import engine
from lora_ui.common import (STATUS_ICON, LoraLabError, RunStatus, current_config, error_text, fmt_duration,
                            primary_metric, runs, show_error)
from lora_ui.config_form import P, cli_command, config_dict_from_state
from lora_ui.live import curves, progress_line, throughput_metrics

S = st.session_state
try:  # how often the live panel re-reads the registry (the browser test uses 1 s)
    REFRESH_S = max(0.5, float(os.environ.get("LORA_LAB_REFRESH_S", "2")))
except ValueError:
    REFRESH_S = 2.0
SWEEP_RANKS = [1, 2, 4, 8, 16, 32, 64]

S.setdefault("train_launched", [])  # run ids launched from this browser session, newest last


def preflight(cfg) -> None:
    """The checks a worker would fail on, done here first so the error lands on this page: data columns and
    labels (DataError), the model and its target names (ModelError). Raises the engine's own errors.
    A bundled model with a preset cannot fail the model check, so the first launch of the default config
    does not wait for torch to import in this process."""
    engine.preview(cfg)
    if cfg.model.source not in BUNDLED_MODELS or isinstance(cfg.lora.target_modules, list):
        engine.count_params(cfg)


def sweep_request(cfg, ranks: list[int], lora_methods: list[str], baselines: list[str]):
    """(base config, vary) for Runs.sweep: the first chosen method becomes the base (the launcher always
    keeps the base's method and adds the others); ranks apply only to the adapter methods."""
    methods = list(lora_methods) + list(baselines)
    if not methods:
        return None, {}
    base = cfg.replace(method=methods[0])
    vary: dict[str, list] = {"method": methods}
    if lora_methods and ranks:
        vary["lora.r"] = sorted(ranks)
    return base, vary


st.title("Train")
cfg = current_config()
if P + "name" in S:  # the Config builder has been used: say so if its form is invalid right now
    try:
        ExperimentConfig.from_dict(config_dict_from_state(S))
    except ConfigError as exc:
        st.warning(f"The Config builder has an invalid field ({exc}); this page launches the last valid config "
                   "shown below.")

with st.container(border=True):
    c1, c2 = st.columns([3, 1])
    with c1:
        st.markdown(f"**Config:** `{cfg.name}` — **{cfg.method}** on `{cfg.model.source}` ({cfg.task}), "
                    f"data `{cfg.data.train}`")
        lora = (f"r={cfg.lora.r}, α={cfg.lora.alpha:g} (scale {cfg.lora_scaling:.3g}), targets "
                f"{cfg.lora.target_modules or 'preset:qv'}" if cfg.uses_lora else "no adapters")
        length = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs:g} epochs"
        st.caption(f"{lora} · {length} · batch {cfg.train.batch_size} · lr {cfg.learning_rate:g} · "
                   f"seed {cfg.train.seed}")
    with c2:
        st.page_link("pages/config_builder.py", label="Edit config", icon=":material/tune:")

tab_one, tab_sweep = st.tabs(["Launch this config", "Sweep ranks / methods"])
with tab_one:
    if st.button("Launch run", icon=":material/rocket_launch:", type="primary", key="train_launch"):
        try:
            preflight(cfg)
            run_id = runs().launch(cfg)
            S["train_launched"].append(run_id)
            st.success(f"Launched **{run_id}** — it trains in its own process; closing the tab does not stop it.")
        except Exception as exc:  # noqa: BLE001 - ConfigError / DataError / ModelError name what is wrong
            show_error(exc)
    st.caption("Terminal equivalent: " + f"`{cli_command(cfg)}` (after exporting the YAML on the Config builder).")

with tab_sweep:
    st.markdown("One action launches a run per rank and method, with the same seed, data and eval split, "
                "grouped under one sweep id for the Compare page.")
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        ranks = st.multiselect("LoRA ranks", SWEEP_RANKS, default=[4, 8, 16], key="train_sweep_ranks")
    with c2:
        lora_methods = st.multiselect("Adapter methods", list(LORA_METHODS), default=["lora"],
                                      key="train_sweep_methods")
    with c3:
        allowed_baselines = ["full", "head-only"] if cfg.task == "seq-cls" else ["full"]
        baselines = st.multiselect("Baselines", allowed_baselines, default=allowed_baselines,
                                   key="train_sweep_baselines", help="Run once each, for the comparison.")
    planned, base, vary = [], None, {}
    if lora_methods or baselines:
        try:
            base, vary = sweep_request(cfg, ranks, lora_methods, baselines)
            planned = runs().plan_sweep(base, vary)
            st.dataframe(pd.DataFrame([{"run": c.name, "method": c.method,
                                        "rank": c.lora.r if c.uses_lora else None} for c in planned]),
                         hide_index=True, width="content")
            st.caption("Terminal equivalent: `" + cli_command(base, vary) + "`")
        except Exception as exc:  # noqa: BLE001 - e.g. head-only with a causal-lm config
            show_error(exc)
    if st.button(f"Launch sweep ({len(planned)} runs)", icon=":material/science:", key="train_sweep_go",
                 disabled=not planned):
        try:
            preflight(base)
            sweep_id, run_ids = runs().sweep(base, vary)
            S["train_launched"].extend(run_ids)
            S["compare_sweep"] = sweep_id
            st.success(f"Sweep **{sweep_id}**: {len(run_ids)} runs queued. They start by themselves as slots free "
                       "up; see them below and on Compare.")
        except Exception as exc:  # noqa: BLE001
            show_error(exc)


def stop_run(run_id: str) -> None:
    """Ask for a graceful stop and return at once (wait=False): the worker finishes the current step and saves
    the adapter and a checkpoint; past the timeout the live panel's reconcile() kills its process group."""
    try:
        runs().stop(run_id, wait=False)
        S["train_message"] = ("ok", f"Stopping {run_id}: it finishes the current step and saves the adapter "
                                    "and a checkpoint.")
    except Exception as exc:  # noqa: BLE001 - e.g. it already finished
        S["train_message"] = ("error", f"Stop {run_id}: {error_text(exc)}")


def resume_run(run_id: str) -> None:
    try:
        new_id = runs().resume(run_id)
        S["train_launched"].append(new_id)
        S["train_message"] = ("ok", f"Resumed {run_id} as the new linked run {new_id}.")
    except Exception as exc:  # noqa: BLE001 - e.g. no checkpoint
        S["train_message"] = ("error", f"Resume {run_id}: {error_text(exc)}")


def cancel_run(run_id: str) -> None:
    try:
        runs().cancel(run_id)
    except Exception as exc:  # noqa: BLE001
        S["train_message"] = ("error", f"Cancel {run_id}: {error_text(exc)}")


def move_run(run_id: str, position: int) -> None:
    try:
        runs().move(run_id, position)
    except Exception as exc:  # noqa: BLE001
        S["train_message"] = ("error", f"Move {run_id}: {error_text(exc)}")


def run_card(rec, x_axis: str) -> None:
    events = runs().metrics(rec.id)
    with st.container(border=True):
        c1, c2 = st.columns([4, 1])
        c1.markdown(f"{STATUS_ICON.get(rec.status, '')} **{rec.name}** · {rec.method}"
                    + (f" r={rec.lora_r}" if rec.lora_r else "") + f" · `{rec.id}`")
        if rec.status == RunStatus.RUNNING:
            c2.button("Stop", icon=":material/stop_circle:", key=f"train_stop_{rec.id}", on_click=stop_run,
                      args=(rec.id,), disabled=bool(rec.stop_requested),
                      help="Graceful: finishes the current step, saves the adapter and a checkpoint.")
        elif rec.status in (RunStatus.STOPPED, RunStatus.FAILED):
            c2.button("Resume", icon=":material/play_arrow:", key=f"train_resume_{rec.id}", on_click=resume_run,
                      args=(rec.id,), help="Continue from the last checkpoint as a new run linked to this one.")
        frac, text = progress_line(rec, events)
        if rec.status == RunStatus.RUNNING and rec.stop_requested:
            text = "stopping: saving the adapter and a checkpoint… · " + text
        st.progress(frac, text=text)
        if rec.status == RunStatus.FAILED:
            st.error(rec.error or "failed")
        elif rec.status == RunStatus.SUCCEEDED:
            name, value = primary_metric(rec.results)
            took = rec.results.get("train_time_s") or rec.duration
            st.success(f"Finished: {name} {value:.4f} · {fmt_duration(took)}" if value is not None
                       else f"Finished in {fmt_duration(took)}")
        throughput_metrics(events, st.columns(4))
        curves(rec.name, events, key=f"train_curves_{rec.id}", x=x_axis)
        with st.expander("Log tail"):
            st.code(runs().log_tail(rec.id, n=30) or "(empty)", language="text")


@st.fragment(run_every=REFRESH_S)
def live_panel() -> None:
    try:
        runs().reconcile()  # dead workers -> FAILED, queued runs -> free slots
    except Exception as exc:  # noqa: BLE001 - the panel keeps showing what it can
        show_error(exc)
    message = S.pop("train_message", None)
    if message:
        (st.success if message[0] == "ok" else st.error)(message[1])
    running = runs().list(status=RunStatus.RUNNING, reconcile=False)
    queued = runs().list(status=RunStatus.QUEUED, reconcile=False)
    mine = [i for i in S["train_launched"] if i not in {r.id for r in running + queued}]
    x_axis = st.session_state.get("train_x", "step")

    st.subheader(f"Live runs ({len(running)} running, {len(queued)} queued)")
    if not running and not queued:
        st.caption("Nothing is training right now. Launch the config above: the default (the bundled MiniLM, "
                   "LoRA r=8, the 600-row sentiment sample) needs no download and trains on a CPU.")
    for rec in running:
        run_card(rec, x_axis)
    if queued:
        st.markdown("**Queue** (starts by itself as slots free up)")
        for pos, rec in enumerate(queued):
            c = st.columns([5, 1, 1, 1])
            c[0].markdown(f"{pos + 1}. ⏳ **{rec.name}** · {rec.method}" + (f" r={rec.lora_r}" if rec.lora_r else "")
                          + f" · `{rec.id}`")
            c[1].button("↑", key=f"train_up_{rec.id}", on_click=move_run, args=(rec.id, pos - 1),
                        disabled=pos == 0, help="Move up the queue")
            c[2].button("↓", key=f"train_down_{rec.id}", on_click=move_run, args=(rec.id, pos + 1),
                        disabled=pos == len(queued) - 1, help="Move down the queue")
            c[3].button("Cancel", icon=":material/close:", key=f"train_cancel_{rec.id}", on_click=cancel_run,
                        args=(rec.id,))
    if mine:
        st.subheader("Launched from this session")
        for run_id in reversed(mine[-5:]):
            try:
                rec = runs().get(run_id, reconcile=False)
            except LoraLabError:
                continue  # deleted meanwhile
            run_card(rec, x_axis)


st.radio("Curves x-axis", ["step", "epoch", "elapsed_s"], key="train_x", horizontal=True,
         format_func={"step": "step", "epoch": "epoch", "elapsed_s": "wall time (s)"}.get)
try:
    live_panel()
except ConfigError as exc:
    show_error(exc)
