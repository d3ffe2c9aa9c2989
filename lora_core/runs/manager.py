"""`Runs`: the one object every caller goes through to create, watch, stop and remove runs (the CLI, the
dashboard's lora_ui layer, the worker, tests), in the manner of Ray Jobs' JobManager. It holds ONE registry for
one runs directory and the process backend that runs the workers.

    runs = Runs()                                  # $LORA_LAB_RUNS_DIR or ./runs
    run_id = runs.launch(cfg)                      # validated first; returns at once (QUEUED or RUNNING)
    runs.get(run_id).status                        # RunStatus; reconciled first, so a dead worker shows FAILED
    events = runs.metrics(run_id)                  # a list with .offset: runs.metrics(run_id, since=events.offset)
    runs.stop(run_id); runs.resume(run_id)

Readers that show status (`get`, `list`, `wait`) reconcile first unless told not to (`reconcile=False`: a plain
registry read with no side effects, which also never starts queued runs); when the disk is full they still
answer, from the registry as it is. Unknown run ids raise RunError. Destructive actions (stop, cancel, delete),
and every action on a run named by a browser's request, take a whole run id; the CLI's others also take a unique
prefix.

Actions take the `actor` who asks (lora_core.team.access.Actor; the dashboard passes the signed-in user). Without
one the caller is the CLI: the OS user, trusted. Each action checks the actor's role first, then writes the
outcome, a refusal included, to the audit log. The run records the actor as its `owner`.

Every launch (`launch`, `sweep`, `resume`) passes the same checks first (`_admit`), in this order: what a browser
request may read or run (data roots, hub allowlists, remote code: lora_core.team.policy) before any file is looked
at, so a refusal never tells whether a path outside exists; the concurrency limit is readable; the queue has room
(`launcher.max_queued` for the server, the actor's own cap for a dashboard user); the config's paths exist
(`prepare`); and the data, the model and the memory estimate pass `lora_core.preflight`. Nothing is created for a
config that fails.
"""
from __future__ import annotations

import os
import shutil
import threading
import time
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator

from .. import checks
from ..config import ConfigError, ExperimentConfig
from ..errors import RunError, StorageError
from ..team import access, policy
from ..team.access import AccessError, Actor
from ..team.settings import TeamSettings, team_settings
from . import files, launcher, layout, ray_jobs
from .layout import RunDir
from .ray_jobs import RayJobs
from .store import LOCAL, AuditEntry, Registry, RunRecord, RunStatus
from .sweep import sweep_configs

