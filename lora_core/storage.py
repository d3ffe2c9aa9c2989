"""Run directories and the run registry. This is the only module that knows file names and the registry schema.

A run lives in `<runs>/<run_id>/`:

    config.yaml     the experiment config, written once when the run is created and never changed
    status.json     a human-readable mirror of the run's registry row, rewritten on every status change
    metrics.jsonl   the append-only event stream: one JSON object per line, flushed and fsync'd per event
    worker.log      the worker's stdout and stderr (a file, never a pipe: nothing has to drain it)
    results.json    the recipe's results, written once at the end
    artifacts/      what the recipe writes: adapter/ (or model/, head/), checkpoints/checkpoint-N/, ...

The registry `<runs>/registry.sqlite` indexes the runs so that listing them reads no run files. It runs in WAL
mode with a busy timeout; every call opens its own short-lived connection (Streamlit serves each session from its
own thread) and every write is one short `BEGIN IMMEDIATE` transaction, so several dashboards and workers can use
it at once without "database is locked". (WAL needs a local filesystem; do not put the runs dir on NFS.)

Run status is a state machine, enforced in exactly one place (`_transition`):

    QUEUED -> RUNNING -> SUCCEEDED | FAILED | STOPPED        (QUEUED -> STOPPED is a cancel)

Terminal states are final. A FAILED run always carries a reason (`error`) and the tail of its log (`error_log`).
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import secrets
import shutil
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from .errors import StatusError

QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = "QUEUED", "RUNNING", "SUCCEEDED", "FAILED", "STOPPED"
STATUSES = (QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED)
TERMINAL = frozenset({SUCCEEDED, FAILED, STOPPED})
_ALLOWED = {QUEUED: {RUNNING, STOPPED, FAILED}, RUNNING: {SUCCEEDED, FAILED, STOPPED}}

CONFIG_FILE = "config.yaml"
STATUS_FILE = "status.json"
METRICS_FILE = "metrics.jsonl"
LOG_FILE = "worker.log"
RESULTS_FILE = "results.json"
ARTIFACTS_DIR = "artifacts"
CHECKPOINTS_DIR = "checkpoints"
REGISTRY_FILE = "registry.sqlite"

RUN_ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,95}$")
SLUG_MAX = 40
LOG_TAIL_LINES = 40
_KEY_RESULTS_MAX = 64


# -- paths and ids ---------------------------------------------------------------------------------------------

def repo_root() -> Path:
    return Path(__file__).resolve().parent.parent


def default_runs_dir() -> Path:
    """$LORA_LAB_RUNS_DIR, else `runs/` in the repository root (beside the app)."""
    env = os.environ.get("LORA_LAB_RUNS_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else repo_root() / "runs"


def _runs(runs_dir: str | Path | None) -> Path:
    path = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def slugify(name: str) -> str:
    """A strict file-name-safe form of a user's run name: [a-z0-9-] only, length-capped, never empty."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "run"


def new_run_id(name: str, prefix: str = "") -> str:
    """`<slug>-<YYYYmmdd-HHMMSS>-<6 hex>`: readable, sortable, unique, and unable to contain a path separator."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    return f"{prefix}{slugify(name)}-{stamp}-{secrets.token_hex(3)}"


def _check_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.match(run_id):
        raise KeyError(f"invalid run id {run_id!r}: run ids use only a-z, 0-9 and '-'")
    return run_id


def _inside(runs_dir: Path, run_id: str) -> Path:
    """The run's directory, verified (after resolving links and '..') to sit directly in the runs dir."""
    path = (runs_dir / _check_id(run_id)).resolve()
    if path.parent != runs_dir.resolve():
        raise KeyError(f"run id {run_id!r} resolves outside the runs directory {runs_dir}")
    return path


