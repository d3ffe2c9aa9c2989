"""Plotly figures for the pages. Pure functions: data in, figure out (tests call them directly). Plotly reads a
little HTML in names and labels (<a href>, <b>, <br>), so user text (run names) goes in escaped (`_text`)."""
from __future__ import annotations

import html
import math
import statistics
from typing import Any, Iterable

import plotly.graph_objects as go

from lora_ui.format import X_AXES

METHOD_COLORS = {"full": "#E4572E", "lora": "#6C4BF4", "qlora": "#17BEBB", "head-only": "#FFC914"}
_LAYOUT = dict(margin=dict(l=10, r=10, t=40, b=10), legend=dict(orientation="h", y=-0.2), height=360)


def _text(value) -> str:
    return html.escape(str(value), quote=False)


def _series(events: Iterable[dict], x: str, y: str, kind: str | None = None) -> tuple[list, list]:
    xs, ys = [], []
    for e in events:
        if kind and e.get("kind") != kind:
            continue
        if e.get(x) is None or e.get(y) is None:
            continue
        xs.append(e[x])
        ys.append(e[y])
    return xs, ys


def curves_figure(runs: list[tuple[str, list[dict]]], x: str = "step", title: str = "Loss",
                  eval_metric: str = "eval_loss") -> go.Figure:
    """Overlaid train-loss (solid) and eval curves (dashed, markers) for one or many runs.

    `runs` is [(label, metrics events)]; `x` is an event key: step, epoch or elapsed_s.
    """
    fig = go.Figure()
    palette = ["#6C4BF4", "#E4572E", "#17BEBB", "#FFC914", "#76B041", "#2E86AB", "#A23B72", "#F18F01"]
    for i, (label, events) in enumerate(runs):
        color, label = palette[i % len(palette)], _text(label)
        xs, ys = _series(events, x, "loss", kind="log")
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers" if len(xs) < 30 else "lines",
                                 name=f"{label} · train loss", line=dict(color=color), marker=dict(size=5)))
        ex, ey = _series(events, x, eval_metric, kind="eval")
        if ey:
            fig.add_trace(go.Scatter(x=ex, y=ey, mode="lines+markers", name=f"{label} · {eval_metric}",
                                     line=dict(color=color, dash="dash"), marker=dict(size=8, symbol="diamond")))
    fig.update_layout(title=title, xaxis_title=X_AXES.get(x, x), yaxis_title="loss", **_LAYOUT)
    return fig


def eval_metrics_figure(events: list[dict], x: str = "step") -> go.Figure | None:
    """Eval accuracy / F1 over time for one run (None when the run has no such metrics yet)."""
    fig = go.Figure()
    for key, name in (("eval_accuracy", "accuracy"), ("eval_f1", "macro-F1"), ("eval_macro_f1", "macro-F1"),
                      ("eval_perplexity", "perplexity")):
        xs, ys = _series(events, x, key, kind="eval")
        if ys:
            fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines+markers", name=name))
    if not fig.data:
        return None
    fig.update_layout(title="Eval metrics", xaxis_title=X_AXES.get(x, x), showlegend=True, **_LAYOUT)
    return fig


def memory_terms_figure(terms: dict[str, float], naive: float | None = None,
                        accelerate: float | None = None, peak: float | None = None) -> go.Figure:
    """One stacked bar of the estimator's terms (GB), beside the naive and accelerate-style single figures."""
    fig = go.Figure()
    ours = "LoRA Lab (sum of terms)"
    for name, value in terms.items():
        if not value:
            continue
        fig.add_trace(go.Bar(x=[ours], y=[value / 1e9], name=name.replace("_", " "),
                             hovertemplate="%{y:.3f} GB<extra>" + name + "</extra>"))
    if naive is not None:
        fig.add_trace(go.Bar(x=["tutorial rule (weights × 6)"], y=[naive / 1e9], name="naive figure",
                             marker_color="#BBBBBB", hovertemplate="%{y:.3f} GB<extra>naive</extra>"))
    if accelerate is not None:
        fig.add_trace(go.Bar(x=["accelerate-style (no activations)"], y=[accelerate / 1e9],
                             name="accelerate-style", marker_color="#888888",
                             hovertemplate="%{y:.3f} GB<extra>accelerate</extra>"))
    fig.update_layout(barmode="stack", title="Memory by term", yaxis_title="GB",
                      **{**_LAYOUT, "height": 420})
    if peak is not None:
        fig.add_hline(y=peak / 1e9, line_dash="dot", annotation_text=f"estimated peak {peak / 1e9:.2f} GB")
    return fig


