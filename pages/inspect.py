"""Inspect: what a finished LoRA / QLoRA run's adapter learned, read from its saved files (no model is loaded):
per module the size of the update ΔW against the base weight, its singular values and effective rank, a rank
advice with the rule behind it, and how two adapters of the same base compare (Hu et al. 2021, §7)."""
import pandas as pd
import streamlit as st

from lora_core.config import LORA_METHODS
from lora_ui import charts, insight, service
from lora_ui.format import code, md, run_label
from lora_ui.service import RunStatus
from lora_ui.state import INSPECT
from lora_ui.widgets import pick_run, show_error

S = INSPECT


def summary_section(report) -> None:
    rows = [m.to_dict() for m in report.modules]
    ranks = sorted(r["effective_rank"] for r in rows)
    scale = report.modules[0].scaling if report.modules else None
    c = st.columns(5)
    c[0].metric("Rank r", report.r)
    c[1].metric("Scale", f"{scale:.3g}" if scale is not None else "—",
                help="alpha/√r (rsLoRA)" if report.use_rslora else "alpha/r")
    c[2].metric("Adapted modules", len(rows))
    c[3].metric("Median effective rank", f"{ranks[len(ranks) // 2]}" if ranks else "—")
    c[4].metric("Largest effective rank", max(ranks, default=0))
    kind = "DoRA" if report.use_dora else ("rsLoRA" if report.use_rslora else "LoRA")
    st.caption(f"{kind} · base {code(report.base_model)} · {md(report.base_note)}"
               + (f" · also saved in full: {md(', '.join(report.also_saved))}" if report.also_saved else ""))


def advice_section(report) -> None:
    advice = insight.rank_advice(report)
    st.info(f"**Rank advice:** {advice.text}", icon=":material/lightbulb:")
    st.caption(f"Rule: {advice.rule}")


def heatmaps_section(report) -> None:
    rows = [m.to_dict() for m in report.modules]
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.module_heatmap(rows, "effective_rank", f"Effective rank (of r={report.r}, "
                                          f"{report.energy:.0%} of ‖ΔW‖²)", fmt="d", zmax=report.r),
                    key=S.key("heat_rank"), width="stretch")
    if any(r["relative_norm"] is not None for r in rows):
        c2.plotly_chart(charts.module_heatmap(rows, "relative_norm", "Relative update size ‖ΔW‖_F / ‖W‖_F",
                                              colorscale="Magma"), key=S.key("heat_rel"), width="stretch")
    else:
        c2.plotly_chart(charts.module_heatmap(rows, "delta_norm", "Update size ‖ΔW‖_F (base weights unavailable)",
                                              colorscale="Magma"), key=S.key("heat_rel"), width="stretch")


def spectrum_section(report) -> None:
    st.subheader("Spectrum of one module")
    names = [m.name for m in report.modules]
    name = st.selectbox("Module", names, key=S.key("module"),
                        format_func=lambda n: f"layer {report.module(n).layer} · {report.module(n).module}")
    m = report.module(name)
    st.plotly_chart(charts.spectrum_figure(m.singular_values, m.effective_rank, report.energy,
                                           f"Singular values of ΔW: {m.name}"), key=S.key("spectrum"),
                    width="stretch")
    st.caption("ΔW = scale·B·A has rank ≤ r, so its singular values come from QR of B and Aᵀ and an r×r SVD. "
               "The effective rank is where the line first reaches the dotted share.")


def table_section(report) -> None:
    frame = pd.DataFrame([{
        "layer": m.layer, "module": m.module, "shape": f"{m.shape[0]}×{m.shape[1]}", "‖ΔW‖_F": m.delta_norm,
        "‖ΔW‖/‖W‖": m.relative_norm, "effective rank": m.effective_rank, "σ₁": m.singular_values[0],
        "σ₁² share": m.singular_values[0] ** 2 / max(m.delta_norm ** 2, 1e-30) if not report.use_dora else None,
        "path": m.name} for m in report.modules])
    with st.expander("Every module"):
        st.dataframe(frame, hide_index=True, width="stretch", column_config={
            "‖ΔW‖_F": st.column_config.NumberColumn(format="%.4g"),
            "‖ΔW‖/‖W‖": st.column_config.NumberColumn(format="%.4g"),
            "σ₁": st.column_config.NumberColumn(format="%.4g"),
            "σ₁² share": st.column_config.NumberColumn(format="%.3f")})


