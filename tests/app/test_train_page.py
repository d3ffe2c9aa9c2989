"""Train page: launch a real tiny run and a sweep, watch the live panel, stop, resume and cancel."""
import pytest

from apptest_helpers import errors, no_exception, open_page, texts
from helpers import tiny_config, wait_until
from lora_core.runs import Runs, RunStatus
from lora_ui import widgets

pytestmark = pytest.mark.timeout(400)


def button(at, key):
    return next(b for b in at.button if b.key == key)


def has_button(at, key) -> bool:
    return any(b.key == key for b in at.button)


def test_renders_default_config(runs_dir):
    at = open_page("train")
    no_exception(at)
    assert not errors(at)
    page = texts(at)
    assert "minilm" in page and "sample:sentiment-2" in page  # the offline default is what launches
    assert has_button(at, "train_launch")
    assert "Nothing is training right now" in page
    # the sweep tab previews its runs through the launcher's own plan: lora r4/r8/r16 + full + head-only
    plan = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert sorted(plan["method"]) == ["full", "head-only", "lora", "lora", "lora"]


def test_launch_tiny_run_and_see_it_finish(runs_dir):
    cfg = tiny_config(name="ui-launch", **{"train.max_steps": 3})
    at = open_page("train", {"cfg_current": cfg.to_dict()})
    button(at, "train_launch").click().run()
    no_exception(at)
    runs = Runs(runs_dir).list(reconcile=False)
    assert len(runs) == 1 and runs[0].name == "ui-launch"
    assert any(runs[0].id in s.value for s in at.success)
    record = Runs(runs_dir).wait(runs[0].id, timeout=300)
    assert record.status == RunStatus.SUCCEEDED, record.error_log
    at.run()
    no_exception(at)
    page = texts(at)
    assert "Launched from this session" in page and "Finished: accuracy" in page
    # the finished card draws the real loss curve: one point per logged step
    charts = at.get("plotly_chart")
    assert charts, "no chart on the page"
    import json

    fig = json.loads(charts[0].proto.spec)
    losses = [e["loss"] for e in Runs(runs_dir).metrics(record.id) if e.get("kind") == "log" and "loss" in e]
    assert fig["data"][0]["y"] == pytest.approx(losses)


def test_sweep_launches_grouped_runs(runs_dir, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")
    at = open_page("train", {"cfg_current": tiny_config(name="ui-sweep").to_dict()})
    at.multiselect(key="train_sweep_ranks").set_value([2]).run()
    at.multiselect(key="train_sweep_baselines").set_value(["head-only"]).run()
    plan = next(d.value for d in at.dataframe if "run" in d.value.columns)
    assert sorted(plan["method"]) == ["head-only", "lora"]
    button(at, "train_sweep_go").click().run()
    no_exception(at)
    runs = Runs(runs_dir).list(reconcile=False)
    assert sorted(r.method for r in runs) == ["head-only", "lora"]
    assert len({r.sweep_id for r in runs}) == 1 and runs[0].sweep_id
    assert at.session_state["compare_sweep"] == runs[0].sweep_id
    for r in runs:
        assert Runs(runs_dir).wait(r.id, timeout=300).status == RunStatus.SUCCEEDED


def test_stop_resume_and_cancel(runs_dir, monkeypatch):
    monkeypatch.setattr(widgets, "GUARD_S", 0.0)  # two launches on purpose: not a double-click
    long_cfg = tiny_config(name="ui-long", **{"train.max_steps": 2000, "train.save_steps": 1000})
    at = open_page("train", {"cfg_current": long_cfg.to_dict()})
    button(at, "train_launch").click().run()
    button(at, "train_launch").click().run()  # a second launch waits in the queue (1 slot on CPU)
    no_exception(at)
    first, second = sorted(Runs(runs_dir).list(reconcile=False), key=lambda r: r.created)
    wait_until(lambda: Runs(runs_dir).get(first.id, reconcile=False).status == RunStatus.RUNNING,
               what="first run RUNNING")
    assert Runs(runs_dir).get(second.id, reconcile=False).status == RunStatus.QUEUED

    # the live panel shows the loss curve growing while it trains
    def losses():
        return [e for e in Runs(runs_dir).metrics(first.id) if e.get("kind") == "log" and "loss" in e]
    wait_until(lambda: len(losses()) >= 2, what="two logged steps")
    at.run()
    no_exception(at)
    assert "Live runs (1 running, 1 queued)" in texts(at)
    assert any("step" in p.proto.text and "ETA" in p.proto.text for p in at.get("progress"))

    button(at, f"train_cancel_{second.id}").click().run()
    no_exception(at)
    assert Runs(runs_dir).get(second.id, reconcile=False).status == RunStatus.STOPPED

    button(at, f"train_stop_{first.id}").click().run()
    no_exception(at)
    record = wait_until(lambda: (r := Runs(runs_dir).get(first.id, reconcile=False)).terminal and r, timeout=120,
                        what="the stopped run")
    assert record.status == RunStatus.STOPPED
    assert Runs(runs_dir).checkpoints(first.id), "a graceful stop saves a checkpoint"

    at.run()
    button(at, f"train_resume_{first.id}").click().run()
    no_exception(at)
    children = Runs(runs_dir).list(parent_id=first.id, reconcile=False)
    assert len(children) == 1
    assert Runs(runs_dir).stop(children[0].id) == RunStatus.STOPPED


def test_launch_refuses_bad_data_before_anything_runs(runs_dir, tmp_path):
    cfg = tiny_config(name="bad-data", **{"data.train": str(tmp_path / "missing.csv")})
    at = open_page("train", {"cfg_current": cfg.to_dict()})
    button(at, "train_launch").click().run()
    no_exception(at)
    assert any("missing.csv" in e for e in errors(at)), errors(at)
    assert Runs(runs_dir).list(reconcile=False) == []