@dataclasses.dataclass(frozen=True)
class RunDir:
    """The file layout of one run directory."""
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def status(self) -> Path:
        return self.path / STATUS_FILE

    @property
    def metrics(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def log(self) -> Path:
        return self.path / LOG_FILE

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def artifacts(self) -> Path:
        return self.path / ARTIFACTS_DIR

    @property
    def checkpoints(self) -> Path:
        return self.artifacts / CHECKPOINTS_DIR


def run_dir(run_id: str, runs_dir: str | Path | None = None) -> RunDir:
    return RunDir(_inside(_runs(runs_dir), run_id))


# -- the record ------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class RunRecord:
    """One registry row. Times are Unix seconds (float) or None."""
    id: str
    name: str
    status: str
    created: float
    started: float | None = None
    ended: float | None = None
    task: str | None = None
    model: str | None = None
    method: str | None = None
    rank: int | None = None
    results: dict = dataclasses.field(default_factory=dict)   # key results (scalars), see key_results()
    sweep_id: str | None = None
    parent_id: str | None = None
    resume_from: str | None = None    # checkpoint path relative to the runs dir
    pid: int | None = None
    pgid: int | None = None
    pid_created: float | None = None  # the worker's process start time, to tell a reused pid apart
    host: str | None = None
    slot: int | None = None           # which concurrency slot (and GPU) the run holds
    queue_pos: int | None = None
    heartbeat: float | None = None
    stop_requested: float | None = None
    stop_deadline: float | None = None  # when a stop escalates to killing the process group
    progress: float | None = None
    step: int | None = None
    error: str | None = None          # FAILED/STOPPED: the reason, one line
    error_log: str | None = None      # FAILED: the tail of worker.log when it failed
    runs_dir: str = ""

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    @property
    def dir(self) -> Path:
        return Path(self.runs_dir) / self.id

    @property
    def duration(self) -> float | None:
        if self.started is None:
            return None
        return (self.ended or time.time()) - self.started

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


_COLUMNS = [f.name for f in dataclasses.fields(RunRecord) if f.name != "runs_dir"]
_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL,
    created REAL NOT NULL, started REAL, ended REAL,
    task TEXT, model TEXT, method TEXT, rank INTEGER, results TEXT,
    sweep_id TEXT, parent_id TEXT, resume_from TEXT,
    pid INTEGER, pgid INTEGER, pid_created REAL, host TEXT, slot INTEGER, queue_pos INTEGER,
    heartbeat REAL, stop_requested REAL, stop_deadline REAL, progress REAL, step INTEGER,
    error TEXT, error_log TEXT
);
"""
_INDEXES = """
CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, queue_pos);
CREATE INDEX IF NOT EXISTS runs_by_created ON runs(created);
CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs(sweep_id);
CREATE INDEX IF NOT EXISTS runs_by_parent ON runs(parent_id);
"""
# Fields a caller may set besides status (status only changes through _transition).
_UPDATABLE = {"pid", "pgid", "pid_created", "host", "heartbeat", "stop_requested", "stop_deadline", "progress",
              "step", "results", "error", "error_log"}


def _record(row: sqlite3.Row, runs_dir: Path) -> RunRecord:
    data = dict(row)
    data["results"] = json.loads(data["results"]) if data.get("results") else {}
    return RunRecord(**data, runs_dir=str(runs_dir))


# -- the registry ----------------------------------------------------------------------------------------------

_READY: set[str] = set()


class Registry:
    """The SQLite index of the runs in one runs directory. Cheap to construct; holds no open connection."""

    def __init__(self, runs_dir: str | Path | None = None):
        self.runs_dir = _runs(runs_dir)
        self.path = self.runs_dir / REGISTRY_FILE
        key = str(self.path)
        if key not in _READY or not self.path.exists():
            self._init_schema()
            _READY.add(key)

    # connections: one per call, closed right after (threads and processes never share one)
    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(str(self.path), timeout=60.0, isolation_level=None, check_same_thread=False)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 60000")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        con = self._connect()
        try:
            yield con
        finally:
            con.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction. BEGIN IMMEDIATE takes the write lock up front, so two writers queue on
        the busy timeout instead of failing when a read lock would have to be upgraded."""
        con = self._connect()
        try:
            con.execute("BEGIN IMMEDIATE")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
        finally:
            con.close()

    def _init_schema(self) -> None:
        fresh = not self.path.exists()
        con = self._connect()
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.executescript("BEGIN IMMEDIATE;" + _SCHEMA + "COMMIT;")
            # a registry made by an older version gains the columns added since (all nullable)
            have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            for column in _COLUMNS:
                if column not in have:
                    try:
                        con.execute(f"ALTER TABLE runs ADD COLUMN {column}")
                    except sqlite3.OperationalError as exc:  # another process added it first
                        if "duplicate column" not in str(exc):
                            raise
            con.executescript("BEGIN IMMEDIATE;" + _INDEXES + "COMMIT;")
        finally:
            con.close()
        if fresh:
            self._import_orphans()

    def _import_orphans(self) -> None:
        """A lost or deleted registry is rebuilt from the runs' status.json files, so no run is ever lost."""
        for status_file in sorted(self.runs_dir.glob(f"*/{STATUS_FILE}")):
            try:
                data = json.loads(status_file.read_text(encoding="utf-8"))
                if data.get("id") != status_file.parent.name or data.get("status") not in STATUSES:
                    continue
                row = {c: data.get(c) for c in _COLUMNS}
                row["results"] = json.dumps(row["results"] or {})
                with self._write() as con:
                    con.execute(f"INSERT OR IGNORE INTO runs ({','.join(_COLUMNS)}) "
                                f"VALUES ({','.join('?' * len(_COLUMNS))})", [row[c] for c in _COLUMNS])
            except (OSError, ValueError, sqlite3.Error):
                continue

    # reads
    def get(self, run_id: str) -> RunRecord:
        _check_id(run_id)
        with self._read() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:  # a unique prefix is accepted too, like git and docker ids
                rows = con.execute("SELECT * FROM runs WHERE id LIKE ? LIMIT 2", (run_id + "%",)).fetchall()
                row = rows[0] if len(rows) == 1 else None
        if row is None:
            raise KeyError(f"unknown run id {run_id!r} in {self.runs_dir}")
        return _record(row, self.runs_dir)

    def list(self, status: str | list[str] | None = None, sweep_id: str | None = None,
             parent_id: str | None = None) -> list[RunRecord]:
        """Newest first; QUEUED-only listings come in queue order."""
        where, args = [], []
        statuses = [status] if isinstance(status, str) else list(status or [])
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        if sweep_id:
            where.append("sweep_id = ?")
            args.append(sweep_id)
        if parent_id:
            where.append("parent_id = ?")
            args.append(parent_id)
        order = "queue_pos, created" if statuses == [QUEUED] else "created DESC, id DESC"
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
        with self._read() as con:
            rows = con.execute(sql, args).fetchall()
        return [_record(r, self.runs_dir) for r in rows]

    def count(self, status: str) -> int:
        with self._read() as con:
            return con.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (status,)).fetchone()[0]

    # writes
    def insert(self, record: RunRecord) -> RunRecord:
        row = record.to_dict()
        row["results"] = json.dumps(row["results"] or {})
        with self._write() as con:
            if row["status"] == QUEUED and row["queue_pos"] is None:
                row["queue_pos"] = con.execute("SELECT COALESCE(MAX(queue_pos), -1) + 1 FROM runs").fetchone()[0]
            con.execute(f"INSERT INTO runs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})",
                        [row[c] for c in _COLUMNS])
        return self._mirror(record.id)

    def update(self, run_id: str, *, only_if_status: str | None = None, **fields: Any) -> bool:
        """Set non-status fields. Returns False when the run is not (any longer) in `only_if_status`."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise ValueError(f"cannot set {sorted(bad)} directly; status changes go through set_status()")
        if "results" in fields:
            fields["results"] = json.dumps(fields["results"] or {}, default=_jsonable)
        sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        args = [*fields.values(), run_id]
        if only_if_status:
            sql += " AND status = ?"
            args.append(only_if_status)
        with self._write() as con:
            return con.execute(sql, args).rowcount == 1

    def set_status(self, run_id: str, status: str, *, expect: str | None = None, **fields: Any) -> RunRecord:
        """Change the status; with `expect`, only if the run is still in that status (else StatusError)."""
        with self._write() as con:
            self._transition(con, run_id, status, fields, expect)
        return self._mirror(run_id)

    def _transition(self, con: sqlite3.Connection, run_id: str, new: str, fields: dict,
                    expect: str | None = None) -> None:
        """The one place a status changes. Runs inside the caller's write transaction, so check-and-set is
        atomic: two processes racing to end the same run cannot both succeed."""
        if new not in STATUSES:
            raise StatusError(f"unknown status {new!r}; allowed: {', '.join(STATUSES)}")
        row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise KeyError(f"unknown run id {run_id!r} in {self.runs_dir}")
        old = row[0]
        if expect is not None and old != expect:
            raise StatusError(f"run {run_id} is {old}, not {expect}")
        if new not in _ALLOWED.get(old, ()):
            raise StatusError(f"run {run_id} cannot go from {old} to {new}"
                              + (f" ({old} is final)" if old in TERMINAL else ""))
        bad = set(fields) - _UPDATABLE - {"slot", "started"}
        if bad:
            raise ValueError(f"cannot set {sorted(bad)} with a status change")
        now = time.time()
        values = dict(fields, status=new)
        if new == RUNNING:
            values.setdefault("started", now)
            values["queue_pos"] = None
        if new in TERMINAL:
            values["ended"] = now
            values["queue_pos"] = None
        if new == FAILED:
            values.setdefault("error", "failed (no reason given)")
            if not values.get("error_log"):
                values["error_log"] = log_tail_of(self.runs_dir / run_id / LOG_FILE, LOG_TAIL_LINES)
        if "results" in values:
            values["results"] = json.dumps(values["results"] or {}, default=_jsonable)
        con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                    [*values.values(), run_id])

    def claim_next(self, limit: int) -> RunRecord | None:
        """Atomically move the first QUEUED run to RUNNING if fewer than `limit` runs are RUNNING.

        The count and the claim happen in one BEGIN IMMEDIATE transaction, so any number of launchers, workers
        and dashboards reconciling at once never exceed the limit."""
        with self._write() as con:
            used = {r[0] for r in con.execute("SELECT slot FROM runs WHERE status = ?", (RUNNING,))}
            running = con.execute("SELECT COUNT(*) FROM runs WHERE status = ?", (RUNNING,)).fetchone()[0]
            if running >= limit:
                return None
            row = con.execute("SELECT id FROM runs WHERE status = ? ORDER BY queue_pos, created LIMIT 1",
                              (QUEUED,)).fetchone()
            if row is None:
                return None
            slot = next(s for s in range(limit + len(used) + 1) if s not in used)
            self._transition(con, row[0], RUNNING, {"slot": slot})
        return self._mirror(row[0])

    def heartbeat(self, run_id: str, progress: float | None = None, step: int | None = None) -> bool:
        """Record that the worker is alive; returns True when the worker should stop: someone asked for it,
        or the run is no longer RUNNING (e.g. force-stopped while its worker was still starting)."""
        with self._write() as con:
            fields = {"heartbeat": time.time()}
            if progress is not None:
                fields["progress"] = progress
            if step is not None:
                fields["step"] = step
            con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ? AND status = ?",
                        [*fields.values(), run_id, RUNNING])
            row = con.execute("SELECT stop_requested, status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is None or bool(row[0]) or row[1] != RUNNING

    def move(self, run_id: str, position: int) -> list[str]:
        """Put a QUEUED run at `position` (0 = next to start) and renumber the queue; returns the new order."""
        with self._write() as con:
            queue = [r[0] for r in con.execute("SELECT id FROM runs WHERE status = ? ORDER BY queue_pos, created",
                                               (QUEUED,))]
            if run_id not in queue:
                status = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                raise ValueError(f"run {run_id} is not queued" + (f" (it is {status[0]})" if status else
                                                                   " (unknown run id)"))
            queue.remove(run_id)
            queue.insert(max(0, min(int(position), len(queue))), run_id)
            base = con.execute("SELECT COALESCE(MIN(queue_pos), 0) FROM runs WHERE status = ?",
                               (QUEUED,)).fetchone()[0]
            for i, rid in enumerate(queue):
                con.execute("UPDATE runs SET queue_pos = ? WHERE id = ?", (base + i, rid))
        return queue

    def delete(self, run_id: str) -> None:
        """Remove the row; refuses a RUNNING run and a run whose checkpoint an unfinished resumed run needs."""
        with self._write() as con:
            row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise KeyError(f"unknown run id {run_id!r} in {self.runs_dir}")
            if row[0] == RUNNING:
                raise ValueError(f"run {run_id} is RUNNING; stop it first")
            child = con.execute("SELECT id FROM runs WHERE parent_id = ? AND status IN (?, ?) LIMIT 1",
                                (run_id, QUEUED, RUNNING)).fetchone()
            if child:
                raise ValueError(f"run {run_id} has a resumed run {child[0]} that still needs its checkpoint; "
                                 "stop or delete that run first")
            con.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def _mirror(self, run_id: str) -> RunRecord:
        """Rewrite status.json from the row (atomically), so a run dir describes itself without the registry."""
        record = self.get(run_id)
        path = self.runs_dir / run_id / STATUS_FILE
        if path.parent.is_dir():
            _atomic_write(path, json.dumps(record.to_dict(), indent=2, default=_jsonable))
        return record


# -- files -----------------------------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    """json.dumps fallback for numpy/torch scalars, paths and the like."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_event(path: Path, event: dict) -> None:
    """Append one event as one line with a single write() (O_APPEND), then fsync: a reader sees whole lines,
    and a crash loses at most the line being written."""
    line = (json.dumps(event, default=_jsonable, allow_nan=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_events(data: bytes) -> tuple[list[dict], int]:
    """Events from complete lines of `data` and the number of bytes consumed. A trailing partial line (still
    being written, or cut by a crash) is not consumed; a corrupt complete line is skipped."""
    end = data.rfind(b"\n") + 1
    events = []
    for line in data[:end].splitlines():
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if isinstance(event, dict):
            events.append(event)
    return events, end


def log_tail_of(path: Path, n: int = LOG_TAIL_LINES, max_bytes: int = 256_000) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - max_bytes))
            data = f.read()
    except OSError:
        return ""
    lines = data.decode("utf-8", errors="replace").splitlines()
    return "\n".join(lines[-n:]) if n > 0 else ""


