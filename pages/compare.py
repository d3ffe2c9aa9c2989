"""Compare: a sweep or hand-picked runs side by side — table relative to full fine-tuning, bars, overlaid
curves, the accuracy-vs-trainable-params frontier, and a CSV download. Runs that differ only in seed become one
row with mean ± std, error bars and a band on the curves; a sweep also gets parallel coordinates; any runs get
the config fields that differ between them."""
import pandas as pd
import streamlit as st

from lora_ui import charts, insight, service
from lora_ui import compare as cmp
from lora_ui.format import X_AXES, md, status_text, styled
from lora_ui.service import RunStatus
from lora_ui.state import COMPARE
from lora_ui.widgets import show_error

S = COMPARE
DONE = (RunStatus.SUCCEEDED, RunStatus.STOPPED)
PARALLEL_METRICS = ["accuracy", "macro-F1", "eval loss", "train time (s)"]


def choose_runs(all_runs: list, finished: list) -> tuple[list, str | None]:
    """A sweep, or runs picked by hand; returns the chosen finished runs and the sweep id (None when picked)."""
    sweeps = list(dict.fromkeys(r.sweep_id for r in finished if r.sweep_id))
    modes = (["A sweep"] if sweeps else []) + ["Pick runs"]
    if S.get("sweep") in sweeps and "mode" not in S:
        S["mode"] = "A sweep"
    mode = st.radio("Compare", modes, horizontal=True, key=S.key("mode"))
    if mode == "A sweep":
        if S.get("sweep") not in sweeps:
            S["sweep"] = sweeps[0]
        sweep = st.selectbox("Sweep", sweeps, key=S.key("sweep"),
                             format_func=lambda s: f"{s} ({sum(r.sweep_id == s for r in finished)} finished runs)")
        pending = [r for r in all_runs if r.sweep_id == sweep and r.status not in DONE]
        if pending:
            st.caption(" · ".join(f"{status_text(r.status)} {md(r.name)}" for r in pending)
                       + " — not finished, left out")
        return [r for r in finished if r.sweep_id == sweep], sweep
    by_id = {r.id: r for r in finished}
    picked = st.multiselect("Runs", list(by_id), default=[r.id for r in finished[:6]], key=S.key("runs"),
                            format_func=lambda i: f"{by_id[i].name} · {i}")
    return [by_id[i] for i in picked], None


def table_section(table: list[dict], grouped: bool, chosen: list) -> None:
    frame = pd.DataFrame(table) if grouped else cmp.frame(table)
    if not grouped and not cmp.same_eval_set(table):
        st.warning("These runs were not all evaluated on the same data (their dataset fingerprints differ), so "
                   "their metrics are not directly comparable.")
    st.dataframe(styled(frame), hide_index=True, width="stretch")
    if grouped:
        st.caption("One row per setting: runs that differ only in train.seed are grouped; each metric is their "
                   "mean, and the ± column its sample standard deviation (n − 1). The `compare` command prints "
                   "the same table.")
    busy = cmp.busy_labels(chosen)
    if busy:
        st.warning(f"Training times of {md(', '.join(busy))} were measured while other work shared the CPU "
                   "(see **CPU busy**): they are slower than on a quiet machine, so compare times with care.",
                   icon=":material/speed:")
    st.caption("**peak mem** is measured: the worker's peak resident memory (on CPU it includes the Python "
               "process, libraries and allocator overhead). **est. peak** is the estimate recorded at launch "
               "from the run's real batch shapes, class count and optimizer: weights, gradients, optimizer "
               "state and activations only.")
    if not grouped and not any(r["method"] == "full" for r in table):
        st.caption("Add a full fine-tuning run (the sweep's *full* baseline) to see the ratios relative to it.")
    st.download_button("Download CSV", frame.to_csv(index=False), file_name="lora-lab-compare.csv",
                       mime="text/csv", key=S.key("csv"))


def diagnosis_section(chosen: list) -> None:
    """The engine's reading of the comparison: does LoRA come close to full, is the frozen backbone worse, and
    if not, why (too few steps, a learning rate off, a rank too small...)."""
    verdict = service.diagnosis(chosen)
    if verdict.holds is None:
        return
    text = "\n".join(f"- {line}" for line in verdict.findings)
    if verdict.holds:
        st.success("**As expected:** LoRA comes close to full fine-tuning.\n" + text, icon=":material/check:")
    else:
        st.warning("**Why the result differs from the usual lesson:**\n" + text, icon=":material/help:")


def bars_section(table: list[dict], score: str, has_score: bool, grouped: bool) -> None:
    labels = [r["label"] for r in table]
    methods = [r["method"] for r in table]

    def errors(column: str):
        return [r.get(column + cmp.STD) for r in table] if grouped else None

    c1, c2, c3 = st.columns(3)
    with c1:
        if has_score:
            st.plotly_chart(charts.bar_figure(labels, [r[score] for r in table], score.capitalize(), score,
                                              methods, errors=errors(score)), key=S.key("bar_score"),
                            width="stretch")
        else:
            st.caption("No eval metric recorded for these runs yet (stopped before their first evaluation).")
    c2.plotly_chart(charts.bar_figure(labels, [r["train time (s)"] for r in table], "Training time", "seconds",
                                      methods, errors=errors("train time (s)")), key=S.key("bar_time"),
                    width="stretch")
    c3.plotly_chart(charts.bar_figure(labels, [r["trainable"] for r in table], "Trainable parameters",
                                      "params (log)", methods, log=True), key=S.key("bar_params"), width="stretch")
    if grouped:
        st.caption("Error bars: ± one standard deviation across seeds.")


