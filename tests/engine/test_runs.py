"""Reliability of the run lifecycle with real worker processes training tiny models: kill, stop, queue, restart
of the launching process, resume, sweep, the CLI. Every run here is a real `python -m lora_core.runs.worker`
training tiny-random-gpt2 on the bundled instructions sample."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

from helpers import ROOT, cli, stop_leftovers, wait_until
from helpers import tiny_causal as tiny
from lora_core.errors import RunError, StatusError
from lora_core.runs import Runs, RunStatus, launcher

QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED,
                                               RunStatus.FAILED, RunStatus.STOPPED)
pytestmark = pytest.mark.timeout(300)


def wait_for(predicate, timeout=90.0, what="condition"):
    return wait_until(predicate, timeout=timeout, poll=0.05, what=what)


def is_step(event) -> bool:
    """A training-step log (the end-of-training summary is a log event without a loss)."""
    return event.get("kind") == "log" and "loss" in event


def log_steps(runs, run_id, n):
    """Wait until the run has logged `n` training steps; returns the events."""
    def enough():
        record = runs.get(run_id, reconcile=False)
        assert record.status in (QUEUED, RUNNING), (record.status, record.error, record.error_log)
        events = runs.metrics(run_id)
        return events if sum(map(is_step, events)) >= n else None
    return wait_for(enough, what=f"{n} logged steps of {run_id}")


def assert_group_gone(record):
    assert launcher.group_members(record) == [], f"processes left in the group of {record.id}"
    import psutil
    assert not psutil.pid_exists(record.pid) or psutil.Process(record.pid).status() == psutil.STATUS_ZOMBIE


@pytest.fixture(autouse=True)
def no_leftover_workers(runs):
    yield
    stop_leftovers(runs, timeout=2)  # a worker of a failed test must not keep training into the next one


# -- death and stop ------------------------------------------------------------------------------------------------

def test_sigkilled_worker_is_failed_with_log_tail_and_metrics_kept(runs):
    run_id = runs.launch(tiny("killed"))
    before = log_steps(runs, run_id, 2)
    record = runs.get(run_id, reconcile=False)
    os.kill(record.pid, signal.SIGKILL)  # what the out-of-memory killer does
    killed_at = time.time()
    failed = wait_for(lambda: (r := runs.get(run_id)).terminal and r, timeout=15,
                      what="the dead worker to be noticed")
    assert time.time() - killed_at < 10
    assert failed.status is FAILED and "SIGKILL" in failed.error
    assert f"[worker] run {run_id}" in failed.error_log  # the tail of worker.log
    after = runs.metrics(run_id)
    assert after[:len(before)] == before and sum(map(is_step, after)) >= 2
    assert_group_gone(failed)
    with pytest.raises(StatusError):  # FAILED is final
        runs.registry.set_status(run_id, SUCCEEDED)


def test_stop_that_times_out_kills_the_whole_group(runs):
    run_id = runs.launch(tiny("early-stop"))
    # registered = the SIGTERM handler is installed; the worker is now importing torch for seconds and does
    # not poll the stop flag until its data is loaded, so a 0.5 s timeout must escalate to SIGKILL
    wait_for(lambda: runs.get(run_id, reconcile=False).heartbeat, what="the worker to register")
    t0 = time.time()
    assert runs.stop(run_id, timeout=0.5) is STOPPED
    assert time.time() - t0 < 10
    record = runs.get(run_id, reconcile=False)
    assert record.status is STOPPED and "process group was killed" in record.error
    assert_group_gone(record)
    assert runs.get(run_id).status is STOPPED  # a later look does not turn it into FAILED


def test_stop_during_model_loading(runs):
    run_id = runs.launch(tiny("load-stop"))
    wait_until(lambda: any(e.get("phase") == "loading_model" for e in runs.metrics(run_id)), timeout=90,
               poll=0.01, what="the loading_model phase")
    assert runs.stop(run_id, timeout=30) is STOPPED
    record = runs.get(run_id, reconcile=False)
    events = runs.metrics(run_id)
    assert record.error.startswith("stopped on request")  # graceful: the worker ended it itself
    assert not any(e.get("kind") == "log" for e in events)  # no training step ran
    assert runs.results(run_id)["stopped"] is True
    assert_group_gone(record)


def test_stop_during_training_saves_and_resume_continues_the_steps(runs, runs_dir):
    run_id = runs.launch(tiny("resumable", max_steps=12))
    log_steps(runs, run_id, 2)
    assert cli("stop", run_id, "--runs-dir", str(runs_dir)).stdout.strip() == STOPPED
    parent = runs.get(run_id, reconcile=False)
    assert parent.status is STOPPED and parent.error.startswith("stopped on request")
    assert_group_gone(parent)
    assert (runs_dir / run_id / "artifacts" / "adapter" / "adapter_model.safetensors").is_file()
    (ckpt_step, _), = runs.checkpoints(run_id)[-1:]
    parent_steps = [e["step"] for e in runs.metrics(run_id) if is_step(e)]
    assert 2 <= ckpt_step < 12 and max(parent_steps) == ckpt_step

    child_id = cli("resume", run_id, "--runs-dir", str(runs_dir)).stdout.strip()
    child = runs.wait(child_id, timeout=180)
    assert child.status is SUCCEEDED, (child.error, child.error_log)
    assert child.parent_id == run_id and runs.get(run_id).status is STOPPED  # parent final
    assert runs.config(child_id) == runs.config(run_id)
    events = [e for e in runs.metrics(child_id) if is_step(e)]
    steps = [e["step"] for e in events]
    inherited = [e["step"] for e in events if e.get("inherited_from") == run_id]
    assert inherited == [s for s in parent_steps if s <= ckpt_step]
    assert steps == sorted(steps) and steps[-1] == 12 and len(steps) == len(set(steps))
    assert steps[len(inherited)] == ckpt_step + 1  # the new process continues the count
    elapsed = [e["elapsed_s"] for e in events]
    assert elapsed == sorted(elapsed), "the resumed run's clock went backwards"
    assert runs.results(child_id)["resumed_from_step"] == ckpt_step
    # how busy the machine was while it trained: recorded, and kept in the registry for Compare
    machine = {k: v for k, v in runs.get(child_id).results.items() if k.startswith("machine_")}
    assert machine["machine_cpus"] >= 1 and machine["machine_other_cpu_cores"] >= 0
    assert isinstance(machine["machine_busy"], bool) and machine["machine_other_runs"] == 0
    with pytest.raises(RunError, match="SUCCEEDED"):
        runs.resume(child_id)


# -- queue, restart of the launching process, sweep ----------------------------------------------------------------

def test_sweep_of_8_runs_with_limit_2_drains_after_the_launcher_exits(runs, runs_dir, monkeypatch, tmp_path):
    """The sweep is launched by a CLI process that exits at once (a dashboard restart); nobody reconciles
    afterwards except the workers themselves. The registry is sampled every 100 ms."""
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two workers share two cores
    config = tmp_path / "sweep.yaml"
    tiny("../../etc", max_steps=2).save(config)
    out = cli("sweep", str(config), "--vary", "lora.r=1,2,3,4,5,6,7", "--vary", "method=full", "--json",
              "--runs-dir", str(runs_dir))
    launched = json.loads(out.stdout.strip().splitlines()[-1])
    sweep_id, run_ids = launched["sweep_id"], launched["run_ids"]
    assert len(run_ids) == 8

    max_running, start_order, seen_live = 0, [], False
    deadline = time.time() + 240
    while time.time() < deadline:
        records = runs.list(sweep_id=sweep_id, reconcile=False)  # a plain read: no side effects
        running = [r for r in records if r.status == RUNNING]
        max_running = max(max_running, len(running))
        for r in sorted(records, key=lambda r: r.started or 0):
            if r.started and r.id not in start_order:
                start_order.append(r.id)
        if running and not any(r.status == QUEUED for r in records) and not seen_live:
            # a fresh process (the restarted dashboard) looks: the runs it did not start are still live
            assert Runs(runs_dir).get(running[0].id).status in (RUNNING, SUCCEEDED)
            seen_live = True
        if all(r.terminal for r in records):
            break
        time.sleep(0.1)
    by_id = {r.id: r for r in runs.list(sweep_id=sweep_id, reconcile=False)}
    assert all(r.status is SUCCEEDED for r in by_id.values()), {r.id: (r.status, r.error) for r in by_id.values()}
    assert max_running <= 2 and max_running == 2
    assert start_order == run_ids  # queue order
    # the sweep made the right runs: LoRA r1..r7 and one full fine-tune, same seed, data and eval split
    configs = [runs.config(rid) for rid in run_ids]
    assert [(c.method, c.lora.r if c.uses_lora else None) for c in configs] == \
        [("lora", r) for r in range(1, 8)] + [("full", None)]
    results = [runs.results(rid) for rid in run_ids]
    assert len({(r["seed"], r["dataset_fingerprint"], r["eval_rows"], r["eval_source"]) for r in results}) == 1
    assert [r["trainable_params"] for r in results[:7]] == sorted(r["trainable_params"] for r in results[:7])
    assert by_id[run_ids[0]].results["eval_loss"] == results[0]["eval_loss"]  # key results in the registry
    # the name '../../etc' stayed a label: every run dir sits directly in the runs dir
    for rid in run_ids:
        assert (runs_dir / rid).resolve().parent == runs_dir.resolve() and rid.startswith("etc-")
    assert sorted(p.name for p in runs_dir.iterdir() if p.is_dir()) == sorted(run_ids)


# -- the registry under concurrent writers --------------------------------------------------------------------------

WRITER = textwrap.dedent("""
    import sys, time
    from lora_core.runs import Runs, RunRecord, RunStatus
    runs_dir, tag, start = sys.argv[1], sys.argv[2], float(sys.argv[3])
    registry = Runs(runs_dir).registry
    while time.time() < start:
        time.sleep(0.001)
    for i in range(500):
        rid = f"w{tag}-{i:04d}"
        registry.insert(RunRecord(id=rid, name=rid, status=RunStatus.QUEUED, created=time.time()))
        registry.update(rid, heartbeat=time.time(), progress=i / 500)
        if i % 5 == 0:
            registry.claim_next(limit=10 ** 6)
    print("ok")
