"""The process lifecycle of runs: start a worker, tell whether it is alive, stop it, kill it; the concurrency limit;
and `reconcile`, the one routine that moves the registry forward.

Every run is trained by its own worker process (`python -m lora_core.runs.worker RUN_DIR`) started in a new
session (its own process group), with stdin from /dev/null and stdout/stderr going to the run's worker.log: no
pipe that a browser tab or dashboard has to drain, and no shell. The worker outlives whoever launched it; closing
the browser or restarting the dashboard changes nothing, and any process that looks at the runs later
(`reconcile`) sees them live again.

Starting, checking and killing a worker are the methods of `LocalProcesses`; `ray_jobs.RayJobs` has the same
seam for runs on a Ray cluster (`check` moves a live run forward, `request_stop`, `kill`, `wait_gone`,
`cancelled`), and each run names its backend. Everything else here is backend-neutral policy over the registry:
  * a RUNNING run whose worker is gone (SIGKILL, out-of-memory kill, segfault, reboot) becomes FAILED with the
    tail of its log (or STOPPED if a stop had been requested); metrics already written stay;
  * QUEUED runs are started, in queue order, into free slots. Claiming a slot is one atomic SQLite transaction,
    so concurrent launchers never run more than the limit.
`reconcile` runs on every launch, on every look (CLI status/list, the dashboard, `wait`), and in each worker as it
exits, so the queue drains by itself with no browser open.

Concurrency limit (local runs only: a cluster queues its own): $LORA_LAB_MAX_CONCURRENT slots, else one per
visible GPU, else one on a CPU-only machine. A run of N training processes (resources.num_workers) holds N slots;
with several GPUs it is pinned to its slots' GPUs through CUDA_VISIBLE_DEVICES. Queue cap: $LORA_LAB_MAX_QUEUED
runs waiting at once (default 100) per runs directory; `max_queued(user)` is where a per-user cap plugs in.
"""
from __future__ import annotations

import glob
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Callable

import psutil

from ..config import ConfigError
from ..errors import StatusError
from . import files, layout
from .store import LOCAL, Registry, RunRecord, RunStatus

WORKER_MODULE = "lora_core.runs.worker"
STALE_AFTER_S = 10.0       # heartbeat age after which a worker we cannot check by pid counts as dead
HUNG_AFTER_S = 180.0       # heartbeat age after which a live-looking worker is killed as hung
START_GRACE_S = 60.0       # a claimed run whose worker never registered is failed after this long
PID_TIME_TOLERANCE_S = 1.0

_children: dict[int, subprocess.Popen] = {}   # workers this process started, so it can reap them


def this_host() -> str:
    return socket.gethostname()


# -- the concurrency limit ---------------------------------------------------------------------------------------

def visible_gpus() -> list[str]:
    """CUDA device ids runs may use, without importing torch: CUDA_VISIBLE_DEVICES if set, else one per
    /dev/nvidiaN device node. A worker (pinned to one GPU) that starts the next queued run sees the launcher's
    full list through LORA_LAB_GPUS, so it neither lowers the limit nor pins every run to its own GPU."""
    env = os.environ.get("LORA_LAB_GPUS")
    if env is None:
        env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [d.strip() for d in env.split(",") if d.strip()]
        return [] if not ids or ids[0] == "-1" else ids
    count = len([p for p in glob.glob("/dev/nvidia[0-9]*") if p[len("/dev/nvidia"):].isdigit()])
    return [str(i) for i in range(count)]


def max_concurrent() -> int:
    return _env_count("LORA_LAB_MAX_CONCURRENT", max(1, len(visible_gpus())))


def max_queued(user: str | None = None) -> int:
    """How many runs may wait in the queue at once: $LORA_LAB_MAX_QUEUED, default 100. `user` is the seam for a
    per-user cap (the team server passes the acting user and counts that user's runs); today the cap is the
    runs directory's, whoever launches."""
    return _env_count("LORA_LAB_MAX_QUEUED", 100)