def key_results(results: dict | None) -> dict:
    """The scalars of a results dict (top level, plus one level of nested dicts as `section.key`), for the
    registry so listings and comparisons need no file reads. Long strings and big structures stay in
    results.json only."""
    out: dict[str, Any] = {}

    def keep(key: str, value: Any) -> None:
        if len(out) >= _KEY_RESULTS_MAX:
            return
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = value if not (isinstance(value, float) and not math.isfinite(value)) else None
        elif isinstance(value, str) and len(value) <= 80:
            out[key] = value
        elif hasattr(value, "item"):
            keep(key, _jsonable(value))

    for key, value in (results or {}).items():
        if not isinstance(value, dict):
            keep(key, value)
    for key, value in (results or {}).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if not isinstance(v, (dict, list)):
                    keep(f"{key}.{sub}", v)
    return out


# -- the public, run-id based API ------------------------------------------------------------------------------

def create_run(cfg, runs_dir: str | Path | None = None, parent_id: str | None = None,
               sweep_id: str | None = None, *, resume_from: str | Path | None = None,
               initial_metrics: list[dict] | None = None) -> RunRecord:
    """Create the run directory and its QUEUED registry row. The files are complete before the row exists, so
    no reader or launcher ever sees a half-made run. `initial_metrics` seeds the stream (a resumed run's
    inherited events)."""
    runs = _runs(runs_dir)
    run_id = new_run_id(cfg.name)
    path = _inside(runs, run_id)
    path.mkdir()
    try:
        rd = RunDir(path)
        rd.artifacts.mkdir()
        with open(rd.config, "x", encoding="utf-8") as f:  # "x": written once, never overwritten
            f.write(cfg.to_yaml())
        rd.metrics.touch()
        rd.log.touch()
        for event in initial_metrics or []:
            append_event(rd.metrics, event)
        if resume_from is not None:
            resume_from = Path(resume_from).resolve().relative_to(runs).as_posix()
        record = RunRecord(id=run_id, name=cfg.name, status=QUEUED, created=time.time(), task=cfg.task,
                           model=cfg.model.source, method=cfg.method,
                           rank=cfg.lora.r if cfg.method in ("lora", "qlora") else None,
                           sweep_id=sweep_id, parent_id=parent_id, resume_from=resume_from, runs_dir=str(runs))
        return Registry(runs).insert(record)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def get_run(run_id: str, runs_dir: str | Path | None = None) -> RunRecord:
    return Registry(runs_dir).get(run_id)


