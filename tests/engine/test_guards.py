"""Runs that guard themselves, on real tiny runs: a loss that turns NaN ends the run FAILED at that step with no
file written after it (one batch is poisoned on purpose, in the worker process, through a sitecustomize module);
an infinite gradient norm likewise; early stopping ends a run SUCCEEDED and says why; a worker killed with
SIGKILL restarts from its last checkpoint as a linked run (train.max_restarts) and finishes SUCCEEDED."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from helpers import tiny_causal, tiny_config, wait_until
from lora_core import models
from lora_core.errors import TrainingDiverged
from lora_core.runs import RunStatus, launcher
from lora_core.train import run_experiment

pytestmark = pytest.mark.timeout(400)

POISON = textwrap.dedent("""
    # Loaded by the worker at start-up (PYTHONPATH): the training forward number N returns a NaN loss.
    import os, time
    from lora_core import models

    _load = models.load_for_training

    def load_for_training(cfg, *args, **kwargs):
        model, tok = _load(cfg, *args, **kwargs)
        calls = [0]

        def poison(module, inputs, output):
            if module.training:
                calls[0] += 1
                if calls[0] == int(os.environ["POISON_STEP"]):
                    with open(os.environ["POISON_MARK"], "w") as f:
                        f.write(repr(time.time()))
                    output.loss = output.loss * float("nan")
            return output

        model.register_forward_hook(poison)
        return model, tok

    models.load_for_training = load_for_training
""")

SLOW_FIRST = textwrap.dedent("""
    # Loaded by every worker (PYTHONPATH): the first worker to start sleeps after each training forward, so the
    # test can kill it mid-run on any machine; a restarted worker (the mark exists) runs at full speed.
    import os, time
    from lora_core import models

    _load = models.load_for_training

    def load_for_training(cfg, *args, **kwargs):
        model, tok = _load(cfg, *args, **kwargs)
        if not os.path.exists(os.environ["SLOW_MARK"]):
            open(os.environ["SLOW_MARK"], "w").close()
            model.register_forward_hook(lambda module, inputs, output: time.sleep(0.3) if module.training else None)
        return model, tok

    models.load_for_training = load_for_training
""")


def test_nan_loss_ends_the_run_at_that_step(runs, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(POISON)
    mark = tmp_path / "poisoned-at"
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("POISON_STEP", "5")
    monkeypatch.setenv("POISON_MARK", str(mark))
    cfg = tiny_config(**{"train.max_steps": 12, "train.save_steps": 2, "train.learning_rate": 0.5})
    record = runs.wait(runs.launch(cfg), timeout=300)
    assert record.status == RunStatus.FAILED, record.error_log
    assert "loss became NaN at step 5; learning rate" in record.error
    poisoned_at = float(mark.read_text())
    artifacts = runs.dir(record.id).artifacts
    assert not artifacts.adapter.exists(), "no adapter is saved from the broken weights"
    late = [p for p in artifacts.path.rglob("*") if p.is_file() and p.stat().st_mtime > poisoned_at]
    assert not late, f"written after the NaN step: {late}"
    assert [step for step, _ in artifacts.complete_checkpoints()] == [2, 4]  # the last good ones kept
    logged = [e["step"] for e in runs.metrics(record.id) if e.get("kind") == "log" and "loss" in e]
    assert logged and max(logged) == 4
    assert runs.resume(record.id)  # the checkpoint before the NaN is a place to go on from


def test_infinite_gradient_norm_ends_the_run(tmp_path, monkeypatch):
    load = models.load_for_training

    def with_bad_gradient(cfg, *args, **kwargs):
        model, tok = load(cfg, *args, **kwargs)
        lora_b = next(p for n, p in model.named_parameters() if "lora_B" in n)
        seen = [0]

        def blow_up(grad):
            seen[0] += 1
            return grad * float("inf") if seen[0] == 3 else grad

        lora_b.register_hook(blow_up)
        return model, tok

    monkeypatch.setattr(models, "load_for_training", with_bad_gradient)
    cfg = tiny_config(**{"train.max_steps": 6})
    with pytest.raises(TrainingDiverged, match=r"gradient norm became (inf|NaN) at step 3; learning rate"):
        run_experiment(cfg, tmp_path)
    assert not (tmp_path / "adapter").exists()


def test_early_stopping_ends_succeeded_and_says_why(runs):
    cfg = tiny_config(**{"train.max_steps": 80, "train.eval_steps": 2, "train.early_stopping_patience": 2,
                         "train.early_stopping_metric": "accuracy", "data.max_eval_samples": 8})
    record = runs.wait(runs.launch(cfg), timeout=300)
    assert record.status == RunStatus.SUCCEEDED, (record.error, record.error_log)
    results = runs.results(record.id)
    assert results["early_stopped"] is True and results["steps"] < 80
    assert results["end_reason"].startswith("early stopping: accuracy did not improve for 2 evaluations; "
                                            f"ended at step {results['steps']} of 80")
    assert "kept the best checkpoint" in results["end_reason"]
    assert record.results["early_stopped"] is True  # in the registry's key results too
    evals = [e for e in runs.metrics(record.id) if e.get("kind") == "eval"]
    best = max(e["eval_accuracy"] for e in evals)
    assert results["accuracy"] == pytest.approx(best)  # the best checkpoint is what was saved


def test_a_killed_worker_restarts_from_its_checkpoint(runs, tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SLOW_FIRST)
    monkeypatch.setenv("PYTHONPATH", str(site))
    monkeypatch.setenv("SLOW_MARK", str(tmp_path / "first-worker-started"))
    cfg = tiny_causal("restart", max_steps=60, **{"train.save_steps": 10, "train.max_restarts": 1})
    run_id = runs.launch(cfg)
    wait_until(lambda: runs.checkpoints(run_id), timeout=240, what="a first checkpoint")
    record = runs.get(run_id, reconcile=False)
    os.killpg(record.pgid, signal.SIGKILL)  # this test's own worker, by its process group
    parent = runs.wait(run_id, timeout=60)
    assert parent.status == RunStatus.FAILED
    (child,) = runs.list(parent_id=run_id)
    assert child.restarts == 1 and child.resume_from
    assert f"restarted automatically as {child.id} (restart 1 of 1)" in runs.get(run_id).error
    child = runs.wait(child.id, timeout=300)
    assert child.status == RunStatus.SUCCEEDED, (child.error, child.error_log)
    results = runs.results(child.id)
    assert results["resumed_from_step"] >= 10 and results["steps"] == 60


def test_restarts_stop_at_the_limit(runs):
    record = runs.create(tiny_config(**{"train.max_restarts": 1}), restarts=1)
    assert runs.registry.claim_next(1).id == record.id  # RUNNING, as if its worker had started
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    runs.registry.update(record.id, pid=gone.pid, pgid=gone.pid, pid_created=time.time(),
                         host=launcher.this_host(), heartbeat=time.time())
    assert runs.get(record.id).status == RunStatus.FAILED
    assert runs.list(parent_id=record.id) == []
    assert "restarted automatically" not in runs.get(record.id).error