def bar_figure(labels: list[str], values: list[float | None], title: str, yaxis: str,
               methods: list[str] | None = None, log: bool = False,
               errors: list[float | None] | None = None) -> go.Figure:
    """One bar per run or setting; `errors`: ± one standard deviation across seeds, drawn as error bars."""
    colors = [METHOD_COLORS.get(m, "#6C4BF4") for m in methods] if methods else None
    error_y = dict(type="data", array=[e or 0 for e in errors], visible=True, thickness=1.5) if errors else None
    fig = go.Figure(go.Bar(x=[_text(v) for v in labels], y=values, marker_color=colors, error_y=error_y,
                           text=[_short(v) for v in values], textposition="outside"))
    fig.update_layout(title=title, yaxis_title=yaxis, **{**_LAYOUT, "height": 320})
    if log:
        fig.update_yaxes(type="log")
    return fig


def _short(v) -> str:
    if v is None:
        return ""
    v = float(v)
    if abs(v) >= 1e6:
        return f"{v / 1e6:.2f}M"
    if abs(v) >= 1e3:
        return f"{v / 1e3:.1f}K"
    return f"{v:.3g}"


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with fewer params and a better score: (params, score), lower params first."""
    front, best = [], float("-inf")
    for params, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((params, score))
            best = score
    return front


def frontier_figure(rows: list[dict], score: str = "accuracy", higher_is_better: bool = True) -> go.Figure:
    """Accuracy (or -eval loss) vs trainable params, log x, colored by method, with the efficiency frontier."""
    fig = go.Figure()
    for method in dict.fromkeys(r["method"] for r in rows):
        pts = [r for r in rows if r["method"] == method and r.get(score) is not None and r.get("trainable")]
        if not pts:
            continue
        fig.add_trace(go.Scatter(
            x=[r["trainable"] for r in pts], y=[r[score] for r in pts], mode="markers+text",
            text=[_text(r["label"]) for r in pts], textposition="top center", name=method,
            marker=dict(size=13, color=METHOD_COLORS.get(method, "#6C4BF4"), line=dict(width=1, color="#333")),
            customdata=[[r.get("train time (s)") or 0, r.get("peak mem (GB)") or 0] for r in pts],
            hovertemplate="%{text}<br>trainable %{x:,}<br>" + score + " %{y:.4f}<br>"
                          "time %{customdata[0]:.1f}s · peak %{customdata[1]:.2f} GB<extra></extra>"))
    pts = [(r["trainable"], r[score] if higher_is_better else -r[score]) for r in rows
           if r.get(score) is not None and r.get("trainable")]
    front = pareto_front(pts)
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[p for p, _ in front], y=[s if higher_is_better else -s for _, s in front],
                                 mode="lines", name="efficiency frontier",
                                 line=dict(color="#333", dash="dot", shape="hv")))
    fig.update_xaxes(type="log", title="trainable parameters (log)")
    fig.update_layout(title=f"{score} vs trainable parameters", yaxis_title=score, **{**_LAYOUT, "height": 420})
    return fig


def estimate_vs_measured_figure(rows: list[dict]) -> go.Figure:
    """Grouped bars per finished run: the estimate, the tensor peak it models, and the measured peak (GB)."""
    labels = [_text(r["label"]) for r in rows]
    fig = go.Figure([
        go.Bar(x=labels, y=[r.get("estimate_gb") for r in rows], name="estimate", marker_color="#6C4BF4"),
        go.Bar(x=labels, y=[r.get("tensor_gb") for r in rows], name="tensor peak (what the estimate models)",
               marker_color="#FFC914"),
        go.Bar(x=labels, y=[r.get("measured_gb") for r in rows], name="measured (CPU: RSS growth)",
               marker_color="#17BEBB"),
    ])
    fig.update_layout(barmode="group", title="Estimated vs measured peak memory", yaxis_title="GB",
                      **{**_LAYOUT, "height": 340})
    return fig


# -- seeds: bands and error bars -----------------------------------------------------------------------------------

PALETTE = ["#6C4BF4", "#E4572E", "#17BEBB", "#FFC914", "#76B041", "#2E86AB", "#A23B72", "#F18F01"]


def mean_band(runs: list[list[dict]], x: str, y: str, kind: str) -> tuple[list, list, list]:
    """(x, mean, std) of `y` over the runs, step by step (a step counts once every run that reached it has
    logged it); x is the runs' mean `x` at that step. std is 0 where one run has the step."""
    by_step: dict[Any, list[tuple[float, float]]] = {}
    for events in runs:
        for e in events:
            if e.get("kind") == kind and e.get(y) is not None and e.get(x) is not None and e.get("step") is not None:
                by_step.setdefault(e["step"], []).append((e[x], e[y]))
    xs, means, stds = [], [], []
    for step in sorted(by_step):
        pairs = by_step[step]
        xs.append(statistics.fmean(p[0] for p in pairs))
        means.append(statistics.fmean(p[1] for p in pairs))
        stds.append(statistics.stdev([p[1] for p in pairs]) if len(pairs) > 1 else 0.0)
    return xs, means, stds


