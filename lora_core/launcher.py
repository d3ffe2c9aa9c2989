"""The launcher owns the process lifecycle of runs: launch, queue, stop, resume, sweep, and dead-worker detection.

Every run is trained by its own worker process (`python -m lora_core.worker RUN_DIR`) started in a new session
(its own process group), with stdin from /dev/null and stdout/stderr going to the run's worker.log: no pipe that
a browser tab or dashboard has to drain, and no shell. The worker outlives whoever launched it; closing the
browser or restarting the dashboard changes nothing, and any process that looks at the runs later
(`reconcile()`) sees them live again.

The registry is the single source of truth, and `reconcile()` is the one routine that moves it forward:
  * a RUNNING run whose worker is gone (SIGKILL, out-of-memory kill, segfault, reboot) becomes FAILED with the
    tail of its log (or STOPPED if a stop had been requested); metrics already written stay;
  * QUEUED runs are started, in queue order, into free slots. Claiming a slot is one atomic SQLite transaction,
    so concurrent launchers never run more than the limit.
It runs on every launch, on every look (CLI status/list, the dashboard, `wait`), and in each worker as it exits,
so the queue drains by itself with no browser open.

Concurrency limit: $LORA_LAB_MAX_CONCURRENT, else one run per visible GPU, else one on a CPU-only machine. With
several GPUs each run is pinned to its slot's GPU through CUDA_VISIBLE_DEVICES.

Resume starts a NEW run linked to the old one by `parent_id` (the old run keeps its final STOPPED/FAILED
status: terminal states never change). The new run has the identical config, starts from the parent's latest
complete checkpoint, and its metrics stream begins with the parent's events up to that checkpoint's step, so
its curves continue where the parent left off.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

from . import storage
from .config import BUNDLED_MODELS, ConfigError, ExperimentConfig, get_dotted, set_dotted
from .paths import DATA_SUFFIXES, is_local_path
from .storage import FAILED, QUEUED, RUNNING, STOPPED, RunRecord

STALE_AFTER_S = 10.0       # heartbeat age after which a worker we cannot check by pid counts as dead
HUNG_AFTER_S = 180.0       # heartbeat age after which a live-looking worker is killed as hung
START_GRACE_S = 60.0       # a claimed run whose worker never registered is failed after this long
PID_TIME_TOLERANCE_S = 1.0

_children: dict[int, subprocess.Popen] = {}   # workers this process started, so it can reap them


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
    env = os.environ.get("LORA_LAB_MAX_CONCURRENT", "").strip()
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ConfigError("LORA_LAB_MAX_CONCURRENT", f"must be a whole number >= 1, got {env!r}")
        return int(env)
    return max(1, len(visible_gpus()))


# -- launching ---------------------------------------------------------------------------------------------------

def launch(cfg: ExperimentConfig | dict, runs_dir: str | Path | None = None, *, sweep_id: str | None = None
           ) -> str:
    """Validate, create the run as QUEUED and start it if a slot is free. Returns the run id at once."""
    cfg = prepare(cfg)
    record = storage.create_run(cfg, runs_dir=runs_dir, sweep_id=sweep_id)
    reconcile(runs_dir)
    return record.id


def prepare(cfg: ExperimentConfig | dict) -> ExperimentConfig:
    """A validated copy of the config with local paths checked and made absolute, so the worker (started
    from any directory, possibly by another process draining the queue) reads the same files."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg)
    cfg = ExperimentConfig.from_dict(data)
    for field in ("data.train", "data.eval"):
        value = get_dotted(cfg, field)
        if value and not value.startswith("sample:") and is_local_path(value, DATA_SUFFIXES):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(field, f"file not found: {path.resolve()} (give an existing csv/tsv/json/jsonl/"
                                         "parquet file, a bundled sample:..., or a hub dataset id)")
            _set(cfg, field, str(path.resolve()))
    source = cfg.model.source
    if source not in BUNDLED_MODELS and is_local_path(source):
        path = Path(source).expanduser()
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ConfigError("model.source", f"{path.resolve()} is not a model directory (it needs a config.json); "
                                              f"use a bundled model ({', '.join(BUNDLED_MODELS)}), a hub id "
                                              "or a saved model directory")
        cfg.model.source = str(path.resolve())
    return cfg


