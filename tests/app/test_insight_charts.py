"""The insight figures are pure functions: seed bands from real-shaped event streams, parallel coordinates with
log axes where values span decades, heatmap cells where their layer and module say, error bars."""
import math
import statistics

import pytest

from lora_ui import charts


def events(losses, evals=()):
    out = [{"kind": "log", "step": i + 1, "epoch": (i + 1) / 4, "loss": v} for i, v in enumerate(losses)]
    return out + [{"kind": "eval", "step": s, "epoch": s / 4, "eval_loss": v} for s, v in evals]


def test_mean_band_step_by_step():
    runs = [events([1.0, 0.8, 0.6]), events([1.2, 0.6]), events([0.8, 0.7, 0.5])]
    xs, mean, std = charts.mean_band(runs, "step", "loss", "log")
    assert xs == [1, 2, 3]
    assert mean == pytest.approx([1.0, 0.7, 0.55])
    assert std == pytest.approx([statistics.stdev([1.0, 1.2, 0.8]), statistics.stdev([0.8, 0.6, 0.7]),
                                 statistics.stdev([0.6, 0.5])])
    fig = charts.band_figure([("r=4", runs)], x="epoch")
    band = next(t for t in fig.data if t.fill == "toself")
    assert len(band.x) == 6 and band.y[0] == pytest.approx(mean[0] + std[0])
    assert next(t for t in fig.data if t.name == "r=4 · train loss (n=3)").x == pytest.approx((0.25, 0.5, 0.75))


def test_parallel_coordinates_log_axes_and_categories():
    rows = [{"train.learning_rate": lr, "lora.r": r, "method": m, "accuracy": a}
            for lr, r, m, a in [(1e-4, 4, "lora", 0.7), (1e-3, 8, "qlora", 0.8), (1e-2, 16, "lora", 0.75),
                                (1e-3, 4, "lora", None)]]
    fig = charts.parallel_figure(rows, ["train.learning_rate", "lora.r", "method"], "accuracy")
    lr, rank, method, metric = fig.data[0].dimensions
    assert lr.label == "train.learning_rate (log)" and list(lr.values) == pytest.approx([-4, -3, -2])
    assert list(lr.ticktext) == ["0.0001", "0.001", "0.01"]
    assert rank.label == "lora.r" and list(rank.values) == [4, 8, 16]  # a factor of 4: linear
    assert list(method.ticktext) == ["lora", "qlora"] and list(method.values) == [0, 1, 0]
    assert metric.label == "accuracy" and list(metric.values) == [0.7, 0.8, 0.75]  # the run with none left out
    assert charts.spans_decades([1e-4, 1e-3]) and not charts.spans_decades([2, 8]) and \
        not charts.spans_decades([0, 10])


def test_module_heatmap_places_cells():
    rows = [{"layer": 1, "module": "query", "v": 3}, {"layer": 0, "module": "value", "v": 2},
            {"layer": 0, "module": "query", "v": 1}]
    fig = charts.module_heatmap(rows, "v", "t", fmt="d")
    heat = fig.data[0]
    assert list(heat.x) == ["query", "value"] and list(heat.y) == ["layer 0", "layer 1"]
    assert [list(r) for r in heat.z] == [[1, 2], [3, None]]


def test_spectrum_and_error_bars():
    fig = charts.spectrum_figure([3.0, 1.0], 1, 0.9, "s")
    assert list(fig.data[1].y) == pytest.approx([0.9, 1.0])
    bars = charts.bar_figure(["a", "b"], [0.5, 0.6], "Accuracy", "accuracy", errors=[0.1, None])
    assert list(bars.data[0].error_y.array) == [0.1, 0]
    assert not math.isnan(bars.data[0].y[0])
