"""Runs: every run in the registry with filters; open one for its config, curves, results, artifacts and log."""
import json

import pandas as pd
import streamlit as st

from lora_core.config import ConfigError
from lora_ui import placement, service
from lora_ui.config_form import apply_config
from lora_ui.format import (STATUS_ICON, X_AXES, code, fmt_bytes, fmt_duration, fmt_time, md, method_text,
                            primary_metric, status_text, styled)
from lora_ui.live import REFRESH_S, curves, progress_line
from lora_ui.service import RunStatus
from lora_ui.state import RUNS
from lora_ui.widgets import action_button, show_error, show_message

S = RUNS
METHODS = ["full", "lora", "qlora", "head-only"]


def row(rec) -> dict:
    res = rec.results or {}
    name, value = primary_metric(res)
    return {
        "status": status_text(rec.status),
        "name": rec.name,
        "owner": rec.owner or "",
        "method": rec.method,
        "rank": rec.lora_r,
        "where": placement.placement_text(rec),
        "accuracy": value if name == "accuracy" else None,
        "eval loss": res.get("eval_loss"),
        "trainable": res.get("trainable_params"),
        "train time (s)": res.get("train_time_s"),
        "peak mem (GB)": res["peak_mem_bytes"] / 1e9 if res.get("peak_mem_bytes") else None,
        "created": fmt_time(rec.created),
        "note": run_note(rec),
        "sweep": rec.sweep_id or "",
        "id": rec.id,
    }


def run_note(rec) -> str:
    """What else happened to a run, in a word or two: stopped early, restarted after a crash, resumed."""
    if (rec.results or {}).get("early_stopped"):
        return "stopped early"
    if rec.restarts:
        return f"restart {rec.restarts}"
    return "resumed" if rec.parent_id else ""


def open_in_builder(run_id: str) -> str:
    apply_config(service.run_config(run_id))
    return "Config loaded into the Config builder."


def filtered(runs: list) -> list:
    """The filter row, and the runs it lets through."""
    c1, c2, c3, c4, c5 = st.columns([1, 1, 1, 1, 2])
    statuses = c1.multiselect("Status", list(RunStatus), key=S.key("status"), format_func=lambda s: s.value)
    methods = c2.multiselect("Method", METHODS, key=S.key("method"))
    owners = c3.multiselect("Owner", sorted({r.owner for r in runs if r.owner}), key=S.key("owner"),
                            help="Who launched the run")
    sweeps = sorted({r.sweep_id for r in runs if r.sweep_id}, reverse=True)
    sweep = c4.selectbox("Sweep", ["(all)"] + sweeps, key=S.key("sweep"))
    text = c5.text_input("Search name or id", key=S.key("search"), placeholder="e.g. r8 or minilm").lower()
    shown = [r for r in runs
             if (not statuses or r.status in statuses) and (not methods or r.method in methods)
             and (not owners or r.owner in owners) and (sweep == "(all)" or r.sweep_id == sweep)
             and (not text or text in r.name.lower() or text in r.id)]
    counts = {s: sum(r.status == s for r in runs) for s in RunStatus}
    st.caption(f"{len(shown)} of {len(runs)} runs · " + " · ".join(f"{STATUS_ICON[s]} {n} {s.value.lower()}"
                                                                 for s, n in counts.items() if n))
    return shown


def runs_table(shown: list) -> None:
    frame = pd.DataFrame([row(r) for r in shown])
    st.dataframe(styled(frame), hide_index=True, width="stretch", height=min(420, 38 + 35 * max(1, len(shown))))


