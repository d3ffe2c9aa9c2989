"""The registry's team tables (a part of store.Registry, kept apart for length): the audit log (who did what to
which run, and every sign-in; append-only, enforced by SQLite triggers), sign-in sessions of local accounts, and
the server settings an admin changes. Beside store.py, the only SQL in LoRA Lab.

These have no copy in the run directories, so when the registry is rebuilt from them (store.Registry._rebuild)
the new file gets the tables and triggers again, and the rows the old file still gives up are copied over;
whatever cannot be read is said in the rebuild's notice (one line, stderr), never dropped silently, and stays in
the file moved aside.
"""
from __future__ import annotations

import dataclasses
import json
import sqlite3
import time
import urllib.parse
from pathlib import Path
from typing import Any


@dataclasses.dataclass
class AuditEntry:
    """One line of the audit log: who (actor, role, via), when (at, Unix seconds), what (action, run_id, detail),
    how it ended (outcome: ok, denied or failed), and from where (client address, sign-in session)."""
    actor: str
    action: str
    run_id: str | None = None
    outcome: str = "ok"
    detail: dict = dataclasses.field(default_factory=dict)
    role: str | None = None
    via: str | None = None
    client: str | None = None
    session: str | None = None
    at: float = dataclasses.field(default_factory=time.time)
    id: int | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


AUDIT_COLUMNS = [f.name for f in dataclasses.fields(AuditEntry) if f.name != "id"]
TEAM_SCHEMA = [
    """CREATE TABLE IF NOT EXISTS audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT, at REAL NOT NULL, actor TEXT NOT NULL, role TEXT, via TEXT,
        action TEXT NOT NULL, run_id TEXT, outcome TEXT NOT NULL, detail TEXT, client TEXT, session TEXT)""",
    "CREATE INDEX IF NOT EXISTS audit_by_action ON audit(action, at)",
    "CREATE INDEX IF NOT EXISTS audit_by_session ON audit(session, action)",
    "CREATE TRIGGER IF NOT EXISTS audit_no_update BEFORE UPDATE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    "CREATE TRIGGER IF NOT EXISTS audit_no_delete BEFORE DELETE ON audit "
    "BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END",
    """CREATE TABLE IF NOT EXISTS sessions (
        id TEXT PRIMARY KEY, user TEXT NOT NULL, created REAL NOT NULL, expires REAL NOT NULL, ended REAL,
        client TEXT)""",
    "CREATE TABLE IF NOT EXISTS settings (key TEXT PRIMARY KEY, value TEXT NOT NULL, updated REAL, by TEXT)",
]
CARRIED = ("audit", "sessions", "settings")  # kept only in the registry: a rebuild copies them from the old file


