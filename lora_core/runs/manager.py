"""`Runs`: the one object every caller goes through to create, watch, stop and remove runs (the CLI, the
dashboard's lora_ui layer, the worker, tests), in the manner of Ray Jobs' JobManager. It holds ONE registry for
one runs directory and the process backend that runs the workers.

    runs = Runs()                                  # $LORA_LAB_RUNS_DIR or ./runs
    run_id = runs.launch(cfg)                      # validated first; returns at once (QUEUED or RUNNING)
    runs.get(run_id).status                        # RunStatus; reconciled first, so a dead worker shows FAILED
    events = runs.metrics(run_id)                  # a list with .offset: runs.metrics(run_id, since=events.offset)
    runs.stop(run_id); runs.resume(run_id)

Readers that show status (`get`, `list`, `wait`) reconcile first unless told not to (`reconcile=False`: a plain
registry read with no side effects, which also never starts queued runs). Unknown run ids raise RunError.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import BUNDLED_MODELS, ConfigError, ExperimentConfig, get_dotted, set_dotted
from ..errors import RunError
from ..paths import DATA_SUFFIXES, is_local_path
from . import files, launcher, layout, ray_jobs
from .layout import MODEL_CONFIG, RunDir
from .ray_jobs import RayJobs
from .store import LOCAL, Registry, RunRecord, RunStatus
from .sweep import sweep_configs


class Events(list):
    """Events read from a run's metrics stream; `offset` is where the next read continues."""

    def __init__(self, events: list[dict], offset: int):
        super().__init__(events)
        self.offset = offset