def similarity_section(rec, report, runs: list) -> None:
    st.subheader("Against another adapter of the same base")
    others = [r for r in runs if r.id != rec.id and r.model == rec.model and r.task == rec.task]
    if not others:
        st.caption(f"No other finished LoRA/QLoRA run of {code(rec.model)} to compare with. Train another rank "
                   "(e.g. a sweep over lora.r) to see how much of their subspaces they share.")
        return
    by_id = {r.id: r for r in others}
    c1, c2 = st.columns([2, 1])
    other_id = c1.selectbox("Compare with", list(by_id), key=S.key("against"),
                            format_func=lambda i: run_label(by_id[i]))
    basis = c2.radio("Directions", list(insight.SIMILARITY_BASES), key=S.key("basis"), horizontal=True,
                     format_func=lambda b: "A (the paper's)" if b == "A" else "ΔW", help=" · ".join(
                         f"{k}: {v}" for k, v in insight.SIMILARITY_BASES.items()))
    try:
        sims = insight.adapter_similarity(rec.id, other_id, basis)
    except Exception as exc:  # noqa: BLE001 - e.g. different targets: say so, keep the page
        show_error(exc)
        return
    other = by_id[other_id]
    rows = [s.to_dict() for s in sims]
    first = sims[0]
    st.caption(f"φ(i, j) = ‖U₁,ᵢᵀ U₂,ⱼ‖²_F / min(i, j) (Hu et al. 2021, §7): 1 where the top-i input directions of "
               f"this adapter lie inside the top-j of the other, 0 where they are orthogonal. The overlap map shows "
               f"φ(r₁, r₂); random subspaces of these sizes give {first.random_overlap:.2f} on average.")
    c1, c2 = st.columns(2)
    c1.plotly_chart(charts.module_heatmap(rows, "overlap", f"Subspace overlap φ({report.r}, {other.lora_r})",
                                          fmt=".2f", zmax=1.0), key=S.key("heat_sim"), width="stretch")
    names = [s.name for s in sims]
    name = c2.selectbox("Module", names, key=S.key("sim_module"),
                        format_func=lambda n: f"layer {sims[names.index(n)].layer} · {sims[names.index(n)].module}")
    one = sims[names.index(name)]
    c2.plotly_chart(charts.similarity_figure(one.phi.tolist(), f"r={report.r}", f"r={other.lora_r}",
                                             f"φ(i, j) for {one.module}, layer {one.layer}"),
                    key=S.key("phi"), width="stretch")


def main() -> None:
    st.title("Inspect")
    st.caption("What did the adapter learn? Read from its saved files alone: how big each update is next to "
               "the weight it changes, and how many of its r directions it really used.")
    try:
        runs = [r for r in service.list_runs([RunStatus.SUCCEEDED, RunStatus.STOPPED])
                if r.method in LORA_METHODS and (r.results or {}).get("artifact_dir")]
    except Exception as exc:  # noqa: BLE001 - an unreadable runs dir is reported, not raised
        show_error(exc)
        return
    rec = pick_run(runs, S.key("run"), "No finished LoRA or QLoRA run with a saved adapter yet. Train one on the "
                                       "Train page (a sweep over ranks shows most here).", label="Adapter of run")
    if rec is None:
        return
    try:
        report = insight.inspect_run(rec.id)
    except Exception as exc:  # noqa: BLE001 - a broken or missing adapter file: one line, the page stays
        show_error(exc)
        return
    summary_section(report)
    advice_section(report)
    heatmaps_section(report)
    spectrum_section(report)
    table_section(report)
    similarity_section(rec, report, runs)


main()