class TeamTables:
    """store.Registry's calls on the team tables (it supplies _read, _write and notify, and guards each call)."""

    def audit(self, entry: AuditEntry, *, once: bool = False) -> bool:
        """Append to the audit log. With `once`, only if no entry of this action has this session yet (a sign-in
        is recorded once however many tabs open). Returns whether a line was written."""
        values = [json.dumps(entry.detail, default=str) if c == "detail" else getattr(entry, c)
                  for c in AUDIT_COLUMNS]
        sql = f"INSERT INTO audit ({','.join(AUDIT_COLUMNS)}) SELECT {','.join('?' * len(AUDIT_COLUMNS))}"
        if once:
            sql += " WHERE NOT EXISTS (SELECT 1 FROM audit WHERE action = ? AND session = ?)"
            values += [entry.action, entry.session]
        with self._write() as con:
            return con.execute(sql, values).rowcount == 1

    def audit_log(self, limit: int | None = 500, *, actor: str | None = None, action: str | None = None,
                  run_id: str | None = None, since: float | None = None) -> list[AuditEntry]:
        """Audit entries, newest first, optionally filtered."""
        where, args = [], []
        for column, value in (("actor", actor), ("action", action), ("run_id", run_id)):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if since is not None:
            where.append("at >= ?")
            args.append(since)
        sql = "SELECT * FROM audit" + (" WHERE " + " AND ".join(where) if where else "") + " ORDER BY id DESC"
        if limit:
            sql += f" LIMIT {int(limit)}"
        with self._read() as con:
            rows = con.execute(sql, args).fetchall()
        return [AuditEntry(**{**dict(r), "detail": json.loads(r["detail"] or "{}")}) for r in rows]

    def count_audit(self, action: str, since: float, *, actor: str | None = None, client: str | None = None) -> int:
        """Entries of `action` since `since` by `actor` or from `client` (e.g. failed sign-ins, for throttling)."""
        who = [(c, v) for c, v in (("actor", actor), ("client", client)) if v]
        sql = "SELECT COUNT(*) FROM audit WHERE action = ? AND at >= ?"
        if who:
            sql += " AND (" + " OR ".join(f"{c} = ?" for c, _ in who) + ")"
        with self._read() as con:
            return con.execute(sql, [action, since, *(v for _, v in who)]).fetchone()[0]

    def open_session(self, session_id: str, user: str, expires: float, client: str | None) -> None:
        with self._write() as con:
            con.execute("INSERT INTO sessions (id, user, created, expires, client) VALUES (?, ?, ?, ?, ?)",
                        (session_id, user, time.time(), expires, client))

    def session(self, session_id: str) -> dict | None:
        """A sign-in session that has not ended or expired: {id, user, created, expires, client}, else None."""
        with self._read() as con:
            row = con.execute("SELECT * FROM sessions WHERE id = ? AND ended IS NULL AND expires > ?",
                              (session_id, time.time())).fetchone()
        return dict(row) if row else None

    def end_sessions(self, *, session_id: str | None = None, user: str | None = None) -> int:
        """End one session, or every session of a user (removed account, changed password or role)."""
        column, value = ("id", session_id) if session_id else ("user", user)
        with self._write() as con:
            return con.execute(f"UPDATE sessions SET ended = ? WHERE {column} = ? AND ended IS NULL",
                               (time.time(), value)).rowcount

    def settings(self) -> dict[str, Any]:
        """Server settings saved from the dashboard or the CLI: key -> value."""
        with self._read() as con:
            return {r[0]: json.loads(r[1]) for r in con.execute("SELECT key, value FROM settings")}

    def save_settings(self, changes: dict[str, Any], by: str) -> None:
        with self._write() as con:
            for key, value in changes.items():
                con.execute("INSERT INTO settings (key, value, updated, by) VALUES (?, ?, ?, ?) ON CONFLICT(key) "
                            "DO UPDATE SET value = excluded.value, updated = excluded.updated, by = excluded.by",
                            (key, json.dumps(value), time.time(), by))

    def _carry_over(self, old: Path) -> str:
        """Copy the audit log, sign-in sessions and settings from a registry moved aside into the new one, as far
        as the old file can be read (rows before the damage are kept). Returns the words for the rebuild's
        notice: what was carried over, and what could not be read (never dropped silently: it stays in `old`)."""
        carried, lost = [], []
        try:
            src = _open_aside(old)
        except sqlite3.Error as exc:
            return (f"; could not read the audit log, sessions or settings in it ({str(exc)[:120]}): the rebuilt "
                    "registry starts without them, and they stay in that file")
        try:
            for table in CARRIED:
                rows, error = _read_rows(src, table)
                if rows:
                    try:
                        self._insert_rows(table, rows)
                        carried.append(f"{len(rows)} {table}")
                    except sqlite3.Error as exc:  # rows too damaged to write back
                        error = str(exc).splitlines()[0][:120]
                if error is not None:
                    lost.append(f"{table} ({error})")
        finally:
            src.close()
        said = f"; carried over rows from it: {', '.join(carried)}" if carried else ""
        if lost:
            said += (f"; could not read all of {', '.join(lost)} in it: the rest is missing from the rebuilt "
                     "registry and stays in that file")
        return said

    def _insert_rows(self, table: str, rows: list[sqlite3.Row]) -> None:
        with self._write() as con:
            have = {r[1] for r in con.execute(f"PRAGMA table_info({table})")}
            columns = [c for c in rows[0].keys() if c in have]
            con.executemany(f"INSERT OR IGNORE INTO {table} ({','.join(columns)}) "
                            f"VALUES ({','.join('?' * len(columns))})", [[r[c] for c in columns] for r in rows])


def _open_aside(path: Path) -> sqlite3.Connection:
    """A registry moved aside, opened read-only (it is kept as found); with its WAL when SQLite can still use it."""
    uri = urllib.parse.quote(str(path))
    for mode in ("mode=ro", "immutable=1"):  # read-only WAL needs its -shm; immutable reads the main file alone
        con = sqlite3.connect(f"file:{uri}?{mode}", uri=True, timeout=5.0, check_same_thread=False)
        con.row_factory = sqlite3.Row
        try:
            con.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
            return con
        except sqlite3.Error:
            con.close()
            if mode == "immutable=1":
                raise
    raise AssertionError("unreachable")


def _read_rows(con: sqlite3.Connection, table: str) -> tuple[list[sqlite3.Row], str | None]:
    """The rows of `table` up to the first one SQLite cannot read, and why it stopped (None: all were read). A
    missing table is said too: every registry this version opened has it, so its absence means damage."""
    rows: list[sqlite3.Row] = []
    try:
        for row in con.execute(f"SELECT * FROM {table}"):
            rows.append(row)
    except sqlite3.Error as exc:
        return rows, str(exc).splitlines()[0][:120]
    return rows, None
