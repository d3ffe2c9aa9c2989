"""Reading and writing run files safely while other processes read them: atomic rewrites (temp name + rename),
write-once files, folders swapped in whole, the append-only event stream (whole lines only), tails of logs and
streams read without reading the whole file, telling a full disk from other write errors, and the scalars of a
results file that the registry keeps (key_results). Which files these are is layout.py's business; this is how."""
from __future__ import annotations

import errno
import json
import math
import os
import secrets
import shutil
from pathlib import Path
from typing import Any

LOG_TAIL_LINES = 40
TAIL_BYTES = 64 * 1024          # first window of a tail read; doubled until it finds what it looks for
TAIL_MAX_BYTES = 8 * 1024 * 1024
KEY_RESULTS_MAX = 64         # scalars of a results dict the registry keeps (key_results)
_NO_SPACE_TEXT = ("no space left on device", "storagefull", "database or disk is full", "disk quota exceeded")


def key_results(results: dict | None) -> dict:
    """The scalars of a results dict (top level, plus one level of nested dicts as `section.key`), for the
    registry so listings and comparisons need no file reads. Long strings and big structures stay in
    results.json only."""
    out: dict[str, Any] = {}

    def keep(key: str, value: Any) -> None:
        if len(out) >= KEY_RESULTS_MAX:
            return
        if isinstance(value, bool) or value is None:
            out[key] = value
        elif isinstance(value, (int, float)):
            out[key] = value if not (isinstance(value, float) and not math.isfinite(value)) else None
        elif isinstance(value, str) and len(value) <= 80:
            out[key] = value
        elif hasattr(value, "item"):
            keep(key, jsonable(value))

    for key, value in (results or {}).items():
        if not isinstance(value, dict):
            keep(key, value)
    for key, value in (results or {}).items():
        if isinstance(value, dict):
            for sub, v in value.items():
                if not isinstance(v, (dict, list)):
                    keep(f"{key}.{sub}", v)
    return out


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


def _temp(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(3)}.tmp")


def _write_temp(path: Path, text: str) -> Path:
    tmp = _temp(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)  # on a full disk the half-written temp file must not hold the space
        raise
    return tmp


def atomic_write(path: Path, text: str, *, once: bool = False) -> None:
    """Write a whole file so that readers see the old or the new content, never a mix. `once`: create it, never
    replacing one that exists (FileExistsError): the temporary file is hard-linked into place, which fails if
    the name is taken, instead of renamed over it."""
    tmp = _write_temp(path, text)
    try:
        (os.link if once else os.replace)(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_json(path: Path, data: Any) -> None:
    atomic_write(path, json.dumps(data, indent=2, default=jsonable))


def read_json(path: Path) -> Any | None:
    """The parsed file, or None when it does not exist (yet) or cannot be read whole (a file cut short by a
    crash or edited by hand): a damaged file never makes a run disappear or a page fail."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_dir(new: Path, target: Path) -> None:
    """Move the finished folder `new` to `target`, replacing what is there only once `new` is in place: a
    reader sees the old folder or the new one, and a crash in between leaves the old one beside a copy."""
    old = target.with_name(f".{target.name}.replaced-{secrets.token_hex(3)}")
    if target.exists():
        target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        if old.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def is_no_space(exc: BaseException | None) -> bool:
    """True when an error (or one it was raised from) says the disk is full. torch, safetensors and SQLite each
    phrase it their own way, and not all of them raise OSError."""
    seen = 0
    while exc is not None and seen < 10:
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if any(text in str(exc).lower() for text in _NO_SPACE_TEXT):
            return True
        exc, seen = exc.__cause__ or exc.__context__, seen + 1
    return False


def free_bytes(path: Path) -> int | None:
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def append_event(path: Path, event: dict) -> None:
    """Append one event as one line with a single write() (O_APPEND), then fsync: a reader sees whole lines,
    a crash loses at most the line being written, and a full disk leaves no part of a line behind."""
    line = (json.dumps(event, default=jsonable, allow_nan=True) + "\n").encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        start = os.fstat(fd).st_size
        if os.write(fd, line) != len(line):  # a nearly full disk takes part of a line: take it back whole
            os.ftruncate(fd, start)
            raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (short write)", str(path))
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


def tail_events(path: Path, enough) -> list[dict]:
    """Events from the end of a stream, reading a growing window from the end until `enough(events)` is true,
    the whole file has been read, or TAIL_MAX_BYTES: a status read costs the same at 100 events and at 1e6."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, os.SEEK_END)
            window = TAIL_BYTES
            while True:
                start = max(0, size - window)
                f.seek(start)
                data = f.read(size - start)
                if start:
                    data = data[data.find(b"\n") + 1:]  # the first line in the window may be cut: skip it
                events, _ = parse_events(data)
                if start == 0 or window >= TAIL_MAX_BYTES or enough(events):
                    return events
                window *= 4
    except OSError:
        return []


def has_content(path: Path) -> bool:
    """Whether the file exists and is not empty."""
    try:
        return path.stat().st_size > 0
    except OSError:
        return False


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
