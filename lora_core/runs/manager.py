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

Actions take the `actor` who asks (lora_core.team.access.Actor; the dashboard passes the signed-in user). Without
one the caller is the CLI: the OS user, trusted. Each action checks the actor's role and, for a request from a
browser, what its config may touch (lora_core.team.policy) before anything is created, then writes the outcome,
a refusal included, to the audit log. The run records the actor as its `owner`.
"""
from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any, Iterator

from ..config import BUNDLED_MODELS, ConfigError, ExperimentConfig, get_dotted, set_dotted
from ..errors import RunError
from ..paths import DATA_SUFFIXES, is_local_path
from ..team import access, policy
from ..team.access import AccessError, Actor
from ..team.settings import TeamSettings, team_settings
from . import files, launcher, layout
from .layout import MODEL_CONFIG, RunDir
from .store import AuditEntry, Registry, RunRecord, RunStatus
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

    def __repr__(self) -> str:
        return f"Runs({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------------------------
    def get(self, run_id: str, *, reconcile: bool = True) -> RunRecord:
        """A run's record (by id or unique id prefix)."""
        if reconcile:
            self.reconcile()
        return self.registry.get(run_id)

    def list(self, status: RunStatus | list[RunStatus] | None = None, sweep_id: str | None = None,
             parent_id: str | None = None, owner: str | None = None, *, reconcile: bool = True) -> list[RunRecord]:
        """Runs newest first (QUEUED alone: in queue order), from the registry alone: no run file is read."""
        if reconcile:
            self.reconcile()
        return self.registry.list(status=status, sweep_id=sweep_id, parent_id=parent_id, owner=owner)

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
        return files.log_tail(self.dir(run_id).log, n)

    def checkpoints(self, run_id: str) -> list[tuple[int, Path]]:
        """Complete Trainer checkpoints as (step, path), oldest first."""
        return self.dir(run_id).artifacts.complete_checkpoints()

    def follow_log(self, run_id: str, poll: float = 0.2) -> Iterator[str]:
        """Yield the worker log's lines as they are written, until the run has ended and the log is drained."""
        record = self.get(run_id)
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
               resume_from: Path | None = None, initial_metrics: list[dict] | None = None,
               owner: str | None = None) -> RunRecord:
        """Create the run directory and its QUEUED row, without starting anything. The files are complete
        before the row exists, so no reader or launcher ever sees a half-made run. `initial_metrics` seeds the
        stream (a resumed run's inherited events); `owner` defaults to the OS user."""
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
                sweep_id=sweep_id, parent_id=parent_id, runs_dir=str(self.root), owner=owner or access.os_user(),
                resume_from=Path(resume_from).resolve().relative_to(self.root).as_posix() if resume_from else None)
            return self.registry.insert(record)
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def launch(self, cfg: ExperimentConfig | dict, *, sweep_id: str | None = None, actor: Actor | None = None) -> str:
        """Validate, create the run as QUEUED and start it if a slot is free. Returns the run id at once."""
        actor, _ = self._act(actor, "launch")
        cfg = self._admit(actor, [cfg])[0]
        record = self.create(cfg, sweep_id=sweep_id, owner=actor.name)
        self.audit(actor, "launch", record.id, detail={"name": cfg.name})
        self.reconcile()
        return record.id

    def plan_sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list]) -> list[ExperimentConfig]:
        """The validated configs `sweep` would launch, without launching anything."""
        return [prepare(c) for c in sweep_configs(prepare(cfg), vary)]

    def sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list], *,
              actor: Actor | None = None) -> tuple[str, list[str]]:
        """Launch one run per sweep config (see sweep.sweep_configs), grouped under one sweep id. Every config is
        validated (and, for a browser's request, admitted) before the first run is created."""
        actor, _ = self._act(actor, "sweep")
        base = ExperimentConfig.from_dict(cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg))
        planned = sweep_configs(base, vary)
        policy.check_sweep(actor, len(planned), self.team_settings())
        configs = self._admit(actor, planned)
        sweep_id = "sweep-" + layout.new_run_id(base.name)
        run_ids = [self.create(c, sweep_id=sweep_id, owner=actor.name).id for c in configs]
        self.audit(actor, "sweep", None, detail={"sweep_id": sweep_id, "runs": run_ids})
        self.reconcile()
        return sweep_id, run_ids

    def resume(self, run_id: str, *, actor: Actor | None = None) -> str:
        """Resume a STOPPED or FAILED run from its latest complete checkpoint as a NEW run; returns its id.

        The old run keeps its final status (terminal states are final). The new run has the same config,
        `parent_id` = the old run, starts from the checkpoint, and its metrics stream begins with the old run's
        events up to the checkpoint step, so the step count and the curves continue. Its owner is the actor."""
        actor, _ = self._act(actor, "resume", run_id)
        parent = self.get(run_id)
        if parent.status not in (RunStatus.STOPPED, RunStatus.FAILED):
            raise RunError(f"run {parent.id} is {parent.status}; only STOPPED or FAILED runs can be resumed")
        found = self.checkpoints(parent.id)
        if not found:
            raise RunError(f"run {parent.id} has no checkpoint to resume from (checkpoints are saved every "
                           "train.save_steps steps, at each evaluation, and when a run is stopped)")
        cfg = self._admit(actor, [self.config(parent.id)])[0]
        step, checkpoint = found[-1]
        inherited = [dict(e, inherited_from=parent.id) for e in self.metrics(parent.id)
                     if e.get("kind") != "phase" and isinstance(e.get("step"), (int, float)) and e["step"] <= step]
        record = self.create(cfg, parent_id=parent.id, sweep_id=parent.sweep_id, resume_from=checkpoint,
                             initial_metrics=inherited, owner=actor.name)
        self.audit(actor, "resume", parent.id, detail={"new_run": record.id, "step": step})
        self.reconcile()
        return record.id

    def merge(self, run_id: str, out: str | Path | None = None, *, overwrite: bool = False,
              actor: Actor | None = None) -> dict:
        """Merge a LoRA run's adapter into its base (into the run's merged/ folder, or `out`); the merge report
        (see lora_core.merge). Loads the model in this process."""
        from ..merge import merge_adapter  # torch: only when a merge runs

        actor, record = self._act(actor, "merge", run_id)
        if out is not None and actor.confined:
            policy.confine(str(out), "merge.out", self.root)
        artifacts = self.dir(record.id).artifacts
        report = merge_adapter(self.config(record.id), artifacts.adapter, Path(out) if out else artifacts.merged,
                               overwrite=overwrite)
        self.audit(actor, "merge", record.id, detail={"out": str(report.get("out_dir")), "ok": report.get("ok")})
        return report

    # -- the lifecycle -----------------------------------------------------------------------------------------
    def reconcile(self) -> list[str]:
        """Mark dead workers FAILED, escalate overdue stops, start queued runs into free slots; returns the ids
        of the runs it started."""
        return launcher.reconcile(self.registry, self.backend)

    def stop(self, run_id: str, timeout: float = 15.0, wait: bool = True, *, actor: Actor | None = None) -> RunStatus:
        """Graceful stop (the worker saves the adapter and a checkpoint), then kill after `timeout` s; a queued
        run is cancelled. See launcher.stop."""
        actor, record = self._act(actor, "stop", run_id)
        self.audit(actor, "stop", record.id)
        return launcher.stop(self.registry, self.backend, record.id, timeout=timeout, wait=wait)

    def cancel(self, run_id: str, *, actor: Actor | None = None) -> RunStatus:
        """Cancel a QUEUED run (STOPPED, reason 'cancelled'); StatusError once it has started."""
        actor, record = self._act(actor, "cancel", run_id)
        status = launcher.cancel(self.registry, record.id)
        self.audit(actor, "cancel", record.id)
        return status

    def move(self, run_id: str, position: int, *, actor: Actor | None = None) -> list[str]:
        """Reorder the queue: put a QUEUED run at `position` (0 = starts next). Returns the queue in order."""
        actor, record = self._act(actor, "move", run_id)
        queue = self.registry.move(record.id, position)
        self.audit(actor, "move", record.id, detail={"position": int(position)})
        return queue

    def delete(self, run_id: str, *, actor: Actor | None = None) -> None:
        """Remove a run's row and directory; refuses a RUNNING run (stop it first)."""
        actor, _ = self._act(actor, "delete", run_id)
        self.reconcile()
        rd = self.dir(run_id)
        self.registry.delete(rd.id)
        shutil.rmtree(rd.path, ignore_errors=True)
        self.audit(actor, "delete", rd.id)

    # -- who acts: permissions, admission, the audit log, server settings ----------------------------------------
    def _act(self, actor: Actor | None, action: str, run_id: str | None = None) -> tuple[Actor, RunRecord | None]:
        """The actor (the CLI's OS user when none is given) and the run, once the actor's role allows `action` on
        it. A refusal is written to the audit log, then raised as AccessError."""
        actor = actor or access.cli_actor()
        record = self.registry.get(run_id) if run_id is not None else None
        reason = access.denial(actor, action, record.owner if record else None)
        if reason:
            self.audit(actor, action, record.id if record else None, outcome="denied", detail={"reason": reason})
            raise AccessError(f"refused: {reason}")
        return actor, record

    def _admit(self, actor: Actor, configs: list) -> list[ExperimentConfig]:
        """The configs prepared for launching, after what a browser request may read or run is checked (paths
        inside the data roots, allowlisted hub ids and remote code; the actor's queue cap)."""
        team = self.team_settings()
        checked = [c if isinstance(c, ExperimentConfig) else ExperimentConfig.from_dict(c) for c in configs]
        for cfg in checked:  # before prepare(): its "file not found" would tell whether a path outside exists
            policy.check_config(cfg, actor, self.root, team)
        policy.check_queue(actor, self.registry, team, len(checked))
        return [prepare(c) for c in checked]

    def audit(self, actor: Actor, action: str, run_id: str | None = None, *, outcome: str = "ok",
              detail: dict | None = None, once: bool = False) -> bool:
        """Append to the audit log (see store.AuditEntry); `once`: not again for the actor's session."""
        return self.registry.audit(AuditEntry(actor.name, action, run_id, outcome, detail or {}, actor.role.value,
                                              actor.via, actor.client, actor.session), once=once)

    def audit_log(self, limit: int | None = 500, **filters) -> list[AuditEntry]:
        """Audit entries, newest first (filters: actor, action, run_id, since)."""
        return self.registry.audit_log(limit, **filters)

    def team_settings(self) -> TeamSettings:
        """The server settings an admin may change (defaults where none was saved)."""
        return team_settings(self.registry.settings())

    def update_settings(self, changes: dict[str, Any], *, actor: Actor | None = None) -> TeamSettings:
        """Check and save settings changes (ConfigError names a bad one); written to the audit log."""
        actor, _ = self._act(actor, "settings")
        unknown = sorted(set(changes) - set(TeamSettings.names()))
        if unknown:
            raise ConfigError(unknown[0], f"no such setting; settings: {', '.join(TeamSettings.names())}")
        merged = TeamSettings.parse({**self.team_settings().to_dict(), **changes})
        new = {k: getattr(merged, k) for k in changes}
        self.registry.save_settings(new, actor.name)
        self.audit(actor, "settings", detail=new)
        return merged


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
    if not changes:
        return cfg
    data = cfg.to_dict()
    for field, value in changes.items():
        set_dotted(data, field, value)
    return ExperimentConfig.from_dict(data)
