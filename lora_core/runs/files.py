"""Reading and writing run files safely while other processes read them: atomic rewrites, the append-only event
stream (whole lines only), and log tails. Which files these are is layout.py's business; this is how."""
from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 40


def jsonable(value: Any) -> Any:
    """json.dumps fallback for numpy/torch scalars, paths and the like."""
    if hasattr(value, "item"):
        try:
            return value.item()
        except (TypeError, ValueError):
            pass
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def atomic_write(path: Path, text: str) -> None:
    """Write a whole file so that readers see the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=jsonable))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist (yet)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def append_event(path: Path, event: dict) -> None:
    """Append one event as one line with a single write() (O_APPEND), then fsync: a reader sees whole lines,
    and a crash loses at most the line being written."""
    line = (json.dumps(event, default=jsonable, allow_nan=True) + "\n").encode("utf-8")
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


def read_events(path: Path, offset: int = 0) -> tuple[list[dict], int]:
    """Events appended after byte `offset`, and the offset to pass next time (for cheap live polling)."""
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    events, used = parse_events(data)
    return events, offset + used


def log_tail(path: Path, n: int = LOG_TAIL_LINES, max_bytes: int = 256_000) -> str:
    """The last `n` lines of a log (undecodable bytes replaced), reading at most its last `max_bytes`."""
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
