"""Run status, the run record, and the SQLite registry that indexes the runs: with team_store.py the only SQL in
LoRA Lab, and the only module that spells a status.

Run status is a state machine, enforced in exactly one place (`Registry._transition`):

    QUEUED -> RUNNING -> SUCCEEDED | FAILED | STOPPED        (QUEUED -> STOPPED is a cancel)

Terminal states are final. A FAILED run always carries a reason (`error`) and the tail of its log (`error_log`).
Every run records its `owner`: who launched it (the OS user for the CLI, the signed-in user in the dashboard).

The registry `<runs>/registry.sqlite` indexes the runs so that listing them reads no run files. It runs in WAL
mode with a busy timeout; every call opens its own short-lived connection (Streamlit serves each session from its
own thread) and every write is one short `BEGIN IMMEDIATE` transaction, so several dashboards and workers can use
it at once without "database is locked". (WAL needs a local filesystem; do not put the runs dir on NFS.)

The run directories are the truth; the registry is an index (each run dir's status.json mirrors its row, owner
included). A registry missing, empty or corrupt (found by SQLite, or by a quick check on a process's first open) is
moved aside, kept, and rebuilt from the run dirs with a one-line notice (`notices`, stderr); a run whose
status.json is damaged too is rebuilt from its config and results. A full disk is a `StorageError`, never a
sqlite3 error.

Beside the runs, the registry keeps what a shared server needs: the audit log, sign-in sessions and server
settings (team_store.py, the rest of the SQL). A rebuild re-creates those tables and copies over what it can read.
"""
from __future__ import annotations

import dataclasses
import fcntl
import functools
import json
import os
import sqlite3
import sys
import threading
import time
import urllib.parse
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Iterator

from ..errors import RunError, StatusError, StorageError
from . import files, layout
from .files import key_results
from .layout import RunDir
from .team_store import TEAM_SCHEMA, AuditEntry, TeamTables

__all__ = ["AuditEntry", "Registry", "RunRecord", "RunStatus", "key_results"]


class RunStatus(str, Enum):
    """Where a run is in its life. A str, so it compares equal to its name and serializes as one."""
    QUEUED = "QUEUED"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    def is_terminal(self) -> bool:
        return self in _TERMINAL

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, value: str) -> "RunStatus":
        try:
            return cls(value)
        except ValueError:
            raise StatusError(f"unknown status {value!r}; allowed: {', '.join(s.value for s in cls)}") from None


_TERMINAL = frozenset({RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED})
_TRANSITIONS = {RunStatus.QUEUED: {RunStatus.RUNNING, RunStatus.STOPPED, RunStatus.FAILED},
                RunStatus.RUNNING: {RunStatus.SUCCEEDED, RunStatus.FAILED, RunStatus.STOPPED}}