def curves_section(chosen: list, table: list[dict], groups: list | None) -> None:
    st.subheader("Loss curves")
    x = st.radio("x-axis", list(X_AXES), horizontal=True, key=S.key("x"), format_func=X_AXES.get)
    try:
        if groups:
            series = [(g.label, [service.metrics(rec.id) for rec in g.records]) for g in groups]
            fig = charts.band_figure(series, x=x)
        else:
            series = [(row["label"], service.metrics(rec.id)) for rec, row in zip(chosen, table)]
            fig = charts.curves_figure(series, x=x, title="Train (solid) and eval (dashed) loss")
    except Exception as exc:  # noqa: BLE001 - a run deleted meanwhile: say so, keep the rest of the page
        show_error(exc)
        return
    st.plotly_chart(fig, key=S.key("curves"), width="stretch")


def frontier_section(table: list[dict], score: str, has_score: bool) -> None:
    st.subheader("Efficiency frontier")
    if not has_score:
        st.caption("The frontier needs runs with an eval metric.")
        return
    st.caption("Each point is a run (or a setting's mean over seeds); the dotted line links those that no other "
               "beats with fewer trainable parameters. Hover for time and peak memory.")
    st.plotly_chart(charts.frontier_figure(table, score=score, higher_is_better=score == "accuracy"),
                    key=S.key("frontier"), width="stretch")


def parallel_section(chosen: list) -> None:
    st.subheader("Parallel coordinates")
    fields = list(insight.config_diff([r.id for r in chosen], ignore_seed=True))
    if not fields or len(chosen) < 2:
        st.caption("The sweep varies no config field besides the seed: nothing to lay out on axes.")
        return
    rows = cmp.parallel_rows(chosen, fields)
    metrics = [m for m in PARALLEL_METRICS if any(r.get(m) is not None for r in rows)]
    metric = st.selectbox("Colour and last axis", metrics, key=S.key("parallel_metric"))
    st.plotly_chart(charts.parallel_figure(rows, fields, metric), key=S.key("parallel"), width="stretch")
    st.caption("One line per run through an axis per varied field; axes whose values span a factor of ten or more "
               "are logarithmic. Drag along an axis to filter.")


def diff_section(chosen: list) -> None:
    diff = insight.config_diff([r.id for r in chosen])
    with st.expander(f"Config differences ({len(diff)} field{'s' if len(diff) != 1 else ''})",
                     expanded=0 < len(diff) <= 8):
        if not diff:
            st.caption("These runs have the same config (apart from their names).")
            return
        frame = pd.DataFrame([{"field": f, **{title: _cell(v[r.id]) for r, title in zip(chosen, _titles(chosen))}}
                              for f, v in diff.items()])
        st.dataframe(frame, hide_index=True, width="stretch")
        st.caption("Only the fields whose values are not the same for every chosen run.")


def _titles(records: list) -> list[str]:
    """Column titles: run names (plain text in a table), with the id where two runs share a name."""
    names = [r.name for r in records]
    return [f"{r.name} · {r.id}" if names.count(r.name) > 1 else r.name for r in records]


def _cell(value) -> str:
    return ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def main() -> None:
    st.title("Compare")
    st.caption("Which adapter is worth it? Accuracy against what it costs: trainable parameters, time and "
               "memory, relative to full fine-tuning on the same data.")
    try:
        all_runs = service.list_runs()
    except Exception as exc:  # noqa: BLE001 - an unreadable runs dir is reported, not raised
        show_error(exc)
        return
    owners = sorted({r.owner for r in all_runs if r.owner})
    if len(owners) > 1:
        chosen_owners = st.multiselect("Owner", owners, key=S.key("owner"), help="Only runs these users launched")
        all_runs = [r for r in all_runs if not chosen_owners or r.owner in chosen_owners]
    finished = [r for r in all_runs if r.status in DONE and r.results]
    if not finished:
        st.info("No finished runs yet. Launch a sweep on the Train page (ranks plus full and head-only "
                "baselines) and come back when it has finished.")
        return
    chosen, sweep = choose_runs(all_runs, finished)
    if not chosen:
        st.warning("Select at least one finished run.")
        return
    chosen = sorted(chosen, key=lambda r: r.created)  # oldest first: the order a sweep was launched in
    groups = insight.seed_groups(chosen)
    grouped = any(len(g.records) > 1 for g in groups) and st.toggle(
        "Group runs that differ only in seed (mean ± std)", value=True, key=S.key("group"))
    votes = {r.id: insight.votes(r.id) for r in chosen}
    table = cmp.grouped_rows(groups) if grouped else cmp.rows(chosen, votes)
    score = "accuracy" if any(r.get("accuracy") is not None for r in table) else "eval loss"
    has_score = any(r.get(score) is not None for r in table)
    table_section(table, grouped, chosen)
    diagnosis_section(chosen)
    bars_section(table, score, has_score, grouped)
    curves_section(chosen, table, groups if grouped else None)
    frontier_section(table, score, has_score)
    if sweep:
        parallel_section(chosen)
    diff_section(chosen)


main()