def run_header(rec) -> None:
    st.subheader(f"{status_text(rec.status)} · {md(rec.name)}")
    c = st.columns(5)
    c[0].metric("Status", rec.status.value.capitalize())
    c[1].metric("Method", method_text(rec))
    name, value = primary_metric(rec.results)
    c[2].metric(name.capitalize(), f"{value:.4f}" if value is not None else "—")
    c[3].metric("Duration", fmt_duration(rec.duration))
    c[4].metric("Peak memory", fmt_bytes((rec.results or {}).get("peak_mem_bytes")))
    st.caption(f"id `{rec.id}` · by {md(rec.owner or 'unknown')} · created {fmt_time(rec.created)} · "
               f"started {fmt_time(rec.started)} · "
               f"ended {fmt_time(rec.ended)}" + (f" · sweep `{rec.sweep_id}`" if rec.sweep_id else "")
               + (f" · automatic restart {rec.restarts} of `{rec.parent_id}` after its worker crashed" if rec.restarts
                  else f" · resumed from `{rec.parent_id}`" if rec.parent_id else ""))
    where = f"Trained on: {placement.placement_text(rec)}"
    if rec.job_id:
        where += f" · Ray job `{rec.job_id}` on {rec.cluster}"
    if rec.nodes:
        where += " · nodes " + ", ".join(f"`{n[:12]}`" for n in dict.fromkeys(rec.nodes))
    st.caption(where)


def run_actions(rec) -> None:
    """The actions this user may take on this run (their own, or any as an admin); the service checks again."""
    a = st.columns(4)
    action_button(S, "Open config in builder", open_in_builder, rec.id, key=S.key("use"), where=a[0])
    if rec.status in (RunStatus.STOPPED, RunStatus.FAILED) and service.can("resume", rec):
        action_button(S, "Resume", service.resume, rec.id, key=S.key("resume"), where=a[1],
                      icon=":material/play_arrow:", why_disabled=service.resume_blocker(rec.id),
                      help="Continue from the last checkpoint as a new run linked to this one.")
    elif rec.status == RunStatus.RUNNING and service.can("stop", rec):
        action_button(S, "Stop", service.stop, rec.id, key=S.key("stop"), where=a[1],
                      icon=":material/stop_circle:", disabled=bool(rec.stop_requested))
    elif rec.status == RunStatus.QUEUED and service.can("cancel", rec):
        action_button(S, "Cancel", service.cancel, rec.id, key=S.key("stop"), where=a[1],
                      icon=":material/stop_circle:")
    link = service.mlflow_ui_link(service.results(rec.id)) if (rec.results or {}).get("mlflow_run_id") else None
    if link:
        a[2].link_button("Open in MLflow", link, icon=":material/open_in_new:")
    running = rec.status == RunStatus.RUNNING
    if service.can("delete", rec):
        with a[3].popover("Delete", icon=":material/delete:", disabled=running,
                          help="Stop a running run first" if running else "Remove the run and its files"):
            st.markdown(f"Delete **{md(rec.name)}** and all its files? This cannot be undone.")
            action_button(S, "Delete for good", service.delete, rec.id, key=S.key("delete"), verb="Delete",
                          type="primary")
    if rec.status == RunStatus.FAILED:
        st.error(f"**Failed:** {md(rec.error)}")
        if rec.error_log:
            st.code(rec.error_log, language="text")
    elif rec.status == RunStatus.STOPPED and rec.error:
        st.warning(md(rec.error))
    elif (rec.results or {}).get("early_stopped"):
        st.info((service.results(rec.id) or {}).get("end_reason") or "stopped early", icon=":material/flag:")


def curves_tab(rec) -> None:
    events = service.metrics(rec.id)
    frac, text = progress_line(rec, events)
    st.progress(frac, text=text)
    x = st.radio("x-axis", list(X_AXES), horizontal=True, key=S.key("x"), format_func=X_AXES.get)
    curves(rec.name, events, key=S.key(f"curves_{rec.id}"), x=x)


def results_tab(rec) -> None:
    results = service.results(rec.id)
    if not results:
        st.caption("No results yet (they are written when the run ends).")
        return
    scalars = {k: v for k, v in results.items() if not isinstance(v, (dict, list))}
    st.dataframe(pd.DataFrame({"key": list(scalars), "value": [str(v) for v in scalars.values()]}),
                 hide_index=True, width="stretch")
    if results.get("generations"):
        st.markdown("**Generations before / after training**")
        st.dataframe(pd.DataFrame(results["generations"]), hide_index=True, width="stretch")
    if results.get("mlflow_run_id") and not service.mlflow_ui_link(results):
        st.caption(f"Logged to MLflow as run `{results['mlflow_run_id']}` in a local store; to browse it: "
                   f"`mlflow ui --backend-store-uri {results.get('mlflow_tracking_uri')}`")
    with st.expander("All results (environment fingerprint, label map, memory estimate)"):
        st.json(results)


