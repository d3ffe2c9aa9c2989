"""One answer to "is this a local path or a hub id?", shared by models, data, the launcher and the estimator;
one answer to "is this path inside these folders?" (after `~`, `..` and every symlink), for a shared server's
data roots; and one way to measure a folder on disk.

Hub ids look like `name` or `org/name`; anything else that looks like a path is a path, whether or not it exists
(so a typo in a path is reported as a missing file, not as an unknown hub repo).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

DATA_SUFFIXES = (".csv", ".tsv", ".json", ".jsonl", ".parquet")  # the local data files we read


def is_local_path(value: str, suffixes: tuple[str, ...] = ()) -> bool:
    """True when `value` names a local file or folder: it starts like a path (`/`, `.`, `~`), has a backslash or
    more than one `/`, ends with one of `suffixes` (e.g. `.csv`), or exists on disk."""
    value = (value or "").strip()
    if not value:
        return False
    if value.startswith((".", "/", "~", "\\")) or "\\" in value or value.count("/") > 1:
        return True
    if suffixes and value.lower().endswith(tuple(s.lower() for s in suffixes)):
        return True
    try:
        return Path(value).expanduser().exists()
    except (OSError, ValueError):  # a name too long for the filesystem, or with a NUL byte, is no local file
        return False


def dir_bytes(folder: str | Path, pattern: str = "**/*") -> int:
    """Bytes of the files under `folder` matching the glob `pattern` (default: every file, recursively); 0 when
    the folder does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return 0
    return sum(p.stat().st_size for p in folder.glob(pattern) if p.is_file())


def inside(value: str | Path, roots: Iterable[str | Path]) -> bool:
    """True when `value` resolves (user home, `..` and every symbolic link followed, relative to the working
    directory) to one of `roots` or a path below one. Never says why not, so a caller's refusal cannot tell
    whether the file exists."""
    try:
        resolved = Path(value).expanduser().resolve()
    except (OSError, RuntimeError, ValueError):  # a symlink loop, a NUL byte: not inside anything
        return False
    return any(resolved == root or resolved.is_relative_to(root)
               for root in (Path(r).expanduser().resolve() for r in roots))
