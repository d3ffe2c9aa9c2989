"""Issue 9: the dashboard tells the truth and keeps your work. One test (or more) per reproducible defect:
1 feedback that lasts, 2 Resume only where it can work, 3 drafts that survive a refresh / new tab / page switch,
7 uploads checked like the CLI, 8 one run per click, 9 panels that agree with what is loaded."""
from pathlib import Path

import pytest
import yaml

from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, PAGE_TIMEOUT, errors, no_exception, open_page, open_tab, texts
from helpers import tiny_config
from lora_core.runs import Runs, RunStatus, layout
from lora_ui import widgets

pytestmark = pytest.mark.timeout(400)


def button(at, key):
    return next(b for b in at.button if b.key == key)


def stopped_run(runs_dir: Path, checkpoint: bool) -> str:
    """A STOPPED run that never trained (cancelled while queued); with `checkpoint`, a complete checkpoint is
    put in place first (what a run stopped after its first save has)."""
    runs = Runs(runs_dir)
    record = runs.create(tiny_config(name="stopped"))
    runs.cancel(record.id)
    if checkpoint:
        folder = runs.dir(record.id).artifacts.checkpoint(2)
        folder.mkdir(parents=True)
        (folder / layout.CHECKPOINT_STATE).write_text('{"global_step": 2, "log_history": []}')
        layout.mark_checkpoint_complete(folder)  # what the engine writes once a save has returned
    return record.id


def first_visit(query: dict) -> AppTest:
    """A new browser tab on a link: a fresh session whose first run lands on Train (the default page)."""
    at = AppTest.from_file(APP, default_timeout=PAGE_TIMEOUT)
    at.query_params.update(query)
    return at.run()


# -- 1: feedback lasts until read ---------------------------------------------------------------------------------

def test_action_feedback_survives_reruns_until_dismissed(runs_dir):
    """Resume on a card: the result stays through later reruns (the live fragment's included) until the user
    dismisses it or another action replaces it."""
    run_id = stopped_run(runs_dir, checkpoint=True)
    at = open_page("train", {"train_launched": [run_id]})
    button(at, f"train_resume_{run_id}").click().run()
    no_exception(at)
    child = next(r for r in Runs(runs_dir).list(reconcile=False) if r.parent_id == run_id)
    shown = [s.value for s in at.success if child.id in s.value]
    assert shown, [s.value for s in at.success]
    for _ in range(3):
        at.run()
        assert [s.value for s in at.success if child.id in s.value] == shown
    button(at, "train_dismiss").click().run()
    assert not [s.value for s in at.success if child.id in s.value]


# -- 2: Resume only where it can work -----------------------------------------------------------------------------

def test_resume_is_disabled_with_the_reason_without_a_checkpoint(runs_dir):
    blocked = stopped_run(runs_dir, checkpoint=False)
    ready = stopped_run(runs_dir, checkpoint=True)
    at = open_page("train", {"train_launched": [blocked, ready]})
    no_exception(at)
    assert button(at, f"train_resume_{blocked}").disabled
    assert "first complete checkpoint" in button(at, f"train_resume_{blocked}").help
    assert not button(at, f"train_resume_{ready}").disabled
    at = open_page("runs", {"runs_open": blocked})
    no_exception(at)
    assert button(at, "runs_resume").disabled and "checkpoint" in button(at, "runs_resume").help


# -- 3: drafts survive --------------------------------------------------------------------------------------------

def test_config_lives_in_the_url_and_a_new_tab_reads_it(runs_dir):
    at = open_page("config_builder", {"cfg_tab": "LoRA layers & knobs"})
    at.number_input(key="cfg_lora.r").set_value(16).run()
    open_tab(at, "Model & method").text_input(key="cfg_name").set_value("shared-run").run()
    no_exception(at)
    params = dict(at.query_params)
    assert params.get("lora.r") in ("16", ["16"]) and params.get("name") in ("shared-run", ["shared-run"])
    # a refresh or the same link in a new tab: a fresh session with only the URL
    fresh = first_visit({"lora.r": "16", "name": "shared-run"})
    no_exception(fresh)
    page = texts(fresh)
    assert "shared-run" in page and "r=16" in page


def test_a_bad_link_says_so_and_shows_the_default(runs_dir):
    at = first_visit({"lora.r": "-3"})
    no_exception(at)
    assert any("link" in w.value and "lora.r" in w.value for w in at.warning)
    assert "r=8" in texts(at)