def _set(cfg: ExperimentConfig, dotted: str, value: Any) -> None:
    section, name = dotted.split(".")
    setattr(getattr(cfg, section), name, value)


def _spawn(record: RunRecord, runs_dir: Path, limit: int) -> None:
    """Start the worker for a claimed run and record its process identity."""
    rd = storage.run_dir(record.id, runs_dir)
    env = dict(os.environ, PYTHONUNBUFFERED="1", LORA_LAB_RUNS_DIR=str(runs_dir))
    root = str(storage.repo_root())
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    gpus = visible_gpus()
    if gpus:
        env["LORA_LAB_GPUS"] = ",".join(gpus)
    if gpus and limit > 1 and record.slot is not None:  # one run per GPU: pin it to its slot's GPU
        env["CUDA_VISIBLE_DEVICES"] = gpus[record.slot % len(gpus)]
    try:
        with open(rd.log, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "lora_core.worker", str(rd.path)],
                                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    cwd=str(rd.path), env=env, start_new_session=True, close_fds=True)
    except OSError as exc:
        storage.set_status(record.id, FAILED, runs_dir, error=f"could not start the worker: {exc}")
        return
    _children[proc.pid] = proc
    storage.Registry(runs_dir).update(record.id, only_if_status=RUNNING, pid=proc.pid, pgid=proc.pid,
                                      pid_created=_create_time(proc.pid), host=storage.this_host())


def _create_time(pid: int) -> float | None:
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


# -- reconcile: the one routine that moves the registry forward ---------------------------------------------------

def reconcile(runs_dir: str | Path | None = None) -> list[str]:
    """Mark dead workers FAILED (or STOPPED when a stop was asked for), then start queued runs into free
    slots. Cheap when nothing changed; safe to call from any number of processes at once. Returns the ids of
    runs it started."""
    registry = storage.Registry(runs_dir)
    _reap()
    for record in registry.list(status=RUNNING):
        _check_running(registry, record)
    started = []
    if registry.count(QUEUED):
        limit = max_concurrent()
        while (record := registry.claim_next(limit)) is not None:
            _spawn(record, registry.runs_dir, limit)
            started.append(record.id)
    return started


def _check_running(registry: storage.Registry, record: RunRecord) -> None:
    """End a RUNNING run whose worker is dead, or whose stop deadline has passed (killing its group)."""
    reason = _dead_reason(record)
    if reason:
        _kill_group(record)  # children of a dead worker must not keep holding memory
        _end_dead(registry, record, reason)
    elif record.stop_deadline and time.time() > record.stop_deadline:
        _kill_group(record)
        waited = record.stop_deadline - (record.stop_requested or record.stop_deadline)
        try:
            registry.set_status(record.id, STOPPED, expect=RUNNING,
                                error=f"did not stop within {waited:.3g} s; its process group was killed")
        except storage.StatusError:
            pass  # it ended by itself meanwhile


def _reap() -> None:
    """Collect the exit status of workers this process started, so none lingers as a zombie."""
    for pid, proc in list(_children.items()):
        if proc.poll() is not None:
            _children.pop(pid, None)  # Streamlit may reconcile from several threads at once


def _dead_reason(record: RunRecord) -> str | None:
    """Why a RUNNING run's worker is dead, or None while it is alive."""
    now = time.time()
    beat_age = now - (record.heartbeat or record.started or now)
    if record.pid is None:
        if record.heartbeat is None and now - (record.started or now) > START_GRACE_S:
            return f"the worker never started (no process {START_GRACE_S:.0f} s after the run was claimed)"
        return None
    if record.host and record.host != storage.this_host():
        # another machine's process: the heartbeat is all we can see
        return f"no heartbeat for {beat_age:.0f} s from host {record.host}" if beat_age > STALE_AFTER_S else None
    state = _process_state(record.pid, record.pid_created)
    if state == "alive":
        if beat_age > HUNG_AFTER_S:
            _kill_group(record)
            return f"the worker stopped responding (no heartbeat for {beat_age:.0f} s) and was killed"
        return None
    code = _exit_code(record.pid)
    how = f" (exit code {code}{_signal_name(code)})" if code is not None else ""
    return (f"the worker process {record.pid} ended without recording an end{how}: killed (SIGKILL or the "
            "out-of-memory killer), crashed, or the machine restarted")


