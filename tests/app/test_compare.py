"""Compare page: the sweep table relative to full fine-tuning, charts from real metrics, run picking."""
import json

import pytest

from apptest_helpers import errors, no_exception, open_page, texts
from lora_core.runs import Runs

pytestmark = pytest.mark.timeout(300)


def table(at):
    return next(d.value for d in at.dataframe if "vs full: trainable" in d.value.columns)


def test_no_finished_runs(runs_dir):
    at = open_page("compare")
    no_exception(at)
    assert "No finished runs yet" in texts(at)


def test_sweep_table_relative_to_full(use_seeded):
    at = open_page("compare")
    no_exception(at)
    assert not errors(at)
    assert at.radio(key="compare_mode").value == "A sweep"
    frame = table(at).set_index("label")
    assert sorted(frame.index) == ["full", "head-only", "lora r=2", "lora r=4"]
    records = {r.id: r for r in Runs(use_seeded).list(reconcile=False)}
    for label, row in frame.iterrows():
        res = records[row["id"]].results
        assert row["trainable"] == res["trainable_params"]
        assert row["accuracy"] == pytest.approx(res["accuracy"])
        assert row["train time (s)"] == pytest.approx(res["train_time_s"])
    full = frame.loc["full"]
    assert full["vs full: trainable"] == pytest.approx(1.0)
    lora = frame.loc["lora r=2"]
    assert lora["vs full: trainable"] == pytest.approx(lora["trainable"] / full["trainable"])
    assert lora["vs full: trainable"] < 0.5
    assert frame.loc["lora r=4"]["trainable"] > lora["trainable"]
    assert "not all evaluated on the same data" not in texts(at)  # one sweep: one eval set
    assert any(b.label.endswith("CSV") for b in at.download_button)


def test_charts_use_the_real_metrics(use_seeded):
    at = open_page("compare")
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    titles = [f["layout"]["title"]["text"] for f in figs]
    assert titles[:3] == ["Accuracy", "Training time", "Trainable parameters"]
    curves = next(f for f, t in zip(figs, titles) if t.startswith("Train (solid)"))
    frontier = next(f for f, t in zip(figs, titles) if "vs trainable parameters" in t)
    label_ids = table(at).set_index("label")["id"]
    train_traces = {t["name"].split(" · ")[0]: t for t in curves["data"] if t["name"].endswith("train loss")}
    assert set(train_traces) == set(label_ids.index)
    events = Runs(use_seeded).metrics(label_ids["full"])
    assert train_traces["full"]["y"] == pytest.approx([e["loss"] for e in events
                                                       if e.get("kind") == "log" and "loss" in e])
    assert {t["name"] for t in frontier["data"]} >= {"full", "lora", "head-only"}
    # x-axis by epoch
    at.radio(key="compare_x").set_value("epoch").run()
    no_exception(at)
    figs = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    curves = next(f for f in figs if f["layout"]["title"]["text"].startswith("Train (solid)"))
    full_trace = next(t for t in curves["data"] if t["name"] == "full · train loss")
    assert full_trace["x"] == pytest.approx([e["epoch"] for e in events if e.get("kind") == "log" and "loss" in e])


def test_pick_runs(use_seeded):
    at = open_page("compare")
    at.radio(key="compare_mode").set_value("Pick runs").run()
    gen = next(r for r in Runs(use_seeded).list(reconcile=False) if r.name == "seed-gen")
    lora = next(r for r in Runs(use_seeded).list(reconcile=False) if r.method == "lora" and r.task == "seq-cls")
    at.multiselect(key="compare_runs").set_value([gen.id, lora.id]).run()
    no_exception(at)
    frame = table(at)
    assert sorted(frame["id"]) == sorted([gen.id, lora.id])
    assert "not all evaluated on the same data" in texts(at)  # classification vs instructions
    assert "Add a full fine-tuning run" in texts(at)