def list_runs(runs_dir: str | Path | None = None, status: str | list[str] | None = None,
              sweep_id: str | None = None, parent_id: str | None = None) -> list[RunRecord]:
    """All runs (newest first) from the registry alone; no run files are read."""
    return Registry(runs_dir).list(status=status, sweep_id=sweep_id, parent_id=parent_id)


def set_status(run_id: str, status: str, runs_dir: str | Path | None = None, **fields: Any) -> RunRecord:
    """Change a run's status (the state machine refuses illegal moves with StatusError)."""
    return Registry(runs_dir).set_status(run_id, status, **fields)


def read_config(run_id: str, runs_dir: str | Path | None = None):
    from .config import ExperimentConfig

    rd = run_dir(get_run(run_id, runs_dir).id, runs_dir)
    return ExperimentConfig.from_file(rd.config)


def append_metrics(run_id: str, event: dict, runs_dir: str | Path | None = None) -> None:
    append_event(run_dir(run_id, runs_dir).metrics, event)


def read_metrics(run_id: str, runs_dir: str | Path | None = None) -> list[dict]:
    """Every event so far, tolerant of a half-written or corrupt line."""
    return read_metrics_since(run_id, 0, runs_dir)[0]


def read_metrics_since(run_id: str, offset: int = 0, runs_dir: str | Path | None = None
                       ) -> tuple[list[dict], int]:
    """Events appended after byte `offset`, and the offset to pass next time (for cheap live polling)."""
    path = run_dir(get_run(run_id, runs_dir).id, runs_dir).metrics
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    events, used = parse_events(data)
    return events, offset + used