class Runs:
    """The runs in one runs directory."""

    def __init__(self, runs_dir: str | Path | None = None):
        self.registry = Registry(runs_dir)
        self.root = self.registry.runs_dir
        self.backend = launcher.LocalProcesses()
        self.backends = {LOCAL: self.backend, RayJobs.name: RayJobs()}  # resources.backend -> its process seam

    def __repr__(self) -> str:
        return f"Runs({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------------------------
    def get(self, run_id: str, *, reconcile: bool = True) -> RunRecord:
        """A run's record (by id or unique id prefix)."""
        if reconcile:
            self.reconcile()
        return self.registry.get(run_id)

    def list(self, status: RunStatus | list[RunStatus] | None = None, sweep_id: str | None = None,
             parent_id: str | None = None, backend: str | None = None, *, reconcile: bool = True) -> list[RunRecord]:
        """Runs newest first (QUEUED alone: in queue order), from the registry alone: no run file is read."""
        if reconcile:
            self.reconcile()
        return self.registry.list(status=status, sweep_id=sweep_id, parent_id=parent_id, backend=backend)

    def queue(self) -> list[RunRecord]:
        """QUEUED runs in the order they will start."""
        return self.registry.list(status=RunStatus.QUEUED)

    def dir(self, run_id: str) -> RunDir:
        """The run's directory layout (run_id may be a unique prefix)."""
        return RunDir(layout.run_path(self.root, self.registry.get(run_id).id))

    def config(self, run_id: str) -> ExperimentConfig:
        return ExperimentConfig.from_file(self.dir(run_id).config)

    def metrics(self, run_id: str, since: int = 0) -> Events:
        """Events appended after byte `since`, tolerant of a half-written or corrupt line."""
        return Events(*files.read_events(self.dir(run_id).metrics, since))

    def results(self, run_id: str) -> dict | None:
        """results.json, or None until the run has ended."""
        return files.read_json(self.dir(run_id).results)

    def log_tail(self, run_id: str, n: int = 50) -> str:
        """The last n lines of the run's log: worker.log, or the Ray job's log while it runs."""
        record = self.registry.get(run_id)
        if record.local or record.terminal:
            return files.log_tail(record.dir.log, n)
        lines = self.backends[record.backend].logs(record).splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    def checkpoints(self, run_id: str) -> list[tuple[int, Path]]:
        """Complete Trainer checkpoints as (step, path), oldest first."""
        return self.dir(run_id).artifacts.complete_checkpoints()

    def follow_log(self, run_id: str, poll: float = 0.2) -> Iterator[str]:
        """Yield the worker log's lines as they are written, until the run has ended and the log is drained."""
        record = self.get(run_id)
        if not record.local:
            yield from self._follow_job_log(record, poll=max(poll, 1.0))
            return
        path = record.dir.log
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
                    record, last_check = self.get(record.id), time.time()

    def _follow_job_log(self, record: RunRecord, poll: float) -> Iterator[str]:
        """A cluster run's log as it grows (get_job_logs), then the rest once the run has ended."""
        shown = 0
        while True:
            record = self.get(record.id)
            text = self.backends[record.backend].logs(record)
            if len(text) > shown:
                yield text[shown:]
                shown = len(text)
            if record.terminal:
                return
            time.sleep(poll)

    def wait(self, run_id: str, timeout: float | None = None, poll: float = 0.25) -> RunRecord:
        """Block until the run reaches a terminal status (reconciling meanwhile); TimeoutError after `timeout`."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            record = self.get(run_id)
            if record.terminal:
                return record
            if deadline is not None and time.time() > deadline:
                raise TimeoutError(f"run {record.id} is still {record.status} after {timeout:g} s")
            time.sleep(poll)

    # -- creating and launching ------------------------------------------------------------------------------
    def create(self, cfg: ExperimentConfig, *, sweep_id: str | None = None, parent_id: str | None = None,
               resume_from: Path | None = None, initial_metrics: list[dict] | None = None) -> RunRecord:
        """Create the run directory and its QUEUED row, without starting anything. The files are complete
        before the row exists, so no reader or launcher ever sees a half-made run. `initial_metrics` seeds the
        stream (a resumed run's inherited events)."""
        res = cfg.resources
        cluster = self.backends[res.backend].prepare(self.registry, cfg) if res.backend != LOCAL else None
        path = layout.run_path(self.root, layout.new_run_id(cfg.name))
        path.mkdir()
        try:
            rd = RunDir(path)
            rd.artifacts.path.mkdir()
            with open(rd.config, "x", encoding="utf-8") as f:  # "x": written once, never overwritten
                f.write(cfg.to_yaml())
            rd.metrics.touch()
            rd.log.touch()
            for event in initial_metrics or []:
                files.append_event(rd.metrics, event)
            record = RunRecord(
                id=rd.id, name=cfg.name, status=RunStatus.QUEUED, created=time.time(), task=cfg.task,
                model=cfg.model.source, method=cfg.method, lora_r=cfg.lora.r if cfg.uses_lora else None,
                sweep_id=sweep_id, parent_id=parent_id, runs_dir=str(self.root), backend=res.backend,
                world_size=res.num_workers, cluster=cluster,
                resume_from=Path(resume_from).resolve().relative_to(self.root).as_posix() if resume_from else None)
            return self.registry.insert(record)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def launch(self, cfg: ExperimentConfig | dict, *, sweep_id: str | None = None) -> str:
        """Validate, create the run as QUEUED and start it if a slot is free. Returns the run id at once."""
        record = self.create(prepare(cfg), sweep_id=sweep_id)
        self.reconcile()
        return record.id

    def plan_sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list]) -> list[ExperimentConfig]:
        """The validated configs `sweep` would launch, without launching anything."""
        return [prepare(c) for c in sweep_configs(prepare(cfg), vary)]

    def sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list]) -> tuple[str, list[str]]:
        """Launch one run per sweep config (see sweep.sweep_configs), grouped under one sweep id. Every config is
        validated before the first run is created."""
        base = prepare(cfg)
        configs = self.plan_sweep(base, vary)
        sweep_id = "sweep-" + layout.new_run_id(base.name)
        run_ids = [self.create(c, sweep_id=sweep_id).id for c in configs]
        self.reconcile()
        return sweep_id, run_ids

    def resume(self, run_id: str) -> str:
        """Resume a STOPPED or FAILED run from its latest complete checkpoint as a NEW run; returns its id.

        The old run keeps its final status (terminal states are final). The new run has the same config,
        `parent_id` = the old run, starts from the checkpoint, and its metrics stream begins with the old run's
        events up to the checkpoint step, so the step count and the curves continue."""
        parent = self.get(run_id)
        if parent.status not in (RunStatus.STOPPED, RunStatus.FAILED):
            raise RunError(f"run {parent.id} is {parent.status}; only STOPPED or FAILED runs can be resumed")
        found = self.checkpoints(parent.id)
        if not found:
            raise RunError(f"run {parent.id} has no checkpoint to resume from (checkpoints are saved every "
                           "train.save_steps steps, at each evaluation, and when a run is stopped)")
        step, checkpoint = found[-1]
        inherited = [dict(e, inherited_from=parent.id) for e in self.metrics(parent.id)
                     if e.get("kind") != "phase" and isinstance(e.get("step"), (int, float)) and e["step"] <= step]
        record = self.create(self.config(parent.id), parent_id=parent.id, sweep_id=parent.sweep_id,
                             resume_from=checkpoint, initial_metrics=inherited)
        self.reconcile()
        return record.id

    def cluster(self, address: str | None = None) -> dict:
        """A Ray cluster (`address`, else $LORA_LAB_RAY_ADDRESS): its nodes with CPUs and GPUs, total and in use,
        and this runs directory's queued and running runs on it."""
        address = ray_jobs.resolve_address(address)
        ray_jobs.require_ray()
        nodes = ray_jobs.cluster_nodes(address)
        alive = [n for n in nodes if n["alive"]]
        ours = [r for r in self.list(status=[RunStatus.QUEUED, RunStatus.RUNNING], backend=RayJobs.name)
                if r.cluster == address]
        return {"address": address, "nodes": nodes,
                **{key: sum(n[key] for n in alive) for key in ("cpus", "cpus_used", "gpus", "gpus_used")},
                "runs": [{"id": r.id, "name": r.name, "status": r.status.value, "world_size": r.world_size or 1,
                          "job_id": r.job_id, "nodes": r.nodes} for r in ours]}

    # -- the lifecycle -----------------------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Mark dead workers FAILED, escalate overdue stops, start queued runs into free slots; returns the ids
        of the runs it started."""
        return launcher.reconcile(self.registry, self.backends)

    def stop(self, run_id: str, timeout: float = 15.0, wait: bool = True) -> RunStatus:
        """Graceful stop (the worker saves the adapter and a checkpoint), then kill after `timeout` s; a queued
        run is cancelled. See launcher.stop."""
        return launcher.stop(self.registry, self.backends, run_id, timeout=timeout, wait=wait)

    def cancel(self, run_id: str) -> RunStatus:
        """Cancel a QUEUED run (STOPPED, reason 'cancelled'); StatusError once it has started."""
        return launcher.cancel(self.registry, self.backends, run_id)

    def move(self, run_id: str, position: int) -> list[str]:
        """Reorder the queue: put a QUEUED run at `position` (0 = starts next). Returns the queue in order."""
        return self.registry.move(self.registry.get(run_id).id, position)

    def delete(self, run_id: str) -> None:
        """Remove a run's row and directory; refuses a RUNNING run (stop it first)."""
        self.reconcile()
        record = self.registry.get(run_id)
        self.registry.delete(record.id)
        if record.status == RunStatus.QUEUED:  # a job waiting on a cluster goes too
            launcher.backend_of(self.backends, record).cancelled(record)
        shutil.rmtree(record.dir.path, ignore_errors=True)


