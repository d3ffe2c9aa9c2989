"""Runs: every run in the registry with filters; open one for its config, curves, results, artifacts and log."""
import json

import pandas as pd
import streamlit as st

from lora_core.config import ConfigError
from lora_ui.common import (STATUS_ICON, RunStatus, error_text, fmt_bytes, fmt_duration, fmt_time, number_columns,
                            primary_metric, runs, show_error)
from lora_ui.config_form import state_from_config
from lora_ui.live import curves, progress_line

S = st.session_state

st.title("Runs")


def list_all():
    return runs().list()  # reconciles first: a dead worker never shows as RUNNING


def row(rec) -> dict:
    res = rec.results or {}
    name, value = primary_metric(res)
    return {
        "status": f"{STATUS_ICON.get(rec.status, '')} {rec.status}",
        "name": rec.name,
        "method": rec.method,
        "rank": rec.lora_r,
        "accuracy": value if name == "accuracy" else None,
        "eval loss": res.get("eval_loss"),
        "trainable": res.get("trainable_params"),
        "train time (s)": res.get("train_time_s"),
        "peak mem (GB)": res["peak_mem_bytes"] / 1e9 if res.get("peak_mem_bytes") else None,
        "created": fmt_time(rec.created),
        "sweep": rec.sweep_id or "",
        "id": rec.id,
    }


try:
    all_runs = list_all()
except Exception as exc:  # noqa: BLE001 - an unreadable runs dir is reported, not raised
    show_error(exc)
    st.stop()

if not all_runs:
    st.info("No runs yet. Launch one from the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/rocket_launch:")
    st.stop()

c1, c2, c3, c4 = st.columns([1, 1, 1, 2])
statuses = c1.multiselect("Status", list(RunStatus), key="runs_status")
methods = c2.multiselect("Method", ["full", "lora", "qlora", "head-only"], key="runs_method")
sweeps = sorted({r.sweep_id for r in all_runs if r.sweep_id}, reverse=True)
sweep = c3.selectbox("Sweep", ["(all)"] + sweeps, key="runs_sweep")
text = c4.text_input("Search name or id", key="runs_search", placeholder="e.g. r8 or minilm")

shown = [r for r in all_runs
         if (not statuses or r.status in statuses) and (not methods or r.method in methods)
         and (sweep == "(all)" or r.sweep_id == sweep)
         and (not text or text.lower() in r.name.lower() or text.lower() in r.id)]
counts = {s: sum(r.status == s for r in all_runs) for s in (RunStatus.RUNNING, RunStatus.QUEUED, RunStatus.SUCCEEDED,
                                                         RunStatus.FAILED, RunStatus.STOPPED)}
st.caption(f"{len(shown)} of {len(all_runs)} runs · " + " · ".join(f"{STATUS_ICON[s]} {n} {s.lower()}"
                                                             for s, n in counts.items() if n))
frame = pd.DataFrame([row(r) for r in shown])
st.dataframe(frame, hide_index=True, width="stretch", height=min(420, 38 + 35 * max(1, len(shown))),
             column_config=number_columns(frame))
if not shown:
    st.stop()

st.divider()
ids = [r.id for r in shown]
by_id = {r.id: r for r in shown}
if S.get("runs_open") not in ids:
    S["runs_open"] = ids[0]
run_id = st.selectbox("Open run", ids, key="runs_open",
                      format_func=lambda i: f"{STATUS_ICON.get(by_id[i].status, '')} {by_id[i].name} · {i}")
rec = by_id[run_id]


def delete_run(rid: str) -> None:
    try:
        runs().delete(rid)
        S["runs_message"] = ("ok", f"Deleted {rid}.")
        S.pop("runs_open", None)
    except Exception as exc:  # noqa: BLE001 - e.g. still RUNNING
        S["runs_message"] = ("error", f"Delete {rid}: {error_text(exc)}")


def resume_run(rid: str) -> None:
    try:
        new_id = runs().resume(rid)
        S.setdefault("train_launched", []).append(new_id)
        S["runs_message"] = ("ok", f"Resumed as the new linked run {new_id} (see Train).")
    except Exception as exc:  # noqa: BLE001
        S["runs_message"] = ("error", f"Resume {rid}: {error_text(exc)}")


def stop_run(rid: str) -> None:
    try:
        runs().stop(rid, wait=False)
        S["runs_message"] = ("ok", f"Stopping {rid}: it saves the adapter and a checkpoint first.")
    except Exception as exc:  # noqa: BLE001
        S["runs_message"] = ("error", f"Stop {rid}: {error_text(exc)}")


