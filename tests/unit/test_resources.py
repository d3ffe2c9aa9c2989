"""The `resources` section, the slots a multi-process run holds, and the Ray backend's side of the registry with a
stand-in for Ray's Jobs API (the real cluster is in tests/cluster). No training here."""
import shlex
import sys
import time
from types import SimpleNamespace

import pytest
from ray.job_submission import JobStatus

from helpers import free_port, tiny_config
from lora_core.config import ConfigError, ExperimentConfig
from lora_core.errors import RunError
from lora_core.runs import RunStatus, files, ray_jobs
from lora_core.runs.manager import prepare
from lora_core.runs.ray_jobs import RayJobs

QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED,
                                               RunStatus.FAILED, RunStatus.STOPPED)
ADDRESS = "http://127.0.0.1:8265"


# -- the config section ------------------------------------------------------------------------------------------

def test_default_resources_are_one_local_process():
    res = ExperimentConfig.from_dict({}).resources
    assert (res.backend, res.num_workers, res.cpus_per_worker, res.gpus_per_worker, res.ray_address) == \
        ("local", 1, None, 0.0, None)


@pytest.mark.parametrize("resources, field, words", [
    ({"backend": "slurm"}, "resources.backend", "allowed: local, ray"),
    ({"num_workers": 0}, "resources.num_workers", ">= 1"),
    ({"cpus_per_worker": 0}, "resources.cpus_per_worker", ">= 1"),
    ({"gpus_per_worker": -1}, "resources.gpus_per_worker", ">= 0"),
    ({"gpus_per_worker": 1.5}, "resources.gpus_per_worker", "whole GPUs"),
    ({"num_workers": 2, "gpus_per_worker": 0.5}, "resources.gpus_per_worker", "cannot share a GPU"),
    ({"ray_address": "10.0.0.1:8265"}, "resources.ray_address", "http://HOST:8265"),
    ({"ray_address": "http://user:secret@head:8265"}, "resources.ray_address", "RAY_AUTH_TOKEN"),
    ({"workers": 2}, "resources.workers", "allowed keys: backend, num_workers"),
])
def test_bad_resources_name_the_field(resources, field, words):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict({"resources": resources})
    assert err.value.field == field and words in str(err.value)


def test_ray_address_is_normalized_and_a_blank_one_is_none():
    assert ExperimentConfig.from_dict({"resources": {"ray_address": " http://head:8265/ "}}).resources.ray_address \
        == "http://head:8265"
    assert ExperimentConfig.from_dict({"resources": {"ray_address": "  "}}).resources.ray_address is None