""")


def test_two_processes_write_the_registry_at_once_without_errors_or_losses(tmp_path):
    runs_dir = tmp_path / "registry-only"  # rows without workers: kept away from the launcher's runs dir
    runs = Runs(runs_dir)  # create the file first, as the dashboard would
    start = time.time() + 1.0
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(runs_dir), tag, str(start)], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for tag in "ab"]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0 and out.strip() == "ok", err
    records = runs.list(reconcile=False)
    assert len(records) == 1000
    assert all(r.heartbeat is not None and r.progress is not None for r in records)
    assert len({r.id for r in records}) == 1000
    assert sum(r.status == RUNNING for r in records) == 200  # every claim landed once


# -- the CLI -------------------------------------------------------------------------------------------------------

def test_cli_train_wait_status_logs_list_delete(runs, runs_dir, tmp_path):
    config = tmp_path / "run.yaml"
    tiny("cli run", max_steps=2).save(config)
    proc = cli("train", str(config), "--wait", "--json", "--runs-dir", str(runs_dir), timeout=180)
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    run_id = final["run_id"]
    assert final["status"] == SUCCEEDED and final["steps"] == 2 and final["stopped"] is False
    assert "[worker] run" in proc.stderr  # the log was streamed while waiting

    status = json.loads(cli("status", run_id, "--json", "--runs-dir", str(runs_dir)).stdout)
    assert status["status"] == SUCCEEDED and status["progress"] == 1.0 and status["last_metrics"]["step"] == 2
    # a corrupt last metrics line is ignored, not a crash
    with open(runs.dir(run_id).metrics, "ab") as f:
        f.write(b'{"kind": "log", "step": 3, "lo')
    assert json.loads(cli("status", run_id, "--json", "--runs-dir", str(runs_dir)).stdout)["last_metrics"] == \
        status["last_metrics"]
    assert f"ended {SUCCEEDED}" in cli("logs", run_id, "--runs-dir", str(runs_dir)).stdout
    assert f"ended {SUCCEEDED}" in cli("logs", run_id, "--follow", "--runs-dir", str(runs_dir)).stdout
    listed = json.loads(cli("list", "--json", "--runs-dir", str(runs_dir)).stdout)
    assert [r["id"] for r in listed] == [run_id]
    cli("delete", run_id, "--runs-dir", str(runs_dir))
    assert not (runs_dir / run_id).exists() and runs.list(reconcile=False) == []
    bad = cli("status", "no-such-run", "--runs-dir", str(runs_dir), check=False)
    assert bad.returncode == 2 and "no-such-run" in bad.stderr and "Traceback" not in bad.stderr
    assert cli("status", "../x", "--runs-dir", str(runs_dir), check=False).returncode == 2


def test_bad_config_is_refused_before_anything_launches(runs, runs_dir, tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({**tiny().to_dict(), "data": {**tiny().to_dict()["data"],
                                                                  "train": str(tmp_path / "nope.jsonl")}}))
    proc = cli("train", str(config), "--runs-dir", str(runs_dir), check=False)
    assert proc.returncode == 2 and "data.train: file not found" in proc.stderr and "nope.jsonl" in proc.stderr
    assert runs.list(reconcile=False) == []


def test_deleting_a_running_run_is_refused(runs, runs_dir):
    run_id = runs.launch(tiny("busy"))
    wait_for(lambda: runs.get(run_id, reconcile=False).pid, what="a pid")
    with pytest.raises(RunError, match="stop it first"):
        runs.delete(run_id)
    runs.stop(run_id, timeout=1)
    runs.delete(run_id)
    assert not (runs_dir / run_id).exists()