def config_tab(rec) -> None:
    try:
        cfg = service.run_config(rec.id)
    except (ConfigError, OSError) as exc:
        show_error(exc)
        return
    st.code(cfg.to_yaml(), language="yaml")
    st.download_button("Config (YAML)", cfg.to_yaml(), file_name=f"{rec.id}.yaml", key=S.key("dl_cfg"))


def files_tab(rec) -> None:
    root, files = service.artifact_files(rec.id)
    if not files:
        st.caption("No artifacts yet.")
        return
    st.dataframe(pd.DataFrame([{"file": name, "size": fmt_bytes(size)} for name, size in files[:500]]),
                 hide_index=True, width="stretch")
    st.caption(f"{len(files)} files under {code(root)}")


def log_tab(rec) -> None:
    st.code(service.log_tail(rec.id, n=200) or "(empty)", language="text")
    st.caption(json.dumps({"pid": rec.pid, "host": rec.host, "heartbeat": fmt_time(rec.heartbeat),
                           "backend": rec.backend or "local", "job_id": rec.job_id, "cluster": rec.cluster}))
    if rec.job_id and not rec.terminal:
        st.caption("A cluster run's log comes from Ray's job log (get_job_logs); it is copied into the run's "
                   "folder when the run ends.")


def detail_panel(run_id: str, was_live: bool) -> None:
    """The open run, re-read from the registry: a fragment that reruns every REFRESH_S while the run is queued
    or running (so its loss, status and elapsed time keep up), and stops once it has ended."""
    rec = service.find_run(run_id)
    if rec is None:
        # deleted (its Delete button reruns only this fragment): redraw the whole page once, so the table drops
        # it and the page's message ("Deleted …") shows; the guard stops a loop if the table still lists it
        if S.get("gone") != run_id:
            S["gone"] = run_id
            st.rerun()
        st.info(f"Run {run_id} no longer exists.")
        return
    if was_live and rec.status.is_terminal():
        st.rerun()  # it ended: redraw the page (table, actions) and stop the clock
    run_detail(rec)


def run_detail(rec) -> None:
    run_header(rec)
    run_actions(rec)
    tabs = st.tabs(["Curves", "Results", "Config", "Artifacts", "Log"])
    for tab, draw in zip(tabs, (curves_tab, results_tab, config_tab, files_tab, log_tab)):
        with tab:
            try:
                draw(rec)
            except Exception as exc:  # noqa: BLE001 - one unreadable file must not hide the other tabs
                show_error(exc)


def main() -> None:
    st.title("Runs")
    show_message(S)
    try:
        runs = service.list_runs()  # reconciles first: a dead worker never shows as RUNNING
    except Exception as exc:  # noqa: BLE001 - an unreadable runs dir is reported, not raised
        show_error(exc)
        return
    for notice in service.registry_notices():  # e.g. a damaged registry rebuilt from the run directories
        st.warning(notice, icon=":material/build:")
    if not runs:
        st.info("No runs yet. Launch one from the Train page.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/rocket_launch:")
        return
    shown = filtered(runs)
    runs_table(shown)
    if not shown:
        return
    st.divider()
    by_id = {r.id: r for r in shown}
    if S.get("open") not in by_id:
        S["open"] = shown[0].id
    run_id = st.selectbox("Open run", list(by_id), key=S.key("open"),
                          format_func=lambda i: f"{status_text(by_id[i].status)} {by_id[i].name} · {i}")
    live = not by_id[run_id].status.is_terminal()
    st.fragment(detail_panel, run_every=REFRESH_S if live else None)(run_id, live)


main()