def test_local_gpu_requests_are_checked_against_this_machine(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    with pytest.raises(ConfigError, match="no GPU") as err:
        prepare(tiny_config(**{"resources.gpus_per_worker": 1}))
    assert err.value.field == "resources.gpus_per_worker"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(ConfigError, match="shows 2") as err:
        prepare(tiny_config(**{"resources.num_workers": 3}))
    assert err.value.field == "resources.num_workers"
    assert prepare(tiny_config(**{"resources.num_workers": 2})).resources.num_workers == 2


def test_every_resources_problem_is_reported_at_once_with_its_field(monkeypatch):
    from lora_core import checks

    data = {"resources": {"num_workers": 2, "gpus_per_worker": 0.5, "ray_address": "head:8265"}, "lora": {"r": 0}}
    assert [p.field for p in checks.check(data, deep=False)] == \
        ["lora.r", "resources.ray_address", "resources.gpus_per_worker"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # what this machine cannot give is in the same list
    problems = checks.check({"resources": {"gpus_per_worker": 1}, "lora": {"r": 0}}, deep=False)
    assert [p.field for p in problems] == ["lora.r", "resources.gpus_per_worker"]
    assert "no GPU" in str(problems[1])


# -- slots: a run of N processes holds N ---------------------------------------------------------------------------

def test_a_run_of_n_workers_holds_n_slots(runs):
    registry = runs.registry
    wide = runs.create(tiny_config(name="wide", **{"resources.num_workers": 2})).id
    narrow = runs.create(tiny_config(name="narrow")).id
    assert registry.claim_next(limit=2).id == wide
    assert registry.claim_next(limit=2) is None  # both slots are the wide run's
    registry.set_status(wide, SUCCEEDED)
    assert registry.claim_next(limit=2).id == narrow
    wide2 = runs.create(tiny_config(name="wide2", **{"resources.num_workers": 2})).id
    assert registry.claim_next(limit=2) is None  # 1 slot free, 2 needed: it waits its turn
    registry.set_status(narrow, SUCCEEDED)
    claimed = registry.claim_next(limit=2)
    assert claimed.id == wide2 and (claimed.slot, claimed.slots) == (0, 2)


def test_a_run_wider_than_the_machine_runs_alone(runs):
    registry = runs.registry
    first = runs.create(tiny_config(name="one")).id
    wide = runs.create(tiny_config(name="wide", **{"resources.num_workers": 3})).id
    assert registry.claim_next(limit=1).id == first
    assert registry.claim_next(limit=1) is None
    registry.set_status(first, SUCCEEDED)
    assert registry.claim_next(limit=1).id == wide


# -- the Ray backend against a stand-in Jobs API ------------------------------------------------------------------

class FakeJobs:
    """What RayJobs uses of JobSubmissionClient, with the job's state set by the test."""

    def __init__(self):
        self.submitted, self.stopped, self.state, self.logs = [], [], JobStatus.PENDING, "job log line\n"
        self.message = None

    def submit_job(self, **kw):
        self.submitted.append(kw)
        return kw.get("submission_id")

    def get_job_info(self, job_id):
        return SimpleNamespace(status=self.state, message=self.message, start_time=time.time() * 1000,
                               driver_node_id="node-a")

    def get_job_logs(self, job_id):
        return self.logs

    def stop_job(self, job_id):
        self.stopped.append(job_id)
        return True


@pytest.fixture
def fake(monkeypatch):
    jobs = FakeJobs()
    monkeypatch.setattr(ray_jobs, "client", lambda address: jobs)
    monkeypatch.setattr(RayJobs, "prepare", lambda self, registry, cfg: ray_jobs.cluster_address(cfg))
    return jobs


def ray_config(**dotted):
    return tiny_config(**{"resources.backend": "ray", "resources.ray_address": ADDRESS, **dotted})


def test_a_ray_run_is_submitted_from_an_argument_list_with_its_metadata(runs, fake, runs_dir):
    run_id = runs.launch(ray_config())
    record = runs.get(run_id, reconcile=False)
    assert record.status is QUEUED and record.job_id == ray_jobs.submission_id(run_id)
    (job,) = fake.submitted
    assert shlex.split(job["entrypoint"])[1:] == ["-m", "lora_core.runs.job", str(record.dir.path)]
    assert job["entrypoint_num_cpus"] == 1 and job["entrypoint_num_gpus"] == 0
    assert job["metadata"] == {"lora_lab_run": run_id, "lora_lab_sweep": ""}
    assert record.cluster == ADDRESS and record.backend == "ray" and record.world_size == 1
    runs.reconcile()
    assert len(fake.submitted) == 1  # submitted once


def test_a_sweep_run_tells_its_job_its_sweep_for_the_trackers(runs, fake):
    sweep_id, ids = runs.sweep(ray_config(), {"lora.r": [1, 2]})
    by_run = {job["metadata"]["lora_lab_run"]: job for job in fake.submitted}
    assert sorted(by_run) == sorted(ids)
    for run_id, job in by_run.items():
        assert shlex.split(job["entrypoint"])[3:] == [str(runs.dir(run_id).path), "--sweep", sweep_id]
        assert job["metadata"]["lora_lab_sweep"] == sweep_id


def test_several_ray_workers_leave_the_cpus_to_ray_train(runs, fake):
    runs.launch(ray_config(**{"resources.num_workers": 2, "resources.cpus_per_worker": 2}))
    assert fake.submitted[0]["entrypoint_num_cpus"] == 0


def test_a_path_with_spaces_survives_the_entrypoint():
    assert shlex.split(ray_jobs.entrypoint("/runs dir/a b", "--resume", "/x y"))[-4:] == \
        ["lora_core.runs.job", "/runs dir/a b", "--resume", "/x y"]


def test_jobs_api_states_reconcile_into_the_registry(runs, fake):
    run_id = runs.launch(ray_config())
    fake.state = JobStatus.PENDING
    assert runs.get(run_id).status is QUEUED  # waiting for the cluster's resources
    fake.state = JobStatus.RUNNING
    assert runs.get(run_id).status is QUEUED  # the job runs, its training has not started (no job.json)
    rd = runs.dir(run_id)
    files.write_json(rd.job, {"pid": 4242, "host": "node-host"})
    record = runs.get(run_id)
    assert record.status is RUNNING and record.nodes == ["node-a"] and record.pid == 4242
    files.write_json(rd.results, {"eval_loss": 0.5, "backend": "ray", "world_size": 1})
    files.write_json(rd.outcome, {"status": SUCCEEDED.value, "error": None, "nodes": ["node-a"]})
    fake.state, fake.logs = JobStatus.SUCCEEDED, "the whole job log\n"
    record = runs.get(run_id)
    assert record.status is SUCCEEDED and record.results["eval_loss"] == 0.5
    assert rd.log.read_text() == "the whole job log\n"  # the run folder keeps the job's log


def test_a_live_jobs_log_is_read_from_its_own_copy_not_the_jobs_api(runs, fake):
    run_id = runs.launch(ray_config())
    fake.state, fake.logs = JobStatus.RUNNING, "what the Jobs API has\n"
    assert runs.log_tail(run_id) == "what the Jobs API has"  # the job has not written its copy yet
    rd = runs.dir(run_id)
    rd.log.write_text("the job's own copy\n")
    fake.get_job_logs = lambda job_id: pytest.fail("the Jobs API was asked for a log the run folder has")
    assert runs.log_tail(run_id) == "the job's own copy"
    files.write_json(rd.job, {"pid": 1})
    files.write_json(rd.outcome, {"status": SUCCEEDED.value, "error": None})
    fake.state = JobStatus.SUCCEEDED
    assert runs.get(run_id).status is SUCCEEDED
    assert rd.log.read_text() == "the job's own copy\n"  # kept, not replaced by Ray's at the end


def test_a_job_that_dies_without_an_end_fails_with_rays_message(runs, fake):
    run_id = runs.launch(ray_config())
    files.write_json(runs.dir(run_id).job, {"pid": 1})
    fake.state = JobStatus.RUNNING
    runs.reconcile()
    fake.state, fake.message = JobStatus.FAILED, "Job entrypoint command failed with exit code -9"
    fake.logs = "step 1\nstep 2\n"
    record = runs.get(run_id)
    assert record.status is FAILED and "exit code -9" in record.error and "without recording an end" in record.error
    assert "step 2" in record.error_log


def test_a_job_that_ends_before_it_was_seen_running_still_records_its_end(runs, fake):
    run_id = runs.launch(ray_config())
    files.write_json(runs.dir(run_id).outcome, {"status": STOPPED.value, "error": "stopped on request at step 3"})
    fake.state = JobStatus.SUCCEEDED
    record = runs.get(run_id)
    assert record.status is STOPPED and record.error == "stopped on request at step 3"


def test_stop_is_the_stop_file_first_then_stop_job_after_the_deadline(runs, fake):
    run_id = runs.launch(ray_config())
    files.write_json(runs.dir(run_id).job, {"pid": 1})
    fake.state = JobStatus.RUNNING
    runs.reconcile()
    assert runs.stop(run_id, timeout=0.3, wait=False) is RUNNING
    assert runs.dir(run_id).stop_request.is_file() and fake.stopped == []
    time.sleep(0.4)
    runs.reconcile()
    assert fake.stopped == [ray_jobs.submission_id(run_id)]
    fake.state = JobStatus.STOPPED
    record = runs.get(run_id)
    assert record.status is STOPPED and "did not stop within" in record.error


def test_cancelling_a_queued_ray_run_stops_its_waiting_job(runs, fake):
    run_id = runs.launch(ray_config())
    assert runs.cancel(run_id) is STOPPED
    assert fake.stopped == [ray_jobs.submission_id(run_id)]


def test_the_local_slot_limit_does_not_hold_back_ray_runs(runs, fake, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "1")
    ids = [runs.launch(ray_config(name=f"r{i}")) for i in range(3)]
    assert len(fake.submitted) == 3  # all go to the cluster, which queues them
    assert runs.registry.claim_next(limit=1) is None  # and the local queue never claims them
    assert all(runs.get(i, reconcile=False).status is QUEUED for i in ids)


def test_a_failed_submission_fails_the_run_with_the_reason(runs, fake, monkeypatch):
    def refuse(**kw):
        raise RuntimeError("Request failed with status code 500: boom")
    fake.submit_job = refuse
    fake.get_job_info = lambda job_id: (_ for _ in ()).throw(RuntimeError("no such job"))
    run_id = runs.launch(ray_config())
    record = runs.get(run_id, reconcile=False)
    assert record.status is FAILED and "could not submit" in record.error and "boom" in record.error


def test_ray_backend_needs_an_address(runs, monkeypatch):
    monkeypatch.delenv(ray_jobs.ADDRESS_ENV, raising=False)
    with pytest.raises(ConfigError, match="needs a cluster address") as err:
        runs.launch(tiny_config(**{"resources.backend": "ray"}))
    assert err.value.field == "resources.ray_address" and runs.list(reconcile=False) == []


def test_without_ray_installed_the_message_names_the_requirements_file(runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray.job_submission", None)  # what an install without Ray looks like
    with pytest.raises(ConfigError) as err:
        runs.launch(ray_config())
    assert "requirements-cluster.txt" in str(err.value) and "\n" not in str(err.value)
    assert runs.list(reconcile=False) == []  # nothing was created


def test_an_unreachable_cluster_is_a_clear_error(runs):
    port = free_port()  # nothing listens there
    with pytest.raises(RunError, match=f"cannot use the Ray cluster at http://127.0.0.1:{port}"):
        runs.launch(tiny_config(**{"resources.backend": "ray", "resources.ray_address": f"http://127.0.0.1:{port}"}))
    assert runs.list(reconcile=False) == []


def test_a_run_whose_cluster_forgot_or_lost_it_fails_instead_of_hanging(runs, fake, monkeypatch):
    forgotten = runs.launch(ray_config(name="forgotten"))
    silent = runs.launch(ray_config(name="silent"))

    def info(job_id):
        if job_id == ray_jobs.submission_id(forgotten):
            raise RuntimeError("Request failed with status code 404: Job lora-lab-x does not exist.")
        raise ConnectionError("Failed to connect to Ray")
    fake.get_job_info = info
    runs.reconcile()
    assert runs.get(forgotten, reconcile=False).status is FAILED
    assert "no longer knows the job" in runs.get(forgotten, reconcile=False).error
    assert runs.get(silent, reconcile=False).status is QUEUED  # a short outage changes nothing
    monkeypatch.setattr(ray_jobs, "CLUSTER_LOST_S", 0.0)
    record = runs.get(silent)
    assert record.status is FAILED and "has not answered" in record.error


def test_deleting_a_queued_ray_run_stops_its_job(runs, fake):
    run_id = runs.launch(ray_config())
    runs.delete(run_id)
    assert fake.stopped == [ray_jobs.submission_id(run_id)] and runs.list(reconcile=False) == []