def band_figure(groups: list[tuple[str, list[list[dict]]]], x: str = "step",
                title: str = "Train loss: mean ± std across seeds") -> go.Figure:
    """A mean train-loss line per setting with a shaded ± one-std band, and the eval loss mean with error bars."""
    fig = go.Figure()
    for i, (label, runs) in enumerate(groups):
        color, label = PALETTE[i % len(PALETTE)], _text(label)
        xs, mean, std = mean_band(runs, x, "loss", "log")
        if xs:
            fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[m + s for m, s in zip(mean, std)]
                                     + [m - s for m, s in zip(mean, std)][::-1], fill="toself", fillcolor=color,
                                     opacity=0.2, line=dict(width=0), hoverinfo="skip", showlegend=False,
                                     name=f"{label} · ± std"))
            fig.add_trace(go.Scatter(x=xs, y=mean, mode="lines", line=dict(color=color),
                                     name=f"{label} · train loss (n={len(runs)})"))
        ex, emean, estd = mean_band(runs, x, "eval_loss", "eval")
        if ex:
            fig.add_trace(go.Scatter(x=ex, y=emean, mode="lines+markers", name=f"{label} · eval loss",
                                     line=dict(color=color, dash="dash"), marker=dict(symbol="diamond", size=8),
                                     error_y=dict(type="data", array=estd, visible=True)))
    fig.update_layout(title=title, xaxis_title=X_AXES.get(x, x), yaxis_title="loss", **{**_LAYOUT, "height": 400})
    return fig


# -- sweeps: parallel coordinates ----------------------------------------------------------------------------------

def spans_decades(values: list) -> bool:
    """True for positive numbers whose largest is at least ten times the smallest: shown on a log axis."""
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(nums) == len(values) and min(nums) > 0 and max(nums) / min(nums) >= 10


def _dimension(label: str, values: list) -> dict:
    label = _text(label)
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric and spans_decades(values):  # Parcoords has no log axis: plot log10, label the real values
        ticks = sorted(set(values))
        return dict(label=f"{label} (log)", values=[math.log10(v) for v in values],
                    tickvals=[math.log10(v) for v in ticks], ticktext=[f"{v:g}" for v in ticks])
    if numeric:
        return dict(label=label, values=values)
    names = list(dict.fromkeys(str(v) for v in values))  # categories (data paths, model ids), in order of appearance
    return dict(label=label, values=[names.index(str(v)) for v in values], tickvals=list(range(len(names))),
                ticktext=[_text(n) for n in names])


def parallel_figure(rows: list[dict], fields: list[str], metric: str) -> go.Figure:
    """One line per run through an axis per varied field and the metric last, coloured by the metric."""
    rows = [r for r in rows if r.get(metric) is not None]
    dims = [_dimension(f, [r.get(f) for r in rows]) for f in fields]
    scores = [r[metric] for r in rows]
    dims.append(dict(label=_text(metric), values=scores))
    fig = go.Figure(go.Parcoords(line=dict(color=scores, colorscale="Viridis", showscale=True,
                                           colorbar=dict(title=metric)), dimensions=dims))
    fig.update_layout(title=f"{metric} across the sweep's settings", **{**_LAYOUT, "height": 420,
                                                                         "margin": dict(l=60, r=40, t=80, b=30)})
    return fig


