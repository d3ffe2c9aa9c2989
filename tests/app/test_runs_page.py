"""Runs page: lists the real runs, filters, opens one in full, deletes."""
import pytest
import yaml

from apptest_helpers import errors, no_exception, open_page, open_tab, texts
from helpers import tiny_config, wait_until
from lora_core.runs import Runs, RunStatus, files

pytestmark = pytest.mark.timeout(300)


def runs_table(at):
    return next(d.value for d in at.dataframe if "status" in d.value.columns and "id" in d.value.columns)


def test_empty_runs_dir(runs_dir):
    at = open_page("runs")
    no_exception(at)
    assert "No runs yet" in texts(at)


def test_lists_and_filters(use_seeded):
    at = open_page("runs")
    no_exception(at)
    assert not errors(at)
    table = runs_table(at)
    records = Runs(use_seeded).list(reconcile=False)
    assert sorted(table["id"]) == sorted(r.id for r in records) and len(table) == 5
    full = next(r for r in records if r.method == "full")
    row = table.set_index("id").loc[full.id]
    assert row["accuracy"] == pytest.approx(full.results["accuracy"])
    assert row["trainable"] == full.results["trainable_params"]
    at.multiselect(key="runs_method").set_value(["lora"]).run()
    assert sorted(runs_table(at)["method"]) == ["lora", "lora", "lora"]
    at.text_input(key="runs_search").set_value("gen").run()
    assert list(runs_table(at)["name"]) == ["seed-gen"]
    at.text_input(key="runs_search").set_value("no such run").run()
    no_exception(at)
    assert not any("status" in d.value.columns for d in at.dataframe)


def test_open_run_detail(use_seeded):
    record = next(r for r in Runs(use_seeded).list(reconcile=False) if r.method == "head-only")
    at = open_page("runs")
    at.selectbox(key="runs_open").set_value(record.id).run()
    no_exception(at)
    config_yaml = next(c.value for c in at.code if c.language == "yaml")
    assert yaml.safe_load(config_yaml) == Runs(use_seeded).config(record.id).to_dict()
    results = next(d.value for d in at.dataframe if list(d.value.columns) == ["key", "value"])
    assert "dataset_fingerprint" in set(results["key"])
    files = next(d.value for d in at.dataframe if "file" in d.value.columns)
    assert any(f.startswith("head/") for f in files["file"])
    assert at.get("plotly_chart"), "the run's loss curve"
    assert not any(b.key == "runs_resume" for b in at.button)  # a SUCCEEDED run is not resumable


def test_delete_run(seeded_copy):
    victim = next(r for r in Runs(seeded_copy).list(reconcile=False) if r.method == "full")
    at = open_page("runs")
    at.selectbox(key="runs_open").set_value(victim.id).run()
    next(b for b in at.button if b.key == "runs_delete").click().run()
    no_exception(at)
    assert any(f"Deleted {victim.id}" in s.value for s in at.success)
    assert victim.id not in {r.id for r in Runs(seeded_copy).list(reconcile=False)}
    assert not (seeded_copy / victim.id).exists()
    assert victim.id not in set(runs_table(at)["id"])


def test_open_config_in_builder(use_seeded):
    record = next(r for r in Runs(use_seeded).list(reconcile=False) if r.name == "seed-gen")
    at = open_page("runs")
    at.selectbox(key="runs_open").set_value(record.id).run()
    next(b for b in at.button if b.key == "runs_use").click().run()
    no_exception(at)
    assert at.session_state["cfg_current"] == Runs(use_seeded).config(record.id).to_dict()
    at.switch_page("pages/config_builder.py").run()
    no_exception(at)
    assert at.selectbox(key="cfg_task").value == "causal-lm"
    assert open_tab(at, "Data").selectbox(key="cfg_train_choice").value == "sample:instructions"


def test_stop_a_running_run(runs):
    run_id = runs.launch(tiny_config(name="to-stop", **{"train.max_steps": 2000}))
    wait_until(lambda: runs.get(run_id, reconcile=False).status == RunStatus.RUNNING, what="RUNNING")
    at = open_page("runs")
    assert at.selectbox(key="runs_open").value == run_id
    assert next(b for b in at.button if b.key == "runs_stop").label == "Stop"
    next(b for b in at.button if b.key == "runs_stop").click().run()
    no_exception(at)
    record = wait_until(lambda: (r := runs.get(run_id, reconcile=False)).terminal and r, timeout=120,
                        what="the stop")
    assert record.status == RunStatus.STOPPED


def test_a_run_on_an_mlflow_server_links_to_its_page(seeded_copy):
    """A run logged to an MLflow tracking server (its results name an http URI) gets a button to its page in the
    MLflow UI; a run in the local store gets the command that opens that store instead."""
    runs = Runs(seeded_copy)
    on_server, local = [r for r in runs.list(reconcile=False) if r.method == "lora"][:2]
    for rec, uri in ((on_server, "http://mlflow.example:5000/"), (local, "sqlite:////srv/runs/mlflow.db")):
        results = {**runs.results(rec.id), "mlflow_run_id": f"mlf-{rec.id}", "mlflow_experiment_id": "7",
                   "mlflow_tracking_uri": uri}
        files.write_json(rec.dir.results, results)
        runs.registry.update(rec.id, results=files.key_results(results))
    at = open_page("runs")
    at.selectbox(key="runs_open").set_value(on_server.id).run()
    no_exception(at)
    links = [b.proto for b in at.get("link_button")]
    assert [(b.label, b.url) for b in links] == [
        ("Open in MLflow", f"http://mlflow.example:5000/#/experiments/7/runs/mlf-{on_server.id}")]
    at.selectbox(key="runs_open").set_value(local.id).run()
    assert not at.get("link_button")
    assert "mlflow ui --backend-store-uri sqlite:////srv/runs/mlflow.db" in texts(at)