def _env_count(name: str, default: int) -> int:
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    if not env.isdigit() or not 1 <= int(env) <= 1_000_000:
        raise ConfigError(name, f"must be a whole number from 1 to 1000000, got {env[:20]!r}")
    return int(env)


OnCrash = Callable[[RunRecord, str], None]  # called for a run found dead and marked FAILED (a restart hook)


# -- the local backend: start, is-alive, stop, kill ---------------------------------------------------------------

class LocalProcesses:
    """Runs as worker processes on this machine, each the leader of its own process group (a multi-process run's
    ranks are the worker's children, in the same group)."""

    name = LOCAL
    poll_s = 0.1  # how often a waiting stop looks again: a signal and a pid check cost nothing

    def check(self, registry: Registry, record: RunRecord, on_crash: OnCrash | None = None) -> None:
        """A RUNNING run whose worker died, or whose stop is overdue, is ended (QUEUED runs wait for a slot)."""
        if record.status == RunStatus.RUNNING:
            check_running(registry, self, record, on_crash)

    def cancelled(self, record: RunRecord) -> None:
        """Nothing runs for a queued local run."""

    def start(self, registry: Registry, record: RunRecord, limit: int) -> None:
        """Start the worker for a claimed (RUNNING) run and record its process identity."""
        rd = record.dir
        env = dict(os.environ, PYTHONUNBUFFERED="1", LORA_LAB_RUNS_DIR=str(registry.runs_dir))
        root = str(layout.REPO_ROOT)
        env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        gpus = visible_gpus()
        if gpus:
            env["LORA_LAB_GPUS"] = ",".join(gpus)
        if gpus and limit > 1 and record.slot is not None:  # one process per GPU: pin it to its slots' GPUs
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus[(record.slot + i) % len(gpus)] for i in range(record.slots))
        try:
            with open(rd.log, "ab") as log:
                proc = subprocess.Popen([sys.executable, "-m", WORKER_MODULE, str(rd.path)],
                                        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=str(rd.path), env=env, start_new_session=True, close_fds=True)
        except OSError as exc:
            registry.set_status(record.id, RunStatus.FAILED, error=f"could not start the worker: {exc}")
            return
        _children[proc.pid] = proc
        registry.update(record.id, only_if_status=RunStatus.RUNNING, pid=proc.pid, pgid=proc.pid,
                        pid_created=_create_time(proc.pid), host=this_host())

    def dead_reason(self, record: RunRecord) -> str | None:
        """Why a RUNNING run's worker is dead, or None while it is alive."""
        now = time.time()
        beat_age = now - (record.heartbeat or record.started or now)
        if record.pid is None:
            if record.heartbeat is None and now - (record.started or now) > START_GRACE_S:
                return f"the worker never started (no process {START_GRACE_S:.0f} s after the run was claimed)"
            return None
        if not _local(record):  # another machine's process: the heartbeat is all we can see
            return f"no heartbeat for {beat_age:.0f} s from host {record.host}" if beat_age > STALE_AFTER_S else None
        if process_alive(record.pid, record.pid_created):
            if beat_age > HUNG_AFTER_S:
                self.kill(record)
                return f"the worker stopped responding (no heartbeat for {beat_age:.0f} s) and was killed"
            return None
        said = files.read_json(record.dir.exit)  # the worker's own word, when the registry could not take it
        if isinstance(said, dict) and said.get("error"):
            return str(said["error"])[:1000]
        code = _exit_code(record.pid)
        how = f" (exit code {code}{_signal_name(code)})" if code is not None else ""
        return (f"the worker process {record.pid} ended without recording an end{how}: killed (SIGKILL or the "
                "out-of-memory killer), crashed, or the machine restarted")

    def request_stop(self, record: RunRecord) -> bool:
        """SIGTERM to the worker only (its children keep going to the step end); False when there is none."""
        if not (record.pid and _local(record) and process_alive(record.pid, record.pid_created)):
            return False
        try:
            os.kill(record.pid, signal.SIGTERM)
        except ProcessLookupError:
            return False
        return True

    def kill(self, record: RunRecord) -> None:
        """SIGKILL the run's whole process group (children of a dead worker must not keep holding memory)."""
        if record.pgid is None or not _local(record):
            return
        if group_members(record):
            try:
                os.killpg(record.pgid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass

    def wait_gone(self, record: RunRecord, timeout: float = 10.0) -> None:
        """Kill whatever is left in the run's group and wait until nothing is."""
        if record.pgid is None or not _local(record):
            return
        deadline = time.time() + timeout
        while time.time() < deadline:
            reap()
            if not group_members(record):
                return
            self.kill(record)
            time.sleep(0.05)
        raise RuntimeError(f"processes {group_members(record)} of run {record.id} survived SIGKILL")


def _local(record: RunRecord) -> bool:
    return record.host in (None, this_host())


def _create_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def process_alive(pid: int, created: float | None) -> bool:
    """False when the pid does not exist, is a zombie, or now belongs to another process (a reused pid)."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        return created is None or abs(proc.create_time() - created) <= PID_TIME_TOLERANCE_S
    except psutil.Error:
        return False


def group_members(record: RunRecord) -> list[int]:
    """Live (non-zombie) processes in the run's process group. Processes older than the worker cannot be
    members of its group, which guards against a recycled group id."""
    if record.pgid is None:
        return []
    members = []
    for proc in psutil.process_iter(["pid", "status", "create_time"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or os.getpgid(proc.pid) != record.pgid:
                continue
            if record.pid_created and proc.info["create_time"] < record.pid_created - PID_TIME_TOLERANCE_S:
                continue
            members.append(proc.pid)
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return members


def reap() -> None:
    """Collect the exit status of workers this process started, so none lingers as a zombie."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)  # Streamlit may reconcile from several threads at once


def _exit_code(pid: int) -> int | None:
    proc = _children.pop(pid, None)
    if proc is None:
        return None
    try:
        return proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        return None


def _signal_name(code: int) -> str:
    if code < 0:
        try:
            return f", {signal.Signals(-code).name}"
        except ValueError:
            return ""
    return ""


# -- reconcile: the one routine that moves the registry forward ---------------------------------------------------

def reconcile(registry: Registry, backends: dict, on_crash: OnCrash | None = None) -> list[str]:
    """Mark dead workers FAILED (or STOPPED when a stop was asked for), move cluster runs forward from their
    backend, then start local queued runs into free slots. Cheap when nothing changed; safe to call from any
    number of processes at once. Returns the ids of local runs it started. `on_crash(record, reason)` runs once
    for each run (of any backend) this call found dead and marked FAILED (the manager restarts it there when its
    config allows), before the queue is drained."""
    reap()
    live = registry.list(status=[RunStatus.QUEUED, RunStatus.RUNNING])
    crashed: list[str] = []

    def crash(record: RunRecord, reason: str) -> None:
        crashed.append(record.id)
        on_crash(record, reason)

    for record in live:
        backend_of(backends, record).check(registry, record, crash if on_crash else None)
    if crashed:  # the restarts queued above start in this same call: a cluster's is submitted, a local one below
        known = {r.id for r in live}
        live = registry.list(status=[RunStatus.QUEUED, RunStatus.RUNNING])
        for record in live:
            if record.id not in known and not record.local:
                backend_of(backends, record).check(registry, record)
    started = []
    if any(r.local and r.status == RunStatus.QUEUED for r in live):
        limit = max_concurrent()
        local = backends[LOCAL]
        while (record := registry.claim_next(limit)) is not None:
            local.start(registry, record, limit)
            started.append(record.id)
    return started


def backend_of(backends: dict, record: RunRecord):
    """The backend that runs `record` (rows from before backends existed are local)."""
    return backends[LOCAL if record.local else record.backend]


def check_running(registry: Registry, backend: LocalProcesses, record: RunRecord,
                  on_crash: OnCrash | None = None) -> None:
    """End a RUNNING run whose worker is dead, or whose stop deadline has passed (killing its group)."""
    reason = backend.dead_reason(record)
    if reason:
        backend.kill(record)
        if _end_dead(registry, record, reason) == RunStatus.FAILED and on_crash is not None:
            on_crash(record, reason)
    elif record.stop_deadline and time.time() > record.stop_deadline:
        backend.kill(record)
        waited = record.stop_deadline - (record.stop_requested or record.stop_deadline)
        try:
            registry.set_status(record.id, RunStatus.STOPPED, expect=RunStatus.RUNNING,
                                error=f"did not stop within {waited:.3g} s; its process group was killed")
        except StatusError:
            pass  # it ended by itself meanwhile


def _end_dead(registry: Registry, record: RunRecord, reason: str) -> RunStatus | None:
    """Record the end of a run whose worker died; returns the status recorded, None if someone was first."""
    status = RunStatus.STOPPED if record.stop_requested else RunStatus.FAILED
    if status == RunStatus.STOPPED:
        reason = "stopped: " + reason
    try:
        registry.set_status(record.id, status, expect=RunStatus.RUNNING, error=reason)
    except StatusError:
        return None  # the worker (or another reconciler) recorded the end first; its word stands
    return status


# -- stop and cancel ---------------------------------------------------------------------------------------------

def stop(registry: Registry, backends: dict, run_id: str, timeout: float = 15.0, wait: bool = True) -> RunStatus:
    """Stop a run; returns its status (with wait=True, the final one).

    QUEUED: cancelled at once (STOPPED). RUNNING: the stop and its deadline (now + `timeout`) go into the
    registry and the worker gets SIGTERM; it finishes the current step, saves the adapter and a checkpoint and
    ends STOPPED. Past the deadline its whole process group is SIGKILLed and the run marked STOPPED. That
    escalation is part of `reconcile()`, so it happens even if the caller goes away (wait=False returns at
    once, for a dashboard button; the next look escalates). With wait=True no process of the group survives
    this call."""
    record = registry.get(run_id)
    backend = backend_of(backends, record)
    if record.status == RunStatus.QUEUED:
        try:
            return cancel(registry, backends, record.id)
        except StatusError:
            record = registry.get(record.id)  # it was started meanwhile: stop it as a running run
    if record.terminal:
        return record.status
    now = time.time()
    registry.update(record.id, only_if_status=RunStatus.RUNNING, stop_requested=record.stop_requested or now,
                    stop_deadline=now + timeout)
    signalled = False
    while True:
        reap()
        record = registry.get(record.id)
        if record.terminal:
            break
        signalled = signalled or backend.request_stop(record)
        if not wait:
            return record.status
        backend.check(registry, record)
        time.sleep(backend.poll_s)
    backend.wait_gone(record)
    reconcile(registry, backends)  # the freed slot goes to the next queued run
    return record.status


def cancel(registry: Registry, backends: dict, run_id: str) -> RunStatus:
    """Cancel a QUEUED run (it becomes STOPPED with reason 'cancelled'; a job waiting on a cluster is stopped)."""
    record = registry.get(run_id)
    try:  # expect=QUEUED: a run claimed by a launcher a moment ago is not marked stopped under its worker
        registry.set_status(record.id, RunStatus.STOPPED, expect=RunStatus.QUEUED, error="cancelled")
    except StatusError:
        raise StatusError(f"run {record.id} is {registry.get(record.id).status}, not QUEUED; use stop") from None
    backend_of(backends, record).cancelled(record)
    return RunStatus.STOPPED
