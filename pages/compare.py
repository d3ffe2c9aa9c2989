"""Compare: a sweep or hand-picked runs side by side — table relative to full fine-tuning, bars, overlaid
curves, the accuracy-vs-trainable-params frontier, and a CSV download."""
import streamlit as st

from lora_ui import charts
from lora_ui import compare as cmp
from lora_ui.common import DONE, STATUS_ICON, number_columns, runs, show_error

S = st.session_state

st.title("Compare")
st.caption("Which adapter is worth it? Accuracy against what it costs: trainable parameters, time and memory, "
           "relative to full fine-tuning on the same data.")

try:
    all_runs = runs().list()
except Exception as exc:  # noqa: BLE001
    show_error(exc)
    st.stop()
finished = [r for r in all_runs if r.status in DONE and r.results]
if not finished:
    st.info("No finished runs yet. Launch a sweep on the Train page (ranks plus full and head-only baselines) "
            "and come back when it has finished.")
    st.stop()

sweeps = list(dict.fromkeys(r.sweep_id for r in finished if r.sweep_id))
modes = (["A sweep"] if sweeps else []) + ["Pick runs"]
if S.get("compare_sweep") in sweeps and "compare_mode" not in S:
    S["compare_mode"] = "A sweep"
mode = st.radio("Compare", modes, horizontal=True, key="compare_mode")
by_id = {r.id: r for r in finished}
if mode == "A sweep":
    if S.get("compare_sweep") not in sweeps:
        S["compare_sweep"] = sweeps[0]
    sweep = st.selectbox("Sweep", sweeps, key="compare_sweep",
                         format_func=lambda s: f"{s} ({sum(r.sweep_id == s for r in finished)} finished runs)")
    chosen = [r for r in finished if r.sweep_id == sweep]
    pending = [r for r in all_runs if r.sweep_id == sweep and r.status not in DONE]
    if pending:
        st.caption(" · ".join(f"{STATUS_ICON.get(r.status, '')} {r.name}" for r in pending)
                   + " — not finished, left out")
else:
    default = [r.id for r in finished[:6]]
    picked = st.multiselect("Runs", list(by_id), default=default, key="compare_runs",
                            format_func=lambda i: f"{by_id[i].name} · {i}")
    chosen = [by_id[i] for i in picked]

if not chosen:
    st.warning("Select at least one finished run.")
    st.stop()

# oldest first reads naturally for a sweep (the order it was launched in)
chosen = sorted(chosen, key=lambda r: r.created)
table = cmp.rows(chosen)
frame = cmp.frame(table)
if not cmp.same_eval_set(table):
    st.warning("These runs were not all evaluated on the same data (their dataset fingerprints differ), so "
               "their metrics are not directly comparable.")
has_full = any(r["method"] == "full" for r in table)
st.dataframe(frame, hide_index=True, width="stretch", column_config=number_columns(frame))
if not has_full:
    st.caption("Add a full fine-tuning run (the sweep's *full* baseline) to see the ratios relative to it.")
st.download_button("Download CSV", frame.to_csv(index=False), file_name="lora-lab-compare.csv",
                   mime="text/csv", key="compare_csv")

labels = [r["label"] for r in table]
methods = [r["method"] for r in table]
score = "accuracy" if any(r["accuracy"] is not None for r in table) else "eval loss"
has_score = any(r[score] is not None for r in table)
c1, c2, c3 = st.columns(3)
with c1:
    if has_score:
        st.plotly_chart(charts.bar_figure(labels, [r[score] for r in table], score.capitalize(), score, methods),
                        key="compare_bar_score", width="stretch")
    else:
        st.caption("No eval metric recorded for these runs yet (stopped before their first evaluation).")
with c2:
    st.plotly_chart(charts.bar_figure(labels, [r["train time (s)"] for r in table], "Training time", "seconds",
                                      methods), key="compare_bar_time", width="stretch")
with c3:
    st.plotly_chart(charts.bar_figure(labels, [r["trainable"] for r in table], "Trainable parameters",
                                      "params (log)", methods, log=True), key="compare_bar_params",
                    width="stretch")

st.subheader("Loss curves")
x_name = st.radio("x-axis", list(charts.X_AXES), horizontal=True, key="compare_x")
try:
    series = [(label, runs().metrics(rec.id)) for rec, label in zip(chosen, labels)]
    st.plotly_chart(charts.curves_figure(series, x=charts.X_AXES[x_name], title="Train (solid) and eval (dashed) loss"),
                    key="compare_curves", width="stretch")
except Exception as exc:  # noqa: BLE001
    show_error(exc)

st.subheader("Efficiency frontier")
if has_score:
    st.caption("Each point is a run; the dotted line links the runs that no other run beats with fewer trainable "
               "parameters. Hover for time and peak memory.")
    st.plotly_chart(charts.frontier_figure(table, score=score, higher_is_better=score == "accuracy"),
                    key="compare_frontier", width="stretch")
else:
    st.caption("The frontier needs runs with an eval metric.")
