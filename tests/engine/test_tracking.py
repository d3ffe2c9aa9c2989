"""Experiment tracking (config `tracking`): a run with MLflow on leaves in the store what metrics.jsonl and
results.json hold; a run with TensorBoard on leaves event files a reader can parse; with both off nothing is
written and neither library is imported."""
import json
import subprocess
import sys

import pytest

from lora_core.errors import TrackingError
from lora_core.runs import RunStatus
from lora_core.runs.layout import MLFLOW_DB, RESULTS_FILE, mlflow_store
from lora_core.train import run_experiment
from tests.helpers import stop_leftovers, tiny_config

pytestmark = pytest.mark.timeout(600)

TRACKED = {"train.max_steps": 4, "train.eval_steps": 2, "data.cache_tokenized": False}


def test_mlflow_store_matches_metrics_and_results(runs, runs_dir, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    try:
        sweep_id, (run_id,) = runs.sweep(tiny_config(**TRACKED, **{"tracking.mlflow": True}), {"lora.r": [2]})
        record = runs.wait(run_id, timeout=500)
    finally:
        stop_leftovers(runs)
    assert record.status == RunStatus.SUCCEEDED, record.error
    results = json.loads(record.dir.results.read_text())
    uri, _ = mlflow_store(runs_dir)
    assert results["mlflow_tracking_uri"] == uri and (runs_dir / MLFLOW_DB).is_file()

    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(results["mlflow_run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["lora_lab.run_id"] == run_id and run.data.tags["lora_lab.sweep_id"] == sweep_id
    assert run.data.params["lora.r"] == "2" and run.data.params["method"] == "lora"

    events = runs.metrics(run_id)
    losses = [(e["step"], e["loss"]) for e in events if e["kind"] == "log" and "loss" in e]
    history = client.get_metric_history(run.info.run_id, "loss")
    assert len(history) == len(losses) == 4
    assert [m.step for m in history] == [step for step, _ in losses]
    assert [m.value for m in history] == pytest.approx([loss for _, loss in losses])
    evals = [e for e in events if e["kind"] == "eval"]
    assert [m.step for m in client.get_metric_history(run.info.run_id, "eval_accuracy")] == [e["step"] for e in evals]
    for key in ("accuracy", "macro_f1", "eval_loss", "train_time_s"):  # the final figures, as results.json has them
        assert run.data.metrics[key] == pytest.approx(results[key])
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"adapter", RESULTS_FILE} <= artifacts
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert "adapter/adapter_model.safetensors" in adapter


def test_tensorboard_event_files(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = []
    results = run_experiment(tiny_config(**TRACKED, **{"tracking.tensorboard": True}), tmp_path,
                             on_event=events.append)
    folder = tmp_path / "tensorboard"
    assert results["tensorboard_dir"] == str(folder) and any(folder.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(folder))
    acc.Reload()
    losses = [(e["step"], e["loss"]) for e in events if e["kind"] == "log" and "loss" in e]
    scalars = acc.Scalars("loss")
    assert [s.step for s in scalars] == [step for step, _ in losses]
    assert [s.value for s in scalars] == pytest.approx([loss for _, loss in losses], rel=1e-5)
    assert [s.step for s in acc.Scalars("eval_loss")] == [e["step"] for e in events if e["kind"] == "eval"]
    assert "config" in " ".join(acc.Tags()["tensors"])


def test_bad_mlflow_uri_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "nosuchscheme://x")
    with pytest.raises(TrackingError, match="tracking.mlflow"):
        run_experiment(tiny_config(**{"tracking.mlflow": True}), tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_tracking_off_imports_neither():
    code = ("import sys, tempfile; from tests.helpers import tiny_config; from lora_core.train import run_experiment;"
            "run_experiment(tiny_config(**{'train.max_steps': 1}), tempfile.mkdtemp());"
            "print(sorted(m for m in ('mlflow', 'tensorboard') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