# -- the adapter inspector -----------------------------------------------------------------------------------------

def module_heatmap(rows: list[dict], value: str, title: str, fmt: str = ".3g", zmax: float | None = None,
                   colorscale: str = "Viridis") -> go.Figure:
    """Layers (rows) × modules (columns), each cell one adapted module's `value`."""
    modules = list(dict.fromkeys(r["module"] for r in rows))
    layers = sorted({r["layer"] for r in rows}, key=lambda v: (v is None, v))
    grid = {(r["layer"], r["module"]): r.get(value) for r in rows}
    z = [[grid.get((layer, m)) for m in modules] for layer in layers]
    text = [[("" if v is None else format(v, fmt)) for v in row] for row in z]
    names = [_text(m) for m in modules]  # module paths come from the adapter's files
    fig = go.Figure(go.Heatmap(z=z, x=names, y=[f"layer {v}" if v is not None else "—" for v in layers],
                               text=text, texttemplate="%{text}", colorscale=colorscale, zmin=0, zmax=zmax,
                               hovertemplate="%{y} · %{x}: %{z:" + fmt + "}<extra></extra>"))
    fig.update_yaxes(autorange="reversed")
    fig.update_layout(title=_text(title), **{**_LAYOUT, "height": max(260, 40 + 28 * len(layers))})
    return fig


def spectrum_figure(singular_values: list[float], effective_rank: int, energy: float, title: str) -> go.Figure:
    """The singular values of ΔW (bars) and the share of ‖ΔW‖_F² the top k hold (line, right axis)."""
    power = [s * s for s in singular_values]
    total = sum(power) or 1.0
    cumulative = [sum(power[:k + 1]) / total for k in range(len(power))]
    ks = list(range(1, len(singular_values) + 1))
    fig = go.Figure([go.Bar(x=ks, y=singular_values, name="singular value σₖ", marker_color="#6C4BF4"),
                     go.Scatter(x=ks, y=cumulative, name="share of ‖ΔW‖² in the top k", yaxis="y2",
                                mode="lines+markers", line=dict(color="#E4572E"))])
    fig.add_hline(y=energy, yref="y2", line_dash="dot", annotation_text=f"{energy:.0%}")
    if effective_rank:
        fig.add_vline(x=effective_rank, line_dash="dash", annotation_text=f"effective rank {effective_rank}")
    fig.update_layout(title=_text(title), xaxis_title="k", yaxis_title="σₖ",
                      yaxis2=dict(overlaying="y", side="right", range=[0, 1.05], title="cumulative share"),
                      **_LAYOUT)
    return fig


def similarity_figure(phi: list[list[float]], first: str, second: str, title: str) -> go.Figure:
    """φ(i, j) of one module: i top directions of the first adapter against j of the second (Hu et al. Fig. 3)."""
    rows, cols = len(phi), len(phi[0]) if phi else 0
    fig = go.Figure(go.Heatmap(z=phi, x=list(range(1, cols + 1)), y=list(range(1, rows + 1)), zmin=0, zmax=1,
                               colorscale="Viridis", colorbar=dict(title="φ"),
                               hovertemplate="i=%{y}, j=%{x}: φ=%{z:.3f}<extra></extra>"))
    fig.update_yaxes(autorange="reversed", title=f"i (top directions of {_text(first)})")
    fig.update_xaxes(title=f"j (top directions of {_text(second)})")
    fig.update_layout(title=_text(title), **{**_LAYOUT, "height": 380})
    return fig


def lr_find_figure(result: dict) -> go.Figure:
    """The range test's smoothed loss against the learning rate (log axis), the suggested rate marked."""
    fig = go.Figure(go.Scatter(x=result["lrs"], y=result["losses"], mode="lines", name="smoothed loss"))
    fig.add_vline(x=result["suggestion"], line_dash="dash", annotation_text=f"suggested {result['suggestion']:.2g}")
    fig.update_layout(xaxis_type="log", xaxis_title="learning rate", yaxis_title="training loss (smoothed)",
                      height=300, margin=dict(l=10, r=10, t=30, b=10))
    return fig