@dataclasses.dataclass
class RunRecord:
    """One registry row. Times are Unix seconds (float) or None."""
    id: str
    name: str
    status: RunStatus
    created: float
    started: float | None = None
    ended: float | None = None
    task: str | None = None
    model: str | None = None
    method: str | None = None
    lora_r: int | None = None         # cfg.lora.r for lora/qlora runs, None otherwise
    results: dict = dataclasses.field(default_factory=dict)   # key results (scalars), see key_results()
    sweep_id: str | None = None
    parent_id: str | None = None
    resume_from: str | None = None    # checkpoint path relative to the runs dir
    restarts: int | None = None       # automatic restarts after crashes before this run (train.max_restarts)
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
    backend: str | None = None        # resources.backend: local (also None: rows from before backends) or ray
    world_size: int | None = None     # training processes (resources.num_workers); slots it holds locally
    job_id: str | None = None         # ray: the Ray job's submission id
    cluster: str | None = None        # ray: the cluster address the job went to
    nodes: list = dataclasses.field(default_factory=list)   # where it trained: Ray node ids, or host names
    owner: str | None = None          # who launched it (the OS user for the CLI, the signed-in user in the dashboard)
    runs_dir: str = ""

    def __post_init__(self):
        self.status = RunStatus.parse(self.status)
        self.nodes = list(self.nodes or [])

    @property
    def local(self) -> bool:
        """Trained by worker processes on this machine (the local backend), not by a cluster."""
        return self.backend in (None, LOCAL)

    @property
    def slots(self) -> int:
        """How many of the local concurrency slots the run holds: one per training process."""
        return max(1, self.world_size or 1)

    @property
    def terminal(self) -> bool:
        return self.status.is_terminal()

    @property
    def dir(self) -> RunDir:
        return RunDir(Path(self.runs_dir) / self.id)

    @property
    def resume_checkpoint(self) -> Path | None:
        """The checkpoint a resumed run starts from, as an absolute path."""
        return Path(self.runs_dir) / self.resume_from if self.resume_from else None

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
    id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, step INTEGER,
    created REAL NOT NULL, started REAL, ended REAL, task TEXT, model TEXT, method TEXT, lora_r INTEGER, results TEXT,
    sweep_id TEXT, parent_id TEXT, resume_from TEXT, restarts INTEGER, pid INTEGER, pgid INTEGER, pid_created REAL,
    host TEXT, slot INTEGER, queue_pos INTEGER, heartbeat REAL, stop_requested REAL, stop_deadline REAL, progress REAL,
    error TEXT, error_log TEXT, backend TEXT, world_size INTEGER, job_id TEXT, cluster TEXT, nodes TEXT, owner TEXT
)"""
_INDEXES = [
    "CREATE INDEX IF NOT EXISTS runs_by_status ON runs(status, queue_pos)",
    "CREATE INDEX IF NOT EXISTS runs_by_created ON runs(created)",
    "CREATE INDEX IF NOT EXISTS runs_by_sweep ON runs(sweep_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_parent ON runs(parent_id)",
    "CREATE INDEX IF NOT EXISTS runs_by_owner ON runs(owner, status)",
]
_RENAMED = {"rank": "lora_r"}  # old column -> new column (registries written before the rename)
# Fields a caller may set besides status (status only changes through _transition).
_UPDATABLE = {"pid", "pgid", "pid_created", "host", "heartbeat", "stop_requested", "stop_deadline", "progress",
              "step", "results", "error", "error_log", "job_id", "cluster", "nodes"}
_JSON = {"results": dict, "nodes": list}  # columns stored as JSON text, and what an empty one reads as
LOCAL = "local"  # the backend of worker processes on this machine (config.BACKENDS)
_BACKEND_IS = f"COALESCE(backend, '{LOCAL}') = ?"  # rows from before backends existed are local


def _record(row: sqlite3.Row, runs_dir: Path) -> RunRecord:
    data = dict(row)
    for column, empty in _JSON.items():
        data[column] = json.loads(data[column]) if data.get(column) else empty()
    return RunRecord(**data, runs_dir=str(runs_dir))


def _dumps(fields: dict) -> dict:
    """The JSON columns of `fields` as text, as SQLite stores them."""
    return {k: json.dumps(v or _JSON[k](), default=files.jsonable) if k in _JSON else v for k, v in fields.items()}


def _row(record: RunRecord) -> list:
    data = _dumps(record.to_dict())
    data["status"] = record.status.value
    return [data[c] for c in _COLUMNS]


_READY: set[str] = set()  # registries this process has already created or brought up to date
_INSERT = f"INSERT INTO runs ({','.join(_COLUMNS)}) VALUES ({','.join('?' * len(_COLUMNS))})"
_THREAD = threading.local()       # .immutable: this thread reads a registry it cannot write (see _reading)
_CORRUPT_CODES = {11, 26}        # SQLITE_CORRUPT, SQLITE_NOTADB: the file is damaged; rebuild it
_FULL_CODES = {13}               # SQLITE_FULL
_IO_CODES = {10, 13, 14}         # SQLITE_IOERR, SQLITE_FULL, SQLITE_CANTOPEN: the disk, not the file, is the problem
CREATE_GRACE_S = 60.0            # a run dir without status.json younger than this may still be being created


class _Damaged(sqlite3.DatabaseError):
    """Damage SQLite itself does not report: an empty file, a failed quick check."""


def _damaged(exc: sqlite3.Error) -> bool:
    if isinstance(exc, _Damaged) or "no such table: runs" in str(exc):  # the file was replaced under us
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _CORRUPT_CODES
    text = str(exc).lower()
    return "not a database" in text or "malformed" in text


def _guarded(method: Callable) -> Callable:
    """A registry call that survives a damaged registry (moved aside, rebuilt, the call tried once more) and
    turns a full disk or an I/O error into a StorageError naming the file."""
    @functools.wraps(method)
    def call(self: "Registry", *args, **kwargs):
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            if not _damaged(exc):
                raise self._storage_error(exc) from None
            self.recover(str(exc))
        try:
            return method(self, *args, **kwargs)
        except sqlite3.DatabaseError as exc:
            raise self._storage_error(exc) from None
    return call


def _reading(method: Callable) -> Callable:
    """A guarded read that still answers when the registry cannot be written (a full disk: SQLite's WAL mode
    needs to write its shared-memory file even to read): the file is then read as it is on disk, immutable."""
    guarded = _guarded(method)

    @functools.wraps(method)
    def call(self: "Registry", *args, **kwargs):
        try:
            return guarded(self, *args, **kwargs)
        except StorageError:
            if getattr(_THREAD, "immutable", False) or not self.path.exists():
                raise
        _THREAD.immutable = True
        try:
            return guarded(self, *args, **kwargs)
        finally:
            _THREAD.immutable = False
    return call


# -- the registry ----------------------------------------------------------------------------------------------

class Registry(TeamTables):
    """The SQLite index of the runs in one runs directory, and the team's tables beside it (team_store). Holds no
    open connection, so one instance can serve any number of threads."""

    def __init__(self, runs_dir: str | Path | None = None):
        self.runs_dir = layout.runs_root(runs_dir)
        self.path = layout.registry_path(self.runs_dir)
        self.notices: list[str] = []  # one line per registry rebuilt by this object
        self._ensure_schema()

    # connections: one per call, closed right after (threads and processes never share one)
    def _open(self) -> sqlite3.Connection:
        target, uri = str(self.path), False
        if getattr(_THREAD, "immutable", False):  # no locks, no WAL: the main file as it is on disk
            target, uri = f"file:{urllib.parse.quote(str(self.path))}?immutable=1", True
        con = sqlite3.connect(target, timeout=60.0, isolation_level=None, check_same_thread=False, uri=uri)
        con.row_factory = sqlite3.Row
        con.execute("PRAGMA busy_timeout = 60000")
        con.execute("PRAGMA synchronous = NORMAL")
        return con

    def _connect(self) -> sqlite3.Connection:
        if not getattr(_THREAD, "immutable", False):
            self._ensure_schema()
        return self._open()

    def _ensure_schema(self) -> None:
        """On a process's first look (and whenever the file has gone): check the file, create or migrate the
        table, and index run directories the registry lacks; a damaged file is moved aside and rebuilt. Under
        the registry lock, so creating, checking and rebuilding never interleave across processes."""
        if str(self.path) in _READY and self.path.exists():
            return
        with self._locked():
            missing = not self.path.exists()
            try:
                if not missing:
                    self._check_integrity()
                self._init_schema()
                _READY.add(str(self.path))
                count = self._import_runs()
            except sqlite3.DatabaseError as exc:
                _READY.discard(str(self.path))
                if not missing and (getattr(exc, "sqlite_errorcode", 0) or 0) & 0xFF in _IO_CODES:
                    return  # a full disk (no room for SQLite's -shm even to check): reads use the file as is
                if not _damaged(exc):
                    raise self._storage_error(exc) from None
                self._rebuild_damaged(str(exc))
                return
        if missing and count:
            self.notify(f"the run registry was missing; rebuilt it from {count} run directories")

    def _check_integrity(self) -> None:
        """_Damaged unless the file is a readable registry (an empty file would pass as a new database)."""
        if self.path.stat().st_size == 0:
            raise _Damaged("the file is empty (0 bytes)")
        con = self._open()
        try:
            row = con.execute("PRAGMA quick_check(1)").fetchone()
            if not row or row[0] != "ok":
                raise _Damaged(f"database disk image is malformed (quick_check: {row and row[0]})")
            con.execute("SELECT COUNT(*) FROM runs").fetchone()  # "no such table": not our registry (any more)
        finally:
            con.close()

    def _storage_error(self, exc: sqlite3.Error) -> StorageError:
        code = getattr(exc, "sqlite_errorcode", 0) or 0
        if code & 0xFF in _FULL_CODES or files.is_no_space(exc):
            return StorageError(f"no space left on device while writing the run registry {self.path}; free "
                                f"space there ({files.free_bytes(self.runs_dir) or 0:,} bytes free)")
        return StorageError(f"the run registry {self.path} cannot be used: {exc}")

    # -- recovery: the run directories are the truth -------------------------------------------------------------
    def recover(self, reason: str) -> str | None:
        """Move a damaged registry aside (kept, never deleted) and rebuild it from the run directories; returns the
        notice, or None when another process had already repaired it. Serialized across processes by a lock
        file, and the damage is checked again under the lock, so two processes never rebuild twice."""
        with self._locked():
            try:
                self._check_integrity()
                return None
            except (OSError, sqlite3.Error):
                return self._rebuild_damaged(reason)

    def _rebuild_damaged(self, reason: str) -> str:
        aside, count, carried = self._rebuild("broken")
        return self.notify(f"the run registry was unreadable ({reason.splitlines()[0][:120]}); "
                           + (f"moved it aside to {aside.name} and " if aside else "")
                           + f"rebuilt it from {count} run directories" + carried)

    def reindex(self) -> str:
        """Rebuild the registry from the run directories on demand; the old file is moved aside and kept."""
        with self._locked():
            aside, count, carried = self._rebuild("reindexed")
        return self.notify(f"rebuilt the run registry from {count} run directories"
                           + (f"; the old one is kept as {aside.name}" if aside else "") + carried)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        with open(layout.registry_lock(self.runs_dir), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _rebuild(self, why: str) -> tuple[Path | None, int, str]:
        """Move the registry file (and its -wal/-shm) aside, index every run directory into a new one, and copy
        over the tables the run dirs hold no copy of; returns (the file aside, runs indexed, what was carried)."""
        aside = layout.registry_aside(self.runs_dir, why) if self.path.exists() else None
        for part, kept in zip([self.path, *layout.sqlite_companions(self.path)],
                              [aside, *layout.sqlite_companions(aside)] if aside else []):
            if part.exists():
                os.replace(part, kept)
        _READY.discard(str(self.path))
        self._init_schema()
        _READY.add(str(self.path))
        count = self._import_runs()
        return aside, count, self._carry_over(aside) if aside else ""

    def notify(self, notice: str) -> str:
        """Keep a one-line notice for callers (the dashboard shows them) and print it on stderr, once."""
        if notice not in self.notices:
            self.notices.append(notice)
            print(f"lora-lab: {notice}", file=sys.stderr, flush=True)
        return notice

    def _import_runs(self) -> int:
        """Index every run directory the registry does not have (all of them after a rebuild), in one
        transaction. Returns how many runs the registry now holds. Deletes rename a run dir away inside their
        own transaction, so a run being deleted is never brought back."""
        with self._write() as con:
            have = {row[0] for row in con.execute("SELECT id FROM runs")}
            for rd in layout.run_dirs(self.runs_dir):
                if rd.id in have:
                    continue
                record = self._record_from_dir(rd)
                if record is not None:
                    con.execute(_INSERT.replace("INSERT", "INSERT OR IGNORE", 1), _row(record))
                    have.add(rd.id)
            return len(have)

    def _record_from_dir(self, rd: RunDir) -> RunRecord | None:
        """A run's row from its status.json mirror; when that is damaged, from its config and results."""
        data = files.read_json(rd.status)
        if isinstance(data, dict) and data.get("id") == rd.id:
            for old, new in _RENAMED.items():  # a mirror written before a column was renamed
                data.setdefault(new, data.get(old))
            try:
                record = RunRecord(**{c: data.get(c) for c in _COLUMNS}, runs_dir=str(self.runs_dir))
                record.results = record.results if isinstance(record.results, dict) else {}
                return record
            except (ValueError, TypeError):
                pass
        try:
            made = rd.config.stat().st_mtime
        except OSError:
            return None  # not a run (or one being created: its config comes first)
        if not rd.status.exists() and time.time() - made < CREATE_GRACE_S:
            return None  # status.json is written right after the row: this run may be being created now
        from .rebuild import record_from_files  # it builds RunRecords: imported here, not in a cycle
        return record_from_files(rd, made, str(self.runs_dir))

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
        """Create the table, or bring a registry made by an older version up to date (renamed and added
        columns), in one transaction so concurrent processes migrate it once."""
        con = self._open()
        try:
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("BEGIN IMMEDIATE")
            con.execute(_SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(runs)")}
            for old, new in _RENAMED.items():
                if old in have and new not in have:
                    con.execute(f"ALTER TABLE runs RENAME COLUMN {old} TO {new}")
                    have = (have - {old}) | {new}
            for column in _COLUMNS:  # all nullable
                if column not in have:
                    con.execute(f"ALTER TABLE runs ADD COLUMN {column}")
            for index in _INDEXES + TEAM_SCHEMA:
                con.execute(index)
            con.execute("COMMIT")
        finally:
            con.close()

    # reads
    @_reading
    def get(self, run_id: str, *, exact: bool = False) -> RunRecord:
        """A run by id, or (unless `exact`: destructive actions) by a unique prefix of its id, like git's."""
        layout.check_run_id(run_id)
        with self._read() as con:
            row = con.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
            rows = [] if row is not None else \
                con.execute("SELECT * FROM runs WHERE id LIKE ? LIMIT 2", (run_id + "%",)).fetchall()
        if row is None and len(rows) == 1 and not exact:
            row = rows[0]
        if row is None:
            hint = f"; did you mean {rows[0]['id']}? (this action takes the whole id)" if len(rows) == 1 else ""
            raise RunError(f"unknown run id {run_id!r} in {self.runs_dir}{hint}")
        return _record(row, self.runs_dir)

    @_reading
    def list(self, status: RunStatus | list[RunStatus] | None = None, sweep_id: str | None = None,
             parent_id: str | None = None, backend: str | None = None, owner: str | None = None) -> list[RunRecord]:
        """Newest first; QUEUED-only listings come in queue order."""
        where, args = [], []
        if owner:
            where.append("owner = ?")
            args.append(owner)
        statuses = [RunStatus.parse(s) for s in ([status] if isinstance(status, str) else status or [])]
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += [s.value for s in statuses]
        if sweep_id:
            where.append("sweep_id = ?")
            args.append(sweep_id)
        if parent_id:
            where.append("parent_id = ?")
            args.append(parent_id)
        if backend:
            where.append(_BACKEND_IS)
            args.append(backend)
        order = "queue_pos, created" if statuses == [RunStatus.QUEUED] else "created DESC, id DESC"
        sql = "SELECT * FROM runs" + (" WHERE " + " AND ".join(where) if where else "") + f" ORDER BY {order}"
        with self._read() as con:
            rows = con.execute(sql, args).fetchall()
        return [_record(r, self.runs_dir) for r in rows]

    @_reading
    def count(self, status: RunStatus | list[RunStatus], owner: str | None = None) -> int:
        statuses = [RunStatus.parse(s).value for s in ([status] if isinstance(status, str) else status)]
        sql = f"SELECT COUNT(*) FROM runs WHERE status IN ({','.join('?' * len(statuses))})"
        if owner is not None:
            sql += " AND owner = ?"
            statuses.append(owner)
        with self._read() as con:
            return con.execute(sql, statuses).fetchone()[0]

    # writes
    @_guarded
    def insert(self, record: RunRecord, *, queue_limit: int | None = None) -> RunRecord:
        """Add a run's row. With `queue_limit`, a QUEUED run is refused (RunError) when that many are queued
        already; counted inside the write transaction, so concurrent launchers cannot overshoot it."""
        with self._write() as con:
            if record.status == RunStatus.QUEUED and queue_limit is not None:
                queued = con.execute("SELECT COUNT(*) FROM runs WHERE status = ?",
                                     (RunStatus.QUEUED.value,)).fetchone()[0]
                if queued >= queue_limit:
                    raise RunError(f"the queue is full: {queued} runs are waiting (at most {queue_limit}, "
                                   "LORA_LAB_MAX_QUEUED); cancel some or wait for them to start")
            if record.status == RunStatus.QUEUED and record.queue_pos is None:
                record = dataclasses.replace(record, queue_pos=con.execute(
                    "SELECT COALESCE(MAX(queue_pos), -1) + 1 FROM runs").fetchone()[0])
            con.execute(_INSERT, _row(record))
        return self._mirror(record.id)

    @_guarded
    def update(self, run_id: str, *, only_if_status: RunStatus | None = None, **fields: Any) -> bool:
        """Set non-status fields. Returns False when the run is not (any longer) in `only_if_status`."""
        bad = set(fields) - _UPDATABLE
        if bad:
            raise RunError(f"cannot set {sorted(bad)} directly; status changes go through set_status()")
        fields = _dumps(fields)
        sql = f"UPDATE runs SET {', '.join(f'{k} = ?' for k in fields)} WHERE id = ?"
        args = [*fields.values(), run_id]
        if only_if_status:
            sql += " AND status = ?"
            args.append(only_if_status.value)
        with self._write() as con:
            return con.execute(sql, args).rowcount == 1

    @_guarded
    def set_status(self, run_id: str, status: RunStatus, *, expect: RunStatus | None = None,
                   **fields: Any) -> RunRecord:
        """Change the status; with `expect`, only if the run is still in that status (else StatusError)."""
        with self._write() as con:
            self._transition(con, run_id, RunStatus.parse(status), fields, expect)
        return self._mirror(run_id)

    def _transition(self, con: sqlite3.Connection, run_id: str, new: RunStatus, fields: dict,
                    expect: RunStatus | None = None) -> None:
        """The one place a status changes. Runs inside the caller's write transaction, so check-and-set is
        atomic: two processes racing to end the same run cannot both succeed."""
        row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise RunError(f"unknown run id {run_id!r} in {self.runs_dir}")
        old = RunStatus(row[0])
        if expect is not None and old != expect:
            raise StatusError(f"run {run_id} is {old}, not {expect}")
        if new not in _TRANSITIONS.get(old, ()):
            raise StatusError(f"run {run_id} cannot go from {old} to {new}"
                              + (f" ({old} is final)" if old.is_terminal() else ""))
        bad = set(fields) - _UPDATABLE - {"slot", "started"}
        if bad:
            raise RunError(f"cannot set {sorted(bad)} with a status change")
        now = time.time()
        values = dict(fields, status=new.value)
        if new == RunStatus.RUNNING:
            values.setdefault("started", now)
            values["queue_pos"] = None
        if new.is_terminal():
            values["ended"] = now
            values["queue_pos"] = None
        if new == RunStatus.FAILED:
            values.setdefault("error", "failed (no reason given)")
            if not values.get("error_log"):
                values["error_log"] = files.log_tail(RunDir(self.runs_dir / run_id).log)
        values = _dumps(values)
        con.execute(f"UPDATE runs SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                    [*values.values(), run_id])

    @_guarded
    def claim_next(self, limit: int) -> RunRecord | None:
        """Atomically move the first local QUEUED run to RUNNING if its slots are free: a run of N training
        processes holds N slots (slot..slot+N-1: a multi-GPU run gets N GPUs); one wider than the limit starts
        only when no other local run is running. Other backends queue on their cluster. Count and claim share
        one BEGIN IMMEDIATE transaction, so any number of reconcilers at once never exceed the limit."""
        running, queued = RunStatus.RUNNING.value, RunStatus.QUEUED.value
        with self._write() as con:
            busy = [(slot, max(1, width or 1)) for slot, width in con.execute(
                f"SELECT slot, world_size FROM runs WHERE status = ? AND {_BACKEND_IS}", (running, LOCAL))]
            row = con.execute(f"SELECT id, world_size FROM runs WHERE status = ? AND {_BACKEND_IS} "
                              "ORDER BY queue_pos, created LIMIT 1", (queued, LOCAL)).fetchone()
            if row is None:
                return None
            need = max(1, row[1] or 1)
            if busy and sum(width for _, width in busy) + need > limit:
                return None
            used = {slot + i for slot, width in busy if slot is not None for i in range(width)}
            slot = next(s for s in range(limit + len(used) + 1) if not used & set(range(s, s + need)))
            self._transition(con, row[0], RunStatus.RUNNING, {"slot": slot})
        return self._mirror(row[0])

    @_guarded
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
                        [*fields.values(), run_id, RunStatus.RUNNING.value])
            row = con.execute("SELECT stop_requested, status FROM runs WHERE id = ?", (run_id,)).fetchone()
        return row is None or bool(row[0]) or row[1] != RunStatus.RUNNING

    @_guarded
    def move(self, run_id: str, position: int) -> list[str]:
        """Put a QUEUED run at `position` (0 = next to start) and renumber the queue; returns the new order."""
        queued = RunStatus.QUEUED.value
        with self._write() as con:
            queue = [r[0] for r in con.execute("SELECT id FROM runs WHERE status = ? ORDER BY queue_pos, created",
                                               (queued,))]
            if run_id not in queue:
                status = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
                raise RunError(f"run {run_id} is not queued" + (f" (it is {status[0]})" if status else
                                                                 " (unknown run id)"))
            queue.remove(run_id)
            queue.insert(max(0, min(int(position), len(queue))), run_id)
            base = con.execute("SELECT COALESCE(MIN(queue_pos), 0) FROM runs WHERE status = ?",
                               (queued,)).fetchone()[0]
            for i, rid in enumerate(queue):
                con.execute("UPDATE runs SET queue_pos = ? WHERE id = ?", (base + i, rid))
        return queue

    @_guarded
    def delete(self, run_id: str) -> Path | None:
        """Remove the row and rename the run directory out of the way, in one transaction (so a rebuild running
        at the same time cannot bring it back); returns the renamed folder for the caller to remove. Refuses a
        RUNNING run and a run whose checkpoint an unfinished resumed run needs."""
        with self._write() as con:
            row = con.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is None:
                raise RunError(f"unknown run id {run_id!r} in {self.runs_dir}")
            if row[0] == RunStatus.RUNNING:
                raise RunError(f"run {run_id} is RUNNING; stop it first")
            child = con.execute("SELECT id FROM runs WHERE parent_id = ? AND status IN (?, ?) LIMIT 1",
                                (run_id, RunStatus.QUEUED.value, RunStatus.RUNNING.value)).fetchone()
            if child:
                raise RunError(f"run {run_id} has a resumed run {child[0]} that still needs its checkpoint; "
                               "stop or delete that run first")
            folder = layout.run_path(self.runs_dir, run_id)
            gone = layout.tombstone(self.runs_dir, run_id) if folder.is_dir() else None
            if gone is not None:
                folder.rename(gone)
            try:
                con.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            except BaseException:
                if gone is not None:
                    gone.rename(folder)
                raise
        return gone

    # the team's tables (team_store.TeamTables), guarded like every other call
    audit = _guarded(TeamTables.audit)
    audit_log = _reading(TeamTables.audit_log)
    count_audit = _reading(TeamTables.count_audit)
    open_session = _guarded(TeamTables.open_session)
    session = _reading(TeamTables.session)
    end_sessions = _guarded(TeamTables.end_sessions)
    settings = _reading(TeamTables.settings)
    save_settings = _guarded(TeamTables.save_settings)

    def _mirror(self, run_id: str) -> RunRecord:
        """Rewrite status.json from the row (atomically), so a run dir describes itself without the registry.
        Best effort: the row is committed already, and a full disk must not turn a recorded end into an error."""
        record = self.get(run_id)
        if record.dir.path.is_dir():
            try:
                files.write_json(record.dir.status, record.to_dict())
            except OSError as exc:
                print(f"lora-lab: could not write {record.dir.status}: {exc}", file=sys.stderr, flush=True)
        return record
