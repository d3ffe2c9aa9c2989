"""The Ray backend, dashboard side: runs submitted as Ray jobs through `ray.job_submission.JobSubmissionClient`,
with the same start / check / stop / kill seam as `launcher.LocalProcesses`.

    submit      one job per run: entrypoint `python -m lora_core.runs.job RUN_DIR` built from an argument list,
                entrypoint_num_cpus/gpus = one worker's share (0 when Ray Train places several workers),
                metadata {lora_lab_run, lora_lab_sweep}, lora_core shipped as a py_module, submission id
                derived from the run id (so two dashboards reconciling at once cannot submit it twice);
    check       the Jobs API's status reconciled into the registry: PENDING -> QUEUED (also while Ray Train
                still waits for its workers: the job has not written job.json), RUNNING, then the run's end
                from outcome.json (SUCCEEDED / STOPPED / FAILED with the reason) or, when the job died
                without writing one, FAILED with Ray's message (and its log copied into worker.log when the
                job died before writing its own copy there: runs/job.py tees its output into that file);
    stop        graceful first (the run's stop.request file, which the job polls: it checkpoints and saves the
                adapter), `stop_job` once the deadline has passed;
    logs        `get_job_logs`, only for a live job that has not started its worker.log yet.

Queueing is the cluster's: the local concurrency limit does not apply. The runs directory must be storage every
node sees at the same path; the first use of a cluster from a runs directory runs a probe job (job.py --probe)
and refuses the cluster, saying what to mount, when a node cannot write it. Ray is optional (requirements-
cluster.txt): nothing here imports it until a Ray run exists, and without it the one message is RAY_MISSING.
The token of a cluster with RAY_AUTH_MODE=token comes from RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH, which Ray's
client reads itself; it is never stored in a config, the registry or a job's metadata.
"""
from __future__ import annotations

import functools
import json
import logging
import os
import secrets
import shlex
import shutil
import time
from pathlib import Path

from ..config import ConfigError, ExperimentConfig, check_ray_address
from ..errors import RunError, StatusError
from . import files, layout
from .store import Registry, RunRecord, RunStatus, key_results

ADDRESS_ENV = "LORA_LAB_RAY_ADDRESS"
PYTHON_ENV = "LORA_LAB_RAY_PYTHON"   # the interpreter on the nodes (default: `python` on their PATH)
JOB_MODULE = "lora_core.runs.job"
RAY_MISSING = "the ray backend needs Ray on this machine: pip install -r requirements-cluster.txt"
PASSED_ENV = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")  # never secrets
PROBE_TIMEOUT_S = 120.0
SEEN_EVERY_S = 10.0                 # how often a live run's heartbeat records that its cluster answered
CLUSTER_LOST_S = 600.0              # a cluster silent this long has lost its runs
PROBE_MAX_AGE_S = 24 * 3600.0       # a cluster is probed again after a day, or when a node joins
CODE_DIR = layout.REPO_ROOT / "lora_core"


def cluster_address(cfg: ExperimentConfig) -> str:
    """The cluster a ray run goes to: resources.ray_address, else $LORA_LAB_RAY_ADDRESS (ConfigError if neither)."""
    return resolve_address(cfg.resources.ray_address)


def resolve_address(address: str | None) -> str:
    """`address`, else $LORA_LAB_RAY_ADDRESS, checked (ConfigError naming resources.ray_address)."""
    address = address or os.environ.get(ADDRESS_ENV, "")
    if not address.strip():
        raise ConfigError("resources.ray_address", f"the ray backend needs a cluster address: the Ray dashboard's "
                                                   f"http://HOST:8265, in this field, ${ADDRESS_ENV} or "
                                                   "--ray-address")
    return check_ray_address(address)


def require_ray() -> None:
    """ConfigError naming the requirements file when Ray's job client is not installed here."""
    try:
        import ray.job_submission  # noqa: F401
    except ImportError:
        raise ConfigError("resources.backend", RAY_MISSING) from None


@functools.lru_cache(maxsize=16)
def client(address: str):
    """The Jobs API client for a cluster (one per address and process). ConfigError without Ray, RunError when
    the cluster cannot be reached or refuses the token."""
    require_ray()
    from ray.job_submission import JobSubmissionClient

    # "Uploading package ..." on every submission is Ray's INFO; a dashboard or CLI wants warnings only
    logging.getLogger("ray.dashboard.modules.dashboard_sdk").setLevel(logging.WARNING)
    try:
        return JobSubmissionClient(address)
    except Exception as exc:  # ConnectionError, AuthenticationError, version mismatch: say which cluster
        raise RunError(f"cannot use the Ray cluster at {address}: {first_line(exc)}") from None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0][:400]}" if text else type(exc).__name__