STREAM_CACHE_RUNS = 16  # metrics streams kept in memory for incremental reads (the dashboard's live runs)
WHOLE_ID_ACTIONS = frozenset({"stop", "cancel", "delete"})  # destructive: a unique prefix is not enough


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
        self._streams = _Streams()

    def __repr__(self) -> str:
        return f"Runs({str(self.root)!r})"

    # -- reading ---------------------------------------------------------------------------------------------
    def get(self, run_id: str, *, reconcile: bool = True, exact: bool = False) -> RunRecord:
        """A run's record (by id, or unique id prefix unless `exact`)."""
        if reconcile:
            self._look()
        return self.registry.get(run_id, exact=exact)

    def list(self, status: RunStatus | list[RunStatus] | None = None, sweep_id: str | None = None,
             parent_id: str | None = None, owner: str | None = None, backend: str | None = None, *,
             reconcile: bool = True) -> list[RunRecord]:
        """Runs newest first (QUEUED alone: in queue order), from the registry alone: no run file is read."""
        if reconcile:
            self._look()
        return self.registry.list(status=status, sweep_id=sweep_id, parent_id=parent_id, owner=owner, backend=backend)

    def notices(self) -> list[str]:
        """One line per thing this manager had to repair or could not do (a registry rebuilt, a full disk)."""
        return list(self.registry.notices)

    def reindex(self) -> str:
        """Rebuild the registry from the run directories (the old file is kept beside it); returns the notice."""
        return self.registry.reindex()

    def _look(self) -> None:
        """Reconcile before showing statuses; on a full disk show the registry as it is, with a notice."""
        try:
            self.reconcile()
        except StorageError as exc:
            self.registry.notify(f"statuses not updated: {exc}")

    def queue(self) -> list[RunRecord]:
        """QUEUED runs in the order they will start."""
        return self.registry.list(status=RunStatus.QUEUED)

    def dir(self, run_id: str) -> RunDir:
        """The run's directory layout (run_id may be a unique prefix)."""
        return RunDir(layout.run_path(self.root, self.registry.get(run_id).id))

    def config(self, run_id: str) -> ExperimentConfig:
        return ExperimentConfig.from_file(self.dir(run_id).config)

    def metrics(self, run_id: str, since: int = 0) -> Events:
        """Events appended after byte `since`, tolerant of a half-written or corrupt line. The whole stream
        (since=0) is kept per run and extended with what was appended since the last read, so a dashboard
        redrawing a long run every few seconds reads only the new lines."""
        path = self.dir(run_id).metrics
        if since:
            return Events(*files.read_events(path, since))
        return self._streams.read(path)

    def latest(self, run_id: str) -> dict:
        """{"last": the last log or eval event, "phase", "progress"} from the end of the metrics stream, read
        backwards until a log or eval event shows up: a status read costs the same at any stream length."""
        events = files.tail_events(self.dir(run_id).metrics,
                                   lambda evs: any(e.get("kind") in ("log", "eval") for e in evs))
        last = next((e for e in reversed(events) if e.get("kind") in ("log", "eval")), {})
        phase = next((e.get("phase") for e in reversed(events) if e.get("kind") == "phase"), None)
        progress = next((e["progress"] for e in reversed(events) if e.get("progress") is not None), None)
        return {"last": last, "phase": phase or ("training" if last else None), "progress": progress}

    def results(self, run_id: str) -> dict | None:
        """results.json, or None until the run has ended."""
        return files.read_json(self.dir(run_id).results)

    def log_tail(self, run_id: str, n: int = 50) -> str:
        """The last n lines of the run's log: worker.log (a cluster job writes it as it runs too), or what the
        Jobs API has of a job that has not written its first line there yet."""
        record = self.registry.get(run_id)
        if record.local or record.terminal or files.has_content(record.dir.log):
            return files.log_tail(record.dir.log, n)
        lines = self.backends[record.backend].logs(record).splitlines()
        return "\n".join(lines[-n:]) if n > 0 else ""

    def checkpoints(self, run_id: str) -> list[tuple[int, Path]]:
        """Complete Trainer checkpoints as (step, path), oldest first."""
        return self.dir(run_id).artifacts.complete_checkpoints()

    def resume_point(self, run_id: str) -> tuple[int, Path] | None:
        """Where a resume of this run would start: its newest complete checkpoint, else (a resumed run that
        died before saving one of its own) the complete checkpoint it was itself resumed from; None if neither."""
        own = self.checkpoints(run_id)
        if own:
            return own[-1]
        start = self.registry.get(run_id).resume_checkpoint
        if start is not None and layout.is_complete_checkpoint(start):
            step = start.name[len(layout.CHECKPOINT_PREFIX):]
            return (int(step), start) if step.isdigit() else None
        return None

    def follow_log(self, run_id: str, poll: float = 0.2) -> Iterator[str]:
        """Yield the worker log's lines as they are written, until the run has ended and the log is drained."""
        record = self.get(run_id)
        path = record.dir.log
        if not record.local:  # a cluster job starts its copy of the log once Ray has set it up (runs/job.py)
            poll = max(poll, 1.0)
            while not record.terminal and not files.has_content(path):
                time.sleep(poll)
                record = self.get(record.id)
            if not path.exists():
                return
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
               restarts: int | None = None, owner: str | None = None) -> RunRecord:
        """Create the run directory and its QUEUED row, without starting anything. The files are complete
        before the row exists, so no reader or launcher ever sees a half-made run. `initial_metrics` seeds the
        stream (a resumed run's inherited events); `owner` defaults to the OS user."""
        res = cfg.resources
        cluster = self.backends[res.backend].prepare(self.registry, cfg) if res.backend != LOCAL else None
        path = layout.run_path(self.root, layout.new_run_id(cfg.name))
        try:
            path.mkdir()
            rd = RunDir(path)
            rd.artifacts.path.mkdir()
            files.atomic_write(rd.config, cfg.to_yaml(), once=True)  # whole or absent, and never overwritten
            rd.metrics.touch()
            rd.log.touch()
            for event in initial_metrics or []:
                files.append_event(rd.metrics, event)
            record = RunRecord(
                id=rd.id, name=cfg.name, status=RunStatus.QUEUED, created=time.time(), task=cfg.task,
                model=cfg.model.source, method=cfg.method, lora_r=cfg.lora.r if cfg.uses_lora else None,
                sweep_id=sweep_id, parent_id=parent_id, restarts=restarts, runs_dir=str(self.root),
                owner=owner or access.os_user(), backend=res.backend, world_size=res.num_workers, cluster=cluster,
                resume_from=Path(resume_from).resolve().relative_to(self.root).as_posix() if resume_from else None)
            return self.registry.insert(record, queue_limit=launcher.max_queued())
        except OSError as exc:
            shutil.rmtree(path, ignore_errors=True)
            what = "no space left on device" if files.is_no_space(exc) else (exc.strerror or str(exc))
            raise StorageError(f"{what} while creating the run directory {path}") from None
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise

    def launch(self, cfg: ExperimentConfig | dict, *, sweep_id: str | None = None, ignore_memory: bool = False,
               actor: Actor | None = None) -> str:
        """Check (see the module docstring), create the run as QUEUED and start it if a slot is free. Returns the
        run id at once. `ignore_memory` launches a run whose memory estimate exceeds this machine's memory."""
        actor, _ = self._act(actor, "launch")
        (checked,) = self._admit(actor, [cfg], ignore_memory=ignore_memory)
        record = self.create(checked, sweep_id=sweep_id, owner=actor.name)
        self.audit(actor, "launch", record.id, detail={"name": checked.name})
        self.reconcile()
        return record.id

    def plan_sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list], seeds: int = 1, *,
                   actor: Actor | None = None) -> list[ExperimentConfig]:
        """The validated configs `sweep` would launch, without launching anything; for a browser's request, each
        config's paths are checked against the roots before prepare() looks at any file."""
        actor = actor or access.cli_actor()
        _, planned = self._plan(cfg, vary, seeds)
        team = self.team_settings()
        for c in planned:
            policy.check_config(c, actor, self.root, team)
        return [prepare(c) for c in planned]

    @staticmethod
    def _plan(cfg: ExperimentConfig | dict, vary: dict[str, list],
              seeds: int = 1) -> tuple[ExperimentConfig, list[ExperimentConfig]]:
        """The base config and a sweep's configs (each setting `seeds` times), validated but not prepare()d: no
        file has been looked at yet."""
        base = ExperimentConfig.from_dict(cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg))
        return base, sweep_configs(base, vary, seeds)

    def sweep(self, cfg: ExperimentConfig | dict, vary: dict[str, list], seeds: int = 1, *,
              ignore_memory: bool = False, actor: Actor | None = None) -> tuple[str, list[str]]:
        """Launch one run per sweep config (see sweep.sweep_configs; each setting `seeds` times), grouped under
        one sweep id. Every config is checked (for a browser's request, admitted first) before the first run is
        created; the sweep cap counts every run, seeds included."""
        actor, _ = self._act(actor, "sweep")
        base, planned = self._plan(cfg, vary, seeds)  # not prepare()d: _admit checks roots before reading files
        policy.check_sweep(actor, len(planned), self.team_settings())
        configs = self._admit(actor, planned, ignore_memory=ignore_memory)
        sweep_id = "sweep-" + layout.new_run_id(base.name)
        run_ids = [self.create(c, sweep_id=sweep_id, owner=actor.name).id for c in configs]
        self.audit(actor, "sweep", None, detail={"sweep_id": sweep_id, "runs": run_ids})
        self.reconcile()
        return sweep_id, run_ids

    def resume(self, run_id: str, *, ignore_memory: bool = False, actor: Actor | None = None) -> str:
        """Resume a STOPPED or FAILED run from its newest complete checkpoint (see `resume_point`) as a NEW run;
        returns its id.

        The old run keeps its final status (terminal states are final). The new run has the same config,
        `parent_id` = the old run, starts from the checkpoint, and its metrics stream begins with the old run's
        events up to the checkpoint step, so the step count and the curves continue. Its owner is the actor."""
        actor, record = self._act(actor, "resume", run_id)
        parent = self.get(record.id)
        if parent.status not in (RunStatus.STOPPED, RunStatus.FAILED):
            raise RunError(f"run {parent.id} is {parent.status}; only STOPPED or FAILED runs can be resumed")
        found = self.resume_point(parent.id)
        if found is None:
            raise RunError(f"run {parent.id} has no checkpoint to resume from (checkpoints are saved every "
                           "train.save_steps steps, at each evaluation, and when a run is stopped)")
        # admitted again, for this actor: the data may have changed, and their roots may differ from the owner's
        (cfg,) = self._admit(actor, [self.config(parent.id)], ignore_memory=ignore_memory)
        new_id = self._continue(parent, cfg, owner=actor.name)
        self.audit(actor, "resume", parent.id, detail={"new_run": new_id, "step": found[0]})
        self.reconcile()
        return new_id

    def _continue(self, parent: RunRecord, cfg: ExperimentConfig | None = None, restarts: int | None = None,
                  owner: str | None = None) -> str:
        """A new QUEUED run linked to `parent`, from its resume point (or from the start when it has none), its
        metrics beginning with the parent's events up to that step. Owned by `owner` (default: the parent's)."""
        step, checkpoint = self.resume_point(parent.id) or (0, None)
        inherited = [dict(e, inherited_from=parent.id) for e in self.metrics(parent.id)
                     if checkpoint and e.get("kind") != "phase" and isinstance(e.get("step"), (int, float))
                     and e["step"] <= step]
        return self.create(cfg or self.config(parent.id), parent_id=parent.id, sweep_id=parent.sweep_id,
                           resume_from=checkpoint, initial_metrics=inherited, restarts=restarts,
                           owner=owner or parent.owner).id

    def _restart_crashed(self, record: RunRecord, reason: str) -> None:
        """train.max_restarts: a run whose worker died continues as a linked run, if it has restarts left. Runs
        inside reconcile, which starts the new run right after."""
        try:
            limit = self.config(record.id).train.max_restarts
        except Exception:  # noqa: BLE001 - an unreadable config means no restart; the crash is recorded already
            return
        done = record.restarts or 0
        if done >= limit:
            return
        new_id = self._continue(record, restarts=done + 1)
        self.registry.update(record.id, error=f"{reason}; restarted automatically as {new_id} (restart "
                                              f"{done + 1} of {limit})")

    # -- Playground preferences --------------------------------------------------------------------------------
    def record_vote(self, winner: str | None, compared: list[str], prompt: str, *,
                    actor: Actor | None = None) -> dict:
        """A "which answer is better" choice between the answers of `compared` runs to one input (winner None:
        no difference), appended to the votes file of every compared run. Returns the vote."""
        actor, _ = self._act(actor, "vote")
        ids = [self.get(i, reconcile=False).id for i in dict.fromkeys(compared)]
        if len(ids) < 2:
            raise RunError("a preference compares the answers of at least two runs")
        if winner is not None:
            winner = self.get(winner, reconcile=False).id
            if winner not in ids:
                raise RunError(f"run {winner} is not one of the compared runs ({', '.join(ids)})")
        vote = {"time": time.time(), "winner": winner, "compared": ids, "prompt": prompt[:2000],
                "actor": actor.name}
        for run_id in ids:
            files.append_event(self.dir(run_id).votes, vote)
        self.audit(actor, "vote", None, detail={"winner": winner, "compared": ids})
        return vote

    def votes(self, run_id: str) -> dict:
        """{"wins", "comparisons", "ties"} of a run's Playground choices."""
        events, _ = files.read_events(self.dir(run_id).votes)
        me = self.get(run_id, reconcile=False).id
        return {"wins": sum(e.get("winner") == me for e in events), "comparisons": len(events),
                "ties": sum(e.get("winner") is None for e in events)}

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
        """Mark dead workers FAILED (restarting them as linked runs when train.max_restarts allows, on the run's
        own backend), escalate overdue stops, start queued runs into free slots; returns the ids of the runs it
        started."""
        return launcher.reconcile(self.registry, self.backends, on_crash=self._restart_crashed)

    def stop(self, run_id: str, timeout: float = 15.0, wait: bool = True, *, actor: Actor | None = None) -> RunStatus:
        """Graceful stop (the worker saves the adapter and a checkpoint), then kill after `timeout` s; a queued
        run is cancelled. Takes the whole run id. See launcher.stop."""
        actor, record = self._act(actor, "stop", run_id)
        self.audit(actor, "stop", record.id)
        return launcher.stop(self.registry, self.backends, record.id, timeout=timeout, wait=wait)

    def cancel(self, run_id: str, *, actor: Actor | None = None) -> RunStatus:
        """Cancel a QUEUED run (STOPPED, reason 'cancelled'); StatusError once it has started. Whole id only."""
        actor, record = self._act(actor, "cancel", run_id)
        status = launcher.cancel(self.registry, self.backends, record.id)
        self.audit(actor, "cancel", record.id)
        return status

    def move(self, run_id: str, position: int, *, actor: Actor | None = None) -> list[str]:
        """Reorder the queue: put a QUEUED run at `position` (0 = starts next). Returns the queue in order."""
        actor, record = self._act(actor, "move", run_id)
        queue = self.registry.move(record.id, position)
        self.audit(actor, "move", record.id, detail={"position": int(position)})
        return queue

    def delete(self, run_id: str, *, actor: Actor | None = None) -> None:
        """Remove a run's row and directory; refuses a RUNNING run (stop it first). Takes the whole run id: a
        prefix that happens to be unique today must not delete a run."""
        actor, record = self._act(actor, "delete", run_id)
        self._look()
        gone = self.registry.delete(record.id)
        if record.status == RunStatus.QUEUED:  # a job waiting on a cluster goes too
            launcher.backend_of(self.backends, record).cancelled(record)
        if gone is not None:
            shutil.rmtree(gone, ignore_errors=True)
        self.audit(actor, "delete", record.id)

    # -- who acts: permissions, admission, the audit log, server settings ----------------------------------------
    def _act(self, actor: Actor | None, action: str, run_id: str | None = None) -> tuple[Actor, RunRecord | None]:
        """The actor (the CLI's OS user when none is given) and the run, once the actor's role allows `action` on
        it. The run is looked up by its whole id for a destructive action and for any request from a browser (a
        prefix is the CLI's convenience). A refusal is written to the audit log, then raised as AccessError."""
        actor = actor or access.cli_actor()
        exact = action in WHOLE_ID_ACTIONS or not actor.trusted
        record = self.registry.get(run_id, exact=exact) if run_id is not None else None
        reason = access.denial(actor, action, record.owner if record else None)
        if reason:
            self.audit(actor, action, record.id if record else None, outcome="denied", detail={"reason": reason})
            raise AccessError(f"refused: {reason}")
        return actor, record

    def _admit(self, actor: Actor, configs: list, *, ignore_memory: bool = False) -> list[ExperimentConfig]:
        """The checks every launch passes before anything is created (see the module docstring for the order);
        returns the configs prepared for launching."""
        from .. import preflight  # reads data (pandas) and model configs: not for `list` and `status`

        team = self.team_settings()
        checked = [c if isinstance(c, ExperimentConfig) else ExperimentConfig.from_dict(c) for c in configs]
        for cfg in checked:  # before prepare(): its "file not found" would tell whether a path outside exists
            policy.check_config(cfg, actor, self.root, team)
        launcher.max_concurrent()  # a bad LORA_LAB_MAX_CONCURRENT is refused before a run is created
        room = launcher.max_queued() - self.registry.count(RunStatus.QUEUED)
        if len(checked) > room:
            raise RunError(f"the queue has room for {max(room, 0)} more runs (LORA_LAB_MAX_QUEUED="
                           f"{launcher.max_queued()}), not {len(checked)}; cancel some or wait for them to start")
        policy.check_queue(actor, self.registry, team, len(checked))
        prepared = [prepare(c) for c in checked]
        checker = preflight.Preflight()
        for cfg in prepared:  # a cluster's nodes, not this machine, hold a ray run's memory
            checker.check(cfg, ignore_memory=ignore_memory or cfg.resources.backend != LOCAL)
        return prepared

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
    any directory, possibly by another process draining the queue) reads the same files; hub ids must be
    well-formed. Links are kept as given (not resolved): a link's name carries the file's suffix."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else dict(cfg)
    return checks.with_local_paths(ExperimentConfig.from_dict(data))


class _Streams:
    """Whole metrics streams kept per run and extended with what was appended since the last read, for the
    STREAM_CACHE_RUNS most recently read runs. Readers get a list they may keep: it is never changed later."""

    def __init__(self):
        self._entries: OrderedDict[str, tuple[int, int, list]] = OrderedDict()  # path -> (inode, offset, events)
        self._lock = threading.Lock()

    def read(self, path: Path) -> Events:
        try:
            stat = os.stat(path)
        except OSError:
            return Events([], 0)
        with self._lock:
            inode, offset, events = self._entries.get(str(path), (stat.st_ino, 0, []))
        if inode != stat.st_ino or stat.st_size < offset:  # a different file under the same name
            inode, offset, events = stat.st_ino, 0, []
        if stat.st_size > offset:
            new, offset = files.read_events(path, offset)
            events = events + new
        with self._lock:
            self._entries[str(path)] = (inode, offset, events)
            self._entries.move_to_end(str(path))
            while len(self._entries) > STREAM_CACHE_RUNS:
                self._entries.popitem(last=False)
        return Events(events, offset)