def use_config(rid: str) -> None:
    try:
        cfg = runs().config(rid)
        for key, value in state_from_config(cfg).items():
            S[key] = value
        S["cfg_current"] = cfg.to_dict()
        S["runs_message"] = ("ok", "Config loaded into the Config builder.")
    except Exception as exc:  # noqa: BLE001
        S["runs_message"] = ("error", error_text(exc))


message = S.pop("runs_message", None)
if message:
    (st.success if message[0] == "ok" else st.error)(message[1])

st.subheader(f"{STATUS_ICON.get(rec.status, '')} {rec.name}")
c = st.columns(5)
c[0].metric("Status", rec.status)
c[1].metric("Method", rec.method + (f" r={rec.lora_r}" if rec.lora_r else ""))
name, value = primary_metric(rec.results)
c[2].metric(name.capitalize(), f"{value:.4f}" if value is not None else "—")
c[3].metric("Duration", fmt_duration(rec.duration))
c[4].metric("Peak memory", fmt_bytes((rec.results or {}).get("peak_mem_bytes")))
st.caption(f"id `{rec.id}` · created {fmt_time(rec.created)} · started {fmt_time(rec.started)} · "
           f"ended {fmt_time(rec.ended)}" + (f" · sweep `{rec.sweep_id}`" if rec.sweep_id else "")
           + (f" · resumed from `{rec.parent_id}`" if rec.parent_id else ""))

a = st.columns(4)
a[0].button("Open config in builder", key="runs_use", on_click=use_config, args=(rec.id,))
if rec.status in (RunStatus.STOPPED, RunStatus.FAILED):
    a[1].button("Resume", icon=":material/play_arrow:", key="runs_resume", on_click=resume_run, args=(rec.id,))
elif rec.status in (RunStatus.RUNNING, RunStatus.QUEUED):
    a[1].button("Stop" if rec.status == RunStatus.RUNNING else "Cancel", icon=":material/stop_circle:", key="runs_stop",
                on_click=stop_run, args=(rec.id,), disabled=bool(rec.stop_requested))
running = rec.status == RunStatus.RUNNING
with a[3].popover("Delete", icon=":material/delete:", disabled=running,
                  help="Stop a running run first" if running else "Remove the run and its files"):
    st.markdown(f"Delete **{rec.name}** and all its files? This cannot be undone.")
    st.button("Delete for good", key="runs_delete", type="primary", on_click=delete_run, args=(rec.id,))

if rec.status == RunStatus.FAILED:
    st.error(f"**Failed:** {rec.error}")
    if rec.error_log:
        st.code(rec.error_log, language="text")
elif rec.status == RunStatus.STOPPED and rec.error:
    st.warning(rec.error)

tab_curves, tab_results, tab_config, tab_files, tab_log = st.tabs(
    ["Curves", "Results", "Config", "Artifacts", "Log"])
with tab_curves:
    try:
        events = runs().metrics(rec.id)
        frac, text_ = progress_line(rec, events)
        st.progress(frac, text=text_)
        x = st.radio("x-axis", ["step", "epoch", "elapsed_s"], horizontal=True, key="runs_x",
                     format_func={"step": "step", "epoch": "epoch", "elapsed_s": "wall time (s)"}.get)
        curves(rec.name, events, key=f"runs_curves_{rec.id}", x=x)
    except Exception as exc:  # noqa: BLE001
        show_error(exc)
with tab_results:
    results = runs().results(rec.id)
    if not results:
        st.caption("No results yet (they are written when the run ends).")
    else:
        scalars = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
        st.dataframe(pd.DataFrame({"key": list(scalars), "value": [str(v) for v in scalars.values()]}),
                     hide_index=True, width="stretch")
        if results.get("generations"):
            st.markdown("**Generations before / after training**")
            st.dataframe(pd.DataFrame(results["generations"]), hide_index=True, width="stretch")
        with st.expander("Full results.json (environment fingerprint, label map, memory estimate)"):
            st.json(results)
with tab_config:
    try:
        cfg = runs().config(rec.id)
        st.code(cfg.to_yaml(), language="yaml")
        st.download_button(runs().dir(rec.id).config.name, cfg.to_yaml(), file_name=f"{rec.id}.yaml", key="runs_dl_cfg")
    except (ConfigError, OSError) as exc:
        show_error(exc)
with tab_files:
    root = runs().dir(rec.id).artifacts.path
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    if files:
        st.dataframe(pd.DataFrame([{"file": str(p.relative_to(root)), "size": fmt_bytes(p.stat().st_size)}
                                   for p in files[:500]]), hide_index=True, width="stretch")
        st.caption(f"{len(files)} files under `{root}`")
    else:
        st.caption("No artifacts yet.")
with tab_log:
    st.code(runs().log_tail(rec.id, n=200) or "(empty)", language="text")
    st.caption(json.dumps({"pid": rec.pid, "host": rec.host, "heartbeat": fmt_time(rec.heartbeat)}))