def submission_id(run_id: str) -> str:
    return f"lora-lab-{run_id}"


def runtime_env(extra: dict | None = None) -> dict:
    """lora_core travels with the job (Ray caches it by content, per cluster); offline switches pass through."""
    env_vars = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
    return {"py_modules": [str(CODE_DIR)], "env_vars": {**env_vars, **(extra or {})}}


def entrypoint(*args: str) -> str:
    """The job's command line, quoted from an argument list (Ray takes a string; we never build one by hand)."""
    return shlex.join([os.environ.get(PYTHON_ENV, "python"), "-m", JOB_MODULE, *args])


class RayJobs:
    """Runs as Ray jobs. Holds no connection: one cached client per cluster address."""

    name = "ray"
    poll_s = 1.0  # how often a waiting stop looks again: each look asks the cluster over HTTP

    # -- start ---------------------------------------------------------------------------------------------------
    def prepare(self, registry: Registry, cfg: ExperimentConfig) -> str:
        """Before a ray run is created: the cluster answers, and its nodes can write this runs directory (a
        probe job the first time). Returns the address."""
        require_ray()
        address = cluster_address(cfg)
        ensure_probed(registry.runs_dir, address)
        return address

    def submit(self, registry: Registry, record: RunRecord) -> None:
        """Submit a QUEUED run's job (idempotent: the submission id is the run's)."""
        cfg = ExperimentConfig.from_file(record.dir.config)
        res = cfg.resources
        one = res.num_workers == 1  # one worker trains in the entrypoint; several are Ray Train's to place
        args = [str(record.dir.path)] + (["--resume", str(record.resume_checkpoint)] if record.resume_from else [])
        args += (["--sweep", record.sweep_id] if record.sweep_id else []) + \
            (["--parent", record.parent_id] if record.parent_id else [])  # for the trackers, as run_info
        job_id = submission_id(record.id)
        try:
            client(record.cluster).submit_job(
                entrypoint=entrypoint(*args), submission_id=job_id, runtime_env=runtime_env(),
                entrypoint_num_cpus=(res.cpus_per_worker or 1) if one else 0,
                entrypoint_num_gpus=res.gpus_per_worker if one else 0,
                metadata={"lora_lab_run": record.id, "lora_lab_sweep": record.sweep_id or ""})
        except RunError as exc:
            self._fail(registry, record, str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - already submitted by another reconciler: that one stands
            if not self._exists(record.cluster, job_id):
                self._fail(registry, record, f"could not submit the Ray job to {record.cluster}: {first_line(exc)}")
                return
        registry.update(record.id, job_id=job_id, heartbeat=time.time())

    def _exists(self, address: str, job_id: str) -> bool:
        try:
            client(address).get_job_info(job_id)
            return True
        except Exception:  # noqa: BLE001
            return False

    def _fail(self, registry: Registry, record: RunRecord, reason: str) -> None:
        try:
            registry.set_status(record.id, RunStatus.FAILED, expect=record.status, error=reason)
        except StatusError:
            pass

    # -- check: the Jobs API reconciled into the registry --------------------------------------------------------
    def check(self, registry: Registry, record: RunRecord, on_crash=None) -> None:
        """Move a QUEUED or RUNNING ray run forward from what Ray says about its job; `on_crash(record, reason)`
        (launcher.OnCrash) runs when its job ended and this call recorded it FAILED."""
        if not record.job_id:
            if record.status == RunStatus.QUEUED:
                self.submit(registry, record)
            return
        try:
            info = client(record.cluster).get_job_info(record.job_id)
            from ray.job_submission import JobStatus
        except Exception as exc:  # noqa: BLE001 - unreachable for now: the next look retries, up to a limit
            self._unreachable(registry, record, exc)
            return
        if time.time() - (record.heartbeat or 0) > SEEN_EVERY_S:  # the cluster answered about this run
            registry.update(record.id, heartbeat=time.time())
        state = JobStatus(info.status)
        if record.status == RunStatus.QUEUED:
            if state == JobStatus.PENDING or (state == JobStatus.RUNNING and not record.dir.job.is_file()):
                return  # waiting for the cluster's resources (Ray Train places its workers after the job starts)
            record = self._started(registry, record, info)
        if record.status != RunStatus.RUNNING:
            return
        if state.is_terminal():
            crash = self._ended(registry, record, state, info.message)
            if crash and on_crash is not None:
                on_crash(record, crash)
        elif record.stop_deadline and time.time() > record.stop_deadline:
            self.kill(record)  # the graceful stop is overdue: Ray's stop_job (SIGTERM, SIGKILL 3 s later)

    def _unreachable(self, registry: Registry, record: RunRecord, exc: Exception) -> None:
        """A run whose cluster forgot its job (restarted), or has not answered for CLUSTER_LOST_S, is FAILED:
        no run stays QUEUED or RUNNING forever."""
        gone = "does not exist" in str(exc) or "404" in str(exc)
        silent = record.heartbeat and time.time() - record.heartbeat > CLUSTER_LOST_S
        if gone or silent:
            why = ("no longer knows the job (was the cluster restarted?)" if gone else
                   f"has not answered for {time.time() - record.heartbeat:.0f} s")
            self._fail(registry, record, f"the Ray cluster at {record.cluster} {why}: {first_line(exc)}")

    def _started(self, registry: Registry, record: RunRecord, info) -> RunRecord:
        job = files.read_json(record.dir.job) or {}
        nodes = [r["node"] for r in job.get("ranks", [])] or [info.driver_node_id or job.get("node")]
        started = job.get("time")  # when its training process began (Ray's start_time is the submission's)
        registry.update(record.id, only_if_status=RunStatus.QUEUED, pid=job.get("pid"), host=job.get("host"),
                        nodes=[n for n in nodes if n])
        try:  # the status change also rewrites status.json with the fields above
            return registry.set_status(record.id, RunStatus.RUNNING, expect=RunStatus.QUEUED,
                                       **({"started": started} if started else {}))
        except StatusError:
            return registry.get(record.id)

    def _ended(self, registry: Registry, record: RunRecord, state, message: str | None) -> str | None:
        """Record the end of a run whose job ended (`state`: Ray's JobStatus), from its outcome.json if any.
        Returns the reason when this call recorded a crash (FAILED with no end of its own recorded), else None."""
        from ray.job_submission import JobStatus

        rd = record.dir
        self.copy_log(record)
        outcome = files.read_json(rd.outcome) or {}
        results = files.read_json(rd.results)
        fields: dict = {"results": key_results(results)} if results else {}
        if outcome.get("nodes"):
            fields["nodes"] = outcome["nodes"]
        if outcome.get("status"):
            status, error = RunStatus.parse(outcome["status"]), outcome.get("error")
        elif state == JobStatus.STOPPED or record.stop_requested:
            status = RunStatus.STOPPED
            error = (f"did not stop within {record.stop_deadline - record.stop_requested:.3g} s; Ray stopped the "
                     f"job {record.job_id}" if record.stop_requested and record.stop_deadline
                     else f"the Ray job {record.job_id} was stopped outside LoRA Lab")
        else:
            status = RunStatus.FAILED
            error = (f"the Ray job {record.job_id} ended {state.value} without recording an end (its training "
                     f"process was killed, or the node was lost): {(message or '').strip()[:400]}")
        try:
            registry.set_status(record.id, status, expect=RunStatus.RUNNING, error=error, **fields)
        except StatusError:
            return None  # another reconciler recorded it first
        return error if status == RunStatus.FAILED and not outcome.get("status") else None

    # -- stop, kill, logs ----------------------------------------------------------------------------------------
    def request_stop(self, record: RunRecord) -> bool:
        """The graceful stop: the job (or its rank 0) sees the run's stop.request file within a second or two."""
        record.dir.request_stop()
        return True

    def kill(self, record: RunRecord) -> None:
        if record.job_id and record.cluster:
            try:
                client(record.cluster).stop_job(record.job_id)
            except Exception:  # noqa: BLE001 - already ended, or the cluster is gone: nothing left to stop
                pass

    def cancelled(self, record: RunRecord) -> None:
        """A QUEUED run was cancelled: its job, submitted and waiting on the cluster, goes too."""
        self.kill(record)

    def wait_gone(self, record: RunRecord, timeout: float = 30.0) -> None:
        """Wait until Ray reports the run's job ended (stop_job escalates to SIGKILL after 3 s)."""
        if not (record.job_id and record.cluster):
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if client(record.cluster).get_job_status(record.job_id).is_terminal():
                    return
            except Exception:  # noqa: BLE001
                return
            time.sleep(0.2)
        raise RuntimeError(f"the Ray job {record.job_id} of run {record.id} is still running after stop_job")

    def logs(self, record: RunRecord) -> str:
        """The job's log as the Jobs API has it (get_job_logs): Runs.log_tail asks only for a live job that has
        not started its own copy in worker.log yet (runs/job.py)."""
        if not record.job_id:  # not submitted yet
            return ""
        try:
            return client(record.cluster).get_job_logs(record.job_id)
        except Exception as exc:  # noqa: BLE001
            return f"(the job's log cannot be read from {record.cluster}: {first_line(exc)})"

    def copy_log(self, record: RunRecord) -> None:
        """Keep the ended job's log in the run's worker.log, so the run folder describes itself: the job wrote
        its own copy as it ran, unless it ended before its first line (e.g. in its runtime env)."""
        if files.has_content(record.dir.log):
            return
        try:
            text = client(record.cluster).get_job_logs(record.job_id)
        except Exception:  # noqa: BLE001 - the log stays where Ray keeps it
            return
        files.atomic_write(record.dir.log, text)


# -- the probe: shared, writable runs directory ----------------------------------------------------------------------

def ensure_probed(runs_dir: Path, address: str) -> None:
    """Probe the cluster unless every node it has now passed a probe from this runs dir in the last day."""
    known = (files.read_json(layout.clusters_path(runs_dir)) or {}).get(address)
    if known and time.time() - known.get("time", 0) < PROBE_MAX_AGE_S and \
            set(alive_node_ids(address)) <= set(known.get("nodes", [])):
        return
    nodes = probe(runs_dir, address)
    probed = files.read_json(layout.clusters_path(runs_dir)) or {}
    probed[address] = {"nodes": nodes, "time": time.time()}
    files.write_json(layout.clusters_path(runs_dir), probed)


def probe(runs_dir: Path, address: str, timeout: float = PROBE_TIMEOUT_S) -> list[str]:
    """Run the probe job; returns the node ids that passed, or raises RunError saying what to mount."""
    nonce = f"probe-{secrets.token_hex(6)}"
    api = client(address)
    job_id = api.submit_job(entrypoint=entrypoint("--probe", str(runs_dir), nonce), runtime_env=runtime_env(),
                            entrypoint_num_cpus=0, metadata={"lora_lab_probe": nonce})
    deadline = time.time() + timeout
    while not api.get_job_status(job_id).is_terminal():
        if time.time() > deadline:
            api.stop_job(job_id)
            raise RunError(f"the Ray cluster at {address} did not run the runs-directory check within "
                           f"{timeout:.0f} s (is it out of resources, or still setting up its nodes?)")
        time.sleep(0.25)
    logs = api.get_job_logs(job_id)
    folder = layout.probe_path(runs_dir, nonce)
    try:
        report = probe_report(logs)
        bad = {node: why for node, why in report.items() if why != "ok"}
        bad.update({node: "wrote its file, but this machine does not see it: a different disk at the same path"
                    for node, why in report.items() if why == "ok" and not (folder / node).is_file()})
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if bad or not report:
        detail = "; ".join(f"node {node[:12]}: {why}" for node, why in bad.items()) or \
            "the check printed no report: " + (logs.strip().splitlines() or ["(empty log)"])[-1][:300]
        raise RunError(f"the Ray cluster at {address} cannot use the runs directory {runs_dir} ({detail}). Every "
                       f"node must see it read-write at that same path: mount the same storage (NFS, a cloud file "
                       f"share, or a KubeRay volume) at {runs_dir} on each node, or set LORA_LAB_RUNS_DIR to a "
                       f"folder the nodes already share.")
    return sorted(report)


def probe_report(logs: str) -> dict[str, str]:
    from .job import PROBE_MARK

    lines = [line for line in logs.splitlines() if line.startswith(PROBE_MARK)]
    return json.loads(lines[-1][len(PROBE_MARK):]) if lines else {}


# -- what the cluster looks like -------------------------------------------------------------------------------------

def alive_node_ids(address: str) -> list[str]:
    return [n["node_id"] for n in cluster_nodes(address) if n["alive"]]


def cluster_nodes(address: str) -> list[dict]:
    """Every node with its CPUs and GPUs, total and in use: {node_id, host, ip, head, alive, cpus, cpus_used,
    gpus, gpus_used}. Nodes from Ray's state API; the per-node use from the dashboard's cluster status (what
    Ray's own dashboard shows; zeros when it cannot be read)."""
    api = client(address)
    from ray.util.state import list_nodes

    try:
        nodes = list_nodes(address=address, limit=10_000, raise_on_missing_output=False)
        usage = (api._do_request("GET", "/api/cluster_status").json()["data"]["clusterStatus"]
                 ["loadMetricsReport"].get("usageByNode") or {})  # no public call gives per-node use
    except RunError:
        raise
    except Exception as exc:  # noqa: BLE001 - state API or dashboard endpoint unreachable
        raise RunError(f"cannot read the nodes of the Ray cluster at {address}: {first_line(exc)}") from None
    out = []
    for node in nodes:
        total, used = node.resources_total or {}, usage.get(node.node_id, {})
        out.append({"node_id": node.node_id, "ip": node.node_ip, "host": node.node_name,
                    "head": bool(node.is_head_node), "alive": node.state == "ALIVE",
                    "cpus": total.get("CPU", 0.0), "cpus_used": used.get("CPU", [0.0])[0],
                    "gpus": total.get("GPU", 0.0), "gpus_used": used.get("GPU", [0.0])[0]})
    return out
