"""The Ray backend on a real Ray cluster: a head and a second node on loopback, one CPU each, token
authentication on (RAY_AUTH_MODE=token), started once for this module and ended by pid even when a test fails.
Every run is a real Ray job training tiny-random-gpt2 on a bundled sample; a 2-worker run is Ray Train's
TorchTrainer placed on both nodes."""
import json
import os
import signal
import stat
import subprocess

import pytest

from helpers import (LocalRayCluster, cli, slow_first_steps, steps_logged, stop_leftovers, tiny_config, wait_for_steps,
                     wait_until)
from lora_core import models
from lora_core.errors import RunError
from lora_core.runs import Runs, RunStatus, files

QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED,
                                               RunStatus.FAILED, RunStatus.STOPPED)
pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(420)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A 2-node Ray cluster with token authentication; this process holds the token as the dashboard would.
    Its jobs sleep a little after each of their first steps, so short runs still have a middle to read or stop."""
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": os.environ["RAY_AUTH_TOKEN"]}  # the session's (conftest)
    patch = pytest.MonkeyPatch()
    for key, value in env.items():
        patch.setenv(key, value)
    # a short folder right under the session's temp dir: Ray's socket paths must stay under 107 characters
    ray_cluster = LocalRayCluster(tmp_path_factory.mktemp("r"), nodes=2, cpus=1,
                                  env={**env, **slow_first_steps(0.5, until=8)})
    try:
        yield ray_cluster.start()
    finally:
        ray_cluster.close()  # by pid: SIGTERM, then SIGKILL, and nothing of ours may be left
        patch.undo()


@pytest.fixture(autouse=True)
def no_leftover_jobs(runs):
    yield
    stop_leftovers(runs, timeout=5)  # a test that failed must not leave its job holding the cluster's CPUs


def on_ray(cluster, name: str, **dotted):
    return tiny_config(name=name, **{"resources.backend": "ray", "resources.ray_address": cluster.address,
                                     "train.batch_size": 4, **dotted})


def node_ids(cluster) -> set:
    return {n["raylet"]["nodeId"] for n in cluster.alive_nodes()}


def test_one_worker_run_trains_live_and_saves_a_plain_peft_adapter(cluster, runs):
    from peft import PeftModel

    run_id = runs.launch(on_ray(cluster, "ray-one", **{"train.max_steps": 12}))
    assert runs.get(run_id).status in (QUEUED, RUNNING)
    live = wait_for_steps(runs, run_id, 2)  # read while the job trains
    # the job copies its log into the run folder as it prints: the pages tail that file, not the Jobs API
    copied = runs.dir(run_id).log.read_bytes()
    copied = copied[:copied.rfind(b"\n") + 1].decode(errors="replace")  # whole lines (a copy may end mid-character)
    assert runs.get(run_id).status is RUNNING and steps_logged(live)[:2] == [1, 2]
    assert f"[job] run {run_id} pid" in copied, copied
    followed = "".join(runs.follow_log(run_id))  # `logs RUN --follow`, begun while the job trains
    assert followed.startswith(copied) and f"[job] run {run_id} ended SUCCEEDED" in followed, followed[-2000:]
    record = runs.wait(run_id, timeout=300)
    assert record.status is SUCCEEDED, (record.error, record.error_log)
    results = runs.results(run_id)
    assert results["backend"] == "ray" and results["world_size"] == 1 and results["steps"] == 12
    assert set(results["nodes"]) <= node_ids(cluster) and record.nodes == results["nodes"]
    assert record.job_id and record.cluster == cluster.address
    assert f"[job] run {run_id} ended SUCCEEDED" in runs.log_tail(run_id)  # the job's log, kept in the run folder
    base, _ = models.load_base(runs.config(run_id), num_labels=2)
    loaded = PeftModel.from_pretrained(base, str(runs.dir(run_id).artifacts.adapter))
    assert sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n) > 0


def test_two_workers_train_on_both_nodes_into_one_stream(cluster, runs):
    run_id = runs.launch(on_ray(cluster, "ray-two", **{"resources.num_workers": 2, "train.max_steps": 6,
                                                       "tracking.tensorboard": True}))
    record = runs.wait(run_id, timeout=360)
    assert record.status is SUCCEEDED, (record.error, record.error_log)
    results = runs.results(run_id)
    assert results["world_size"] == 2 and results["global_batch_size"] == 8
    assert set(results["nodes"]) == node_ids(cluster) and len(results["nodes"]) == 2  # one rank per node
    assert sorted(record.nodes) == sorted(results["nodes"])
    assert steps_logged(runs.metrics(run_id)) == [1, 2, 3, 4, 5, 6]  # rank 0 alone writes: each step once
    assert (runs.dir(run_id).artifacts.adapter / "adapter_config.json").is_file()
    # the trackers travel with the recipe into Ray Train's workers; rank 0 alone reports
    assert len(list(runs.dir(run_id).artifacts.tensorboard.glob("events.out.tfevents.*"))) == 1
    assert results["speed"]["group_by_length"] is True


def test_stop_checkpoints_and_resume_on_the_cluster_continues_the_steps(cluster, runs):
    run_id = runs.launch(on_ray(cluster, "ray-stop", **{"train.max_steps": 16}))
    wait_for_steps(runs, run_id, 3)
    assert runs.stop(run_id, timeout=90) is STOPPED
    record = runs.get(run_id)
    assert record.status is STOPPED and record.error.startswith("stopped on request at step"), record.error
    (step, _), = runs.checkpoints(run_id)[-1:]
    assert 3 <= step < 16
    new_id = runs.resume(run_id)
    resumed = runs.wait(new_id, timeout=300)
    assert resumed.status is SUCCEEDED, (resumed.error, resumed.error_log)
    results = runs.results(new_id)
    assert results["resumed_from_step"] == step and results["steps"] == 16 and results["backend"] == "ray"
    own = [e["step"] for e in runs.metrics(new_id) if "loss" in e and not e.get("inherited_from")]
    assert own and own[0] == step + 1  # the step count goes on from the checkpoint


def test_a_killed_training_process_fails_the_run_and_keeps_its_metrics(cluster, runs):
    run_id = runs.launch(on_ray(cluster, "ray-kill", **{"train.max_steps": 400}))
    before = wait_for_steps(runs, run_id, 3)
    pid = files.read_json(runs.dir(run_id).job)["pid"]  # the job's training process (on this machine here)
    os.kill(pid, signal.SIGKILL)
    record = wait_until(lambda: (r := runs.get(run_id)).terminal and r, timeout=120, what="the death to be seen")
    assert record.status is FAILED and "without recording an end" in record.error, record.error
    assert any(code in record.error for code in ("-9", "137", "SIGKILL")), record.error  # Ray's words on the exit
    after = runs.metrics(run_id)
    assert after[:len(before)] == before and len(steps_logged(after)) >= 3


def test_a_sweep_drains_through_the_cluster_one_run_per_cpu(cluster, runs):
    sweep_id, ids = runs.sweep(on_ray(cluster, "ray-sweep", **{"train.max_steps": 16}), {"lora.r": [1, 2, 4]})
    seen = []

    def all_done():
        records = [runs.get(i) for i in ids]
        seen.append(sorted(r.status.value for r in records))
        return all(r.terminal for r in records) and records
    records = wait_until(all_done, timeout=400, poll=0.5, what="the sweep to drain")
    assert all(r.status is SUCCEEDED for r in records), [(r.status, r.error) for r in records]
    assert all(r.sweep_id == sweep_id for r in records)
    # two CPUs for three one-CPU jobs: never three at once, and one waited QUEUED while two trained
    assert max(s.count(RUNNING.value) for s in seen) <= 2
    assert any(s.count(RUNNING.value) == 2 and s.count(QUEUED.value) == 1 for s in seen), seen
    intervals = sorted((r.started, r.ended) for r in records)
    assert intervals[2][0] >= min(end for _, end in intervals[:2]) - 1.0


def test_a_cluster_that_cannot_write_the_runs_dir_is_refused(cluster, tmp_path):
    runs_dir = tmp_path / "unshared"
    runs = Runs(runs_dir)
    with unwritable(runs_dir):
        with pytest.raises(RunError) as err:
            runs.launch(on_ray(cluster, "ray-refused"))
    message = str(err.value)
    assert f"cannot use the runs directory {runs_dir}" in message and "mount the same storage" in message
    assert "PermissionError" in message or "Errno" in message  # what the node saw
    assert Runs(runs_dir).list(reconcile=False) == []


def test_the_cli_trains_on_the_cluster_and_shows_it(cluster, runs_dir, tmp_path):
    path = tiny_config(name="ray-cli", **{"train.max_steps": 3}).save(tmp_path / "c.yaml")
    out = cli("train", str(path), "--backend", "ray", "--ray-address", cluster.address, "--wait", "--json",
              "--runs-dir", str(runs_dir), timeout=300)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["status"] == "SUCCEEDED" and result["backend"] == "ray" and result["world_size"] == 1
    status = json.loads(cli("cluster", "status", "--ray-address", cluster.address, "--json",
                            "--runs-dir", str(runs_dir)).stdout)
    assert {n["node_id"] for n in status["nodes"]} == node_ids(cluster) and status["cpus"] == 2
    assert "2 nodes" in cli("cluster", "status", "--ray-address", cluster.address, "--runs-dir", str(runs_dir)).stdout


class unwritable:
    """A folder nobody can create files in while inside (chmod for a normal user; root ignores modes, so
    chattr +i there); skips the test when neither is possible here."""

    def __init__(self, path):
        self.path, self.immutable = path, False

    def __enter__(self):
        self.mode = self.path.stat().st_mode
        if os.geteuid() == 0:
            done = subprocess.run(["chattr", "+i", str(self.path)], capture_output=True)
            if done.returncode != 0:
                pytest.skip(f"cannot make a folder unwritable for root here: {done.stderr.decode().strip()}")
            self.immutable = True
        else:
            self.path.chmod(stat.S_IRUSR | stat.S_IXUSR)
        return self

    def __exit__(self, *exc):
        if self.immutable:
            subprocess.run(["chattr", "-i", str(self.path)], check=True)
        self.path.chmod(self.mode)