def write_results(run_id: str, results: dict, runs_dir: str | Path | None = None) -> None:
    _atomic_write(run_dir(run_id, runs_dir).results, json.dumps(results, indent=2, default=_jsonable))


def read_results(run_id: str, runs_dir: str | Path | None = None) -> dict | None:
    path = run_dir(get_run(run_id, runs_dir).id, runs_dir).results
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def log_tail(run_id: str, n: int = 50, runs_dir: str | Path | None = None) -> str:
    return log_tail_of(run_dir(get_run(run_id, runs_dir).id, runs_dir).log, n)


def log_path(run_id: str, runs_dir: str | Path | None = None) -> Path:
    return run_dir(get_run(run_id, runs_dir).id, runs_dir).log


def artifacts_dir(run_id: str, runs_dir: str | Path | None = None) -> Path:
    return run_dir(get_run(run_id, runs_dir).id, runs_dir).artifacts


def checkpoints(run_id: str, runs_dir: str | Path | None = None) -> list[tuple[int, Path]]:
    """Complete Trainer checkpoints as (step, path), oldest first. A checkpoint cut off mid-save (no
    trainer_state.json yet) is left out."""
    root = run_dir(get_run(run_id, runs_dir).id, runs_dir).checkpoints
    found = []
    for path in root.glob("checkpoint-*") if root.is_dir() else []:
        step = path.name.rpartition("-")[2]
        if step.isdigit() and (path / "trainer_state.json").is_file():
            found.append((int(step), path))
    return sorted(found)


def resume_checkpoint(record: RunRecord) -> Path | None:
    """The checkpoint a resumed run starts from, as an absolute path."""
    return Path(record.runs_dir) / record.resume_from if record.resume_from else None


def delete_run(run_id: str, runs_dir: str | Path | None = None) -> None:
    """Remove a run's row and directory. Refuses RUNNING runs (stop them first)."""
    registry = Registry(runs_dir)
    record = registry.get(run_id)
    path = _inside(registry.runs_dir, record.id)
    registry.delete(record.id)
    shutil.rmtree(path, ignore_errors=True)


def this_host() -> str:
    return socket.gethostname()
