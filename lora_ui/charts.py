"""Plotly figures for the pages. Pure functions: data in, figure out (tests call them directly). Plotly reads a
little HTML in names and labels (<a href>, <b>, <br>), so user text (run names) goes in escaped (`_text`)."""
from __future__ import annotations

import html
from typing import Iterable

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
               methods: list[str] | None = None, log: bool = False) -> go.Figure:
    colors = [METHOD_COLORS.get(m, "#6C4BF4") for m in methods] if methods else None
    fig = go.Figure(go.Bar(x=labels, y=values, marker_color=colors,
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
            text=[r["label"] for r in pts], textposition="top center", name=method,
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


def lr_find_figure(result: dict) -> go.Figure:
    """The range test's smoothed loss against the learning rate (log axis), the suggested rate marked."""
    fig = go.Figure(go.Scatter(x=result["lrs"], y=result["losses"], mode="lines", name="smoothed loss"))
    fig.add_vline(x=result["suggestion"], line_dash="dash", annotation_text=f"suggested {result['suggestion']:.2g}")
    fig.update_layout(xaxis_type="log", xaxis_title="learning rate", yaxis_title="training loss (smoothed)",
                      height=300, margin=dict(l=10, r=10, t=30, b=10))
    return fig