def test_sweep_choices_survive_leaving_the_page(runs_dir):
    at = open_page("train", {"cfg_current": tiny_config(name="keep").to_dict()})
    at.multiselect(key="train_sweep_ranks").set_value([2, 32]).run()
    at.multiselect(key="train_sweep_baselines").set_value(["full"]).run()
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/train.py").run()
    no_exception(at)
    assert at.multiselect(key="train_sweep_ranks").value == [2, 32]
    assert at.multiselect(key="train_sweep_baselines").value == ["full"]


# -- 7: an upload fails where the CLI fails, with every problem --------------------------------------------------

def test_upload_lists_every_problem_and_keeps_the_form(runs_dir):
    bad = {"name": "bad-upload", "lora": {"r": 0, "target_modules": ["query", "nonexistent_layer"]},
           "data": {"train": ""}}
    at = open_page("config_builder")
    at.file_uploader(key="cfg_upload").set_value(("bad.yaml", yaml.safe_dump(bad).encode(), "application/x-yaml"))
    at.run()
    no_exception(at)
    message = next(e for e in errors(at) if "bad.yaml" in e)
    for field in ("lora.r", "nonexistent_layer", "data.train"):
        assert field in message, message
    assert "is a folder" not in message
    assert at.text_input(key="cfg_name").value != "bad-upload"  # nothing already shown was lost


def test_no_tick_beside_a_target_the_model_lacks(runs_dir):
    at = open_page("config_builder", {"cfg_targets_mode": "custom",
                                      "cfg_targets_custom": ["query", "nonexistent_layer"]})
    no_exception(at)
    assert any("nonexistent_layer" in e for e in errors(at)), errors(at)
    assert "✅ Valid config" not in texts(at)
    export = [c.value for c in open_tab(at, "Export").code if c.language == "yaml"]
    assert "nonexistent_layer" in export[0]  # never exported without the bad name


# -- 8: one click, one run ----------------------------------------------------------------------------------------

def test_double_click_on_launch_starts_one_run(runs_dir, monkeypatch):
    monkeypatch.setattr(widgets, "GUARD_S", 120.0)  # both clicks land inside the guard however slow the machine
    at = open_page("train", {"cfg_current": tiny_config(name="once", **{"train.max_steps": 2}).to_dict()})
    button(at, "train_launch").click().run()
    button(at, "train_launch").click().run()
    no_exception(at)
    runs = Runs(runs_dir).list(reconcile=False)
    assert len(runs) == 1, [r.id for r in runs]
    assert "ignored" in texts(at)


# -- 9: panels agree with what is loaded --------------------------------------------------------------------------

def test_qlora_selector_still_names_the_loaded_model_after_leaving(runs_dir):
    at = open_page("qlora")
    at.selectbox(key="qlora_model").set_value("tiny-random-gpt2").run()
    at.toggle(key="qlora_before").set_value(False).run()
    button(at, "qlora_load").click().run()
    no_exception(at)
    assert any("tiny-random-gpt2" in s.value for s in at.success)
    at.switch_page("pages/runs.py").run()
    at.switch_page("pages/qlora.py").run()
    no_exception(at)
    assert at.selectbox(key="qlora_model").value == "tiny-random-gpt2"
    assert not any("panel below is" in i.value for i in at.info)
    at.selectbox(key="qlora_model").set_value("tiny-random-llama").run()
    assert any("panel below is" in i.value for i in at.info)  # a changed selector is never silently ignored


def test_train_page_is_idle_without_live_runs_and_ticks_with_one(runs_dir, monkeypatch):
    """The live panel's clock runs only while a run is queued or running (issue 9 item 6)."""
    at = open_page("train")
    assert at.session_state["train_ticking"] is False
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "1")
    at.session_state["cfg_current"] = tiny_config(name="tick", **{"train.max_steps": 2000}).to_dict()
    button(at, "train_launch").click().run()
    no_exception(at)
    assert at.session_state["train_ticking"] is True
    run_id = Runs(runs_dir).list(reconcile=False)[0].id
    Runs(runs_dir).stop(run_id, timeout=30)
    Runs(runs_dir).wait(run_id, timeout=300)
    at.run()
    assert at.session_state["train_ticking"] is False