# -- checking a config before anything launches ---------------------------------------------------------------

def prepare(cfg: ExperimentConfig | dict) -> ExperimentConfig:
    """A validated copy of the config with local paths checked and made absolute, so the worker (started from
    any directory, possibly by another process draining the queue) reads the same files."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg)
    cfg = ExperimentConfig.from_dict(data)
    changes: dict[str, Any] = {}
    for field in ("data.train", "data.eval"):
        value = get_dotted(cfg, field)
        if value and not value.startswith("sample:") and is_local_path(value, DATA_SUFFIXES):
            path = Path(value).expanduser()
            if not path.is_file():
                raise ConfigError(field, f"file not found: {path.resolve()} (give an existing csv/tsv/json/jsonl/"
                                         "parquet file, a bundled sample:..., or a hub dataset id)")
            changes[field] = str(path.resolve())
    source = cfg.model.source
    if source not in BUNDLED_MODELS and is_local_path(source):
        path = Path(source).expanduser()
        if not path.is_dir() or not (path / MODEL_CONFIG).is_file():
            raise ConfigError("model.source", f"{path.resolve()} is not a model directory (it needs a "
                                              f"{MODEL_CONFIG}); use a bundled model ({', '.join(BUNDLED_MODELS)}), "
                                              "a hub id or a saved model directory")
        changes["model.source"] = str(path.resolve())
    check_local_resources(cfg)
    if not changes:
        return cfg
    data = cfg.to_dict()
    for field, value in changes.items():
        set_dotted(data, field, value)
    return ExperimentConfig.from_dict(data)


def check_local_resources(cfg: ExperimentConfig) -> None:
    """What this machine cannot give a local run: GPUs it does not have, more GPU workers than GPUs."""
    res = cfg.resources
    if res.backend != LOCAL:
        return
    gpus = launcher.visible_gpus()
    if res.gpus_per_worker and not gpus:
        raise ConfigError("resources.gpus_per_worker", "this machine shows no GPU (CUDA_VISIBLE_DEVICES, "
                                                       "/dev/nvidia*); set 0 to train on CPU, or use backend ray")
    if gpus and res.num_workers > len(gpus):
        raise ConfigError("resources.num_workers", f"{res.num_workers} workers need one GPU each and this machine "
                                                   f"shows {len(gpus)} ({', '.join(gpus)}); lower it, or use "
                                                   "backend ray")