def _process_state(pid: int, created: float | None) -> str:
    """'alive', or 'gone' when the pid does not exist, is a zombie, or now belongs to another process."""
    import psutil

    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return "gone"
        if created is not None and abs(proc.create_time() - created) > PID_TIME_TOLERANCE_S:
            return "gone"  # the pid was reused by an unrelated process (or the machine rebooted)
        return "alive"
    except psutil.Error:
        return "gone"


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


def _end_dead(registry: storage.Registry, record: RunRecord, reason: str) -> None:
    status = STOPPED if record.stop_requested else FAILED
    if status == STOPPED:
        reason = "stopped: " + reason
    try:
        registry.set_status(record.id, status, expect=RUNNING, error=reason)
    except storage.StatusError:
        pass  # the worker (or another reconciler) recorded the end first; its word stands


# -- process groups ----------------------------------------------------------------------------------------------

def group_members(record: RunRecord) -> list[int]:
    """Live (non-zombie) processes in the run's process group. Processes older than the worker cannot be
    members of its group, which guards against a recycled group id."""
    import psutil

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


def _kill_group(record: RunRecord) -> None:
    if record.pgid is None or record.host not in (None, storage.this_host()):
        return
    if group_members(record):
        try:
            os.killpg(record.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _ensure_group_gone(record: RunRecord, timeout: float = 10.0) -> None:
    """SIGKILL whatever is left in the group and wait until nothing is."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        _reap()
        if not group_members(record):
            return
        _kill_group(record)
        time.sleep(0.05)
    raise RuntimeError(f"processes {group_members(record)} of run {record.id} survived SIGKILL")


# -- stop, cancel, move, wait ------------------------------------------------------------------------------------

def stop(run_id: str, timeout: float = 15.0, runs_dir: str | Path | None = None, wait: bool = True) -> str:
    """Stop a run; returns its status (with wait=True, the final one).

    QUEUED: cancelled at once (STOPPED). RUNNING: the stop and its deadline (now + `timeout`) go into the
    registry and the worker gets SIGTERM; it finishes the current step, saves the adapter and a checkpoint and
    ends STOPPED. Past the deadline its whole process group is SIGKILLed and the run marked STOPPED. That
    escalation is part of `reconcile()`, so it happens even if the caller goes away (wait=False returns at
    once, for a dashboard button; the next look escalates). With wait=True no process of the group survives
    this call."""
    registry = storage.Registry(runs_dir)
    record = registry.get(run_id)
    if record.status == QUEUED:
        try:
            return cancel(record.id, runs_dir)
        except storage.StatusError:
            record = registry.get(record.id)  # it was started meanwhile: stop it as a running run
    if record.terminal:
        return record.status
    now = time.time()
    registry.update(record.id, only_if_status=RUNNING, stop_requested=record.stop_requested or now,
                    stop_deadline=now + timeout)
    signalled = False
    while True:
        _reap()
        record = registry.get(record.id)
        if record.terminal:
            break
        if not signalled and record.pid and record.host in (None, storage.this_host()) \
                and _process_state(record.pid, record.pid_created) == "alive":
            try:
                os.kill(record.pid, signal.SIGTERM)  # the worker only: its children keep going to the step end
            except ProcessLookupError:
                pass
            signalled = True
        if not wait:
            return record.status
        _check_running(registry, record)
        time.sleep(0.1)
    if record.pgid is not None and record.host in (None, storage.this_host()):
        _ensure_group_gone(record)
    reconcile(runs_dir)  # the freed slot goes to the next queued run
    return record.status


def cancel(run_id: str, runs_dir: str | Path | None = None) -> str:
    """Cancel a QUEUED run (it becomes STOPPED with reason 'cancelled')."""
    registry = storage.Registry(runs_dir)
    record = registry.get(run_id)
    try:  # expect=QUEUED: a run claimed by a launcher a moment ago is not marked stopped under its worker
        registry.set_status(record.id, STOPPED, expect=QUEUED, error="cancelled")
    except storage.StatusError:
        raise storage.StatusError(f"run {record.id} is {registry.get(record.id).status}, not QUEUED; "
                                  "use stop") from None
    return STOPPED


def move(run_id: str, position: int, runs_dir: str | Path | None = None) -> list[str]:
    """Reorder the queue: put a QUEUED run at `position` (0 = starts next). Returns the queue in order."""
    registry = storage.Registry(runs_dir)
    return registry.move(registry.get(run_id).id, position)


def queue(runs_dir: str | Path | None = None) -> list[RunRecord]:
    """QUEUED runs in the order they will start."""
    return storage.list_runs(runs_dir, status=QUEUED)


def get(run_id: str, runs_dir: str | Path | None = None) -> RunRecord:
    """A run's record after reconciling, so a dead worker is never shown as RUNNING."""
    reconcile(runs_dir)
    return storage.get_run(run_id, runs_dir)


def list_runs(runs_dir: str | Path | None = None, **filters: Any) -> list[RunRecord]:
    """All runs after reconciling (what the dashboard and `list` show)."""
    reconcile(runs_dir)
    return storage.list_runs(runs_dir, **filters)


def wait(run_id: str, timeout: float | None = None, runs_dir: str | Path | None = None,
         poll: float = 0.25) -> RunRecord:
    """Block until the run reaches a terminal status (reconciling meanwhile); TimeoutError after `timeout`."""
    deadline = None if timeout is None else time.time() + timeout
    while True:
        record = get(run_id, runs_dir)
        if record.terminal:
            return record
        if deadline is not None and time.time() > deadline:
            raise TimeoutError(f"run {record.id} is still {record.status} after {timeout:g} s")
        time.sleep(poll)


def follow_log(run_id: str, runs_dir: str | Path | None = None, poll: float = 0.2) -> Iterator[str]:
    """Yield the worker log's lines as they are written, until the run has ended and the log is drained."""
    record = get(run_id, runs_dir)
    path = storage.log_path(record.id, runs_dir)
    offset, pending, last_check = 0, b"", 0.0
    while True:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
        offset += len(data)
        pending += data
        *lines, pending = pending.split(b"\n")
        for line in lines:
            yield line.decode("utf-8", errors="replace") + "\n"
        if not data:
            if record.terminal:
                if pending:
                    yield pending.decode("utf-8", errors="replace")
                return
            time.sleep(poll)
            if time.time() - last_check > 1.0:
                record, last_check = get(record.id, runs_dir), time.time()


def delete(run_id: str, runs_dir: str | Path | None = None) -> None:
    """Delete a run's row and files; refuses a RUNNING run (stop it first)."""
    reconcile(runs_dir)
    storage.delete_run(run_id, runs_dir)


# -- resume ------------------------------------------------------------------------------------------------------

def resume(run_id: str, runs_dir: str | Path | None = None) -> str:
    """Resume a STOPPED or FAILED run from its latest complete checkpoint as a NEW run; returns its id.

    The old run keeps its final status (terminal states are final). The new run has the same config,
    `parent_id` = the old run, starts from the checkpoint, and its metrics stream begins with the old run's
    events up to the checkpoint step, so the step count and the curves continue."""
    reconcile(runs_dir)
    parent = storage.get_run(run_id, runs_dir)
    if parent.status not in (STOPPED, FAILED):
        raise ValueError(f"run {parent.id} is {parent.status}; only STOPPED or FAILED runs can be resumed")
    found = storage.checkpoints(parent.id, runs_dir)
    if not found:
        raise ValueError(f"run {parent.id} has no checkpoint to resume from (checkpoints are saved every "
                         "train.save_steps steps, at each evaluation, and when a run is stopped)")
    step, checkpoint = found[-1]
    inherited = [dict(e, inherited_from=parent.id) for e in storage.read_metrics(parent.id, runs_dir)
                 if e.get("kind") != "phase" and isinstance(e.get("step"), (int, float)) and e["step"] <= step]
    cfg = storage.read_config(parent.id, runs_dir)
    record = storage.create_run(cfg, runs_dir=runs_dir, parent_id=parent.id, sweep_id=parent.sweep_id,
                                resume_from=checkpoint, initial_metrics=inherited)
    reconcile(runs_dir)
    return record.id


# -- sweeps ------------------------------------------------------------------------------------------------------

_FIXED_IN_SWEEPS = ("name", "task", "data.", "train.seed")


def sweep_configs(cfg: ExperimentConfig, vary: dict[str, list]) -> list[ExperimentConfig]:
    """The configs of a sweep, validated, without launching anything.

    Every varied field is crossed with every other, except that `method` values are ADDED to the base
    config's method (`lora.r=[4,8,16]` + `method=[full, head-only]` on a LoRA base gives LoRA r4/r8/r16, full
    and head-only), and lora.* / quant.* variations only apply to methods that use them (no duplicate
    full-fine-tuning runs per rank). Seed, data and eval split stay those of the base so runs are comparable."""
    if not vary:
        raise ConfigError("vary", "name at least one field to vary, e.g. lora.r=4,8,16")
    for key, values in vary.items():
        if key.startswith(_FIXED_IN_SWEEPS) or key in _FIXED_IN_SWEEPS:
            raise ConfigError(key, "a sweep keeps name, task, data and seed fixed so its runs are comparable; "
                                   "vary model, method, lora.*, quant.* or train.* settings")
        get_dotted(cfg, key)  # ConfigError for an unknown key
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(key, "give a non-empty list of values to try")
    methods = list(dict.fromkeys([cfg.method, *vary.get("method", [])]))
    others = {k: list(dict.fromkeys(map(_hashable, v))) for k, v in vary.items() if k != "method"}
    for key in others:
        if not any(_applies(key, m) for m in methods):
            raise ConfigError(key, f"no method in this sweep ({', '.join(map(str, methods))}) uses it; add "
                                   f"method=lora or qlora for lora.*, method=qlora for quant.*")
    configs, seen = [], set()
    for method in methods:
        keys = [k for k in others if _applies(k, method)]
        for combo in itertools.product(*(others[k] for k in keys)):
            changes = dict(zip(keys, combo))
            data = cfg.to_dict()
            set_dotted(data, "method", method)
            for key, value in changes.items():
                set_dotted(data, key, list(value) if isinstance(value, tuple) else value)
            data["name"] = _sweep_name(cfg.name, method, changes)
            try:
                one = ExperimentConfig.from_dict(data)
            except ConfigError as exc:
                raise ConfigError(exc.field, f"{exc.message} (in the sweep run method={method}"
                                  + "".join(f", {k}={v}" for k, v in changes.items()) + ")") from None
            signature = json.dumps({k: v for k, v in one.to_dict().items() if k != "name"}, sort_keys=True)
            if signature not in seen:
                seen.add(signature)
                configs.append(one)
    return configs


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _applies(key: str, method: str) -> bool:
    if key.startswith("lora."):
        return method in ("lora", "qlora")
    if key.startswith("quant."):
        return method == "qlora"
    return True


def _sweep_name(base: str, method: str, changes: dict) -> str:
    parts = [method] + [f"{k.rpartition('.')[2]}={v}" for k, v in changes.items()]
    return f"{base} [{' '.join(parts)}]"[:200]


def sweep(cfg: ExperimentConfig | dict, vary: dict[str, list], runs_dir: str | Path | None = None
          ) -> tuple[str, list[str]]:
    """Launch one run per sweep config (see `sweep_configs`), grouped under one sweep id. Every config is
    validated before the first run is created."""
    base = prepare(cfg)
    configs = [prepare(c) for c in sweep_configs(base, vary)]
    sweep_id = "sweep-" + storage.new_run_id(base.name)
    run_ids = [storage.create_run(c, runs_dir=runs_dir, sweep_id=sweep_id).id for c in configs]
    reconcile(runs_dir)
    return sweep_id, run_ids
