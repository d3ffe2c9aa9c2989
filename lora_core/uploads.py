"""Datasets uploaded from the dashboard: checked like any data file, then kept by content.

`store` refuses, before anything is kept, a file that is too large, has a suffix we do not read, is really
another kind of file (a zip, a gzip, an executable renamed .csv), is not UTF-8, does not parse, or lacks the
config's chosen columns. A file that passes is stored once under its content's hash in the uploads folder
(`layout.upload_path`), so uploading the same file twice keeps one copy; beside it a small .info file says
who uploaded it, when and under which name, for the reuse list. The path of a stored upload is a local data path
inside the data roots, so the config, the preview and the worker read it like any other file.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ExperimentConfig
from .data import check_table, read_file
from .errors import DataError
from .paths import DATA_SUFFIXES
from .runs import files, layout

# Leading bytes of file kinds that are never a text data file, whatever their name says.
_MAGIC = {b"PK\x03\x04": "a zip archive (or an Office document)", b"\x1f\x8b": "a gzip archive",
          b"\x7fELF": "a program", b"%PDF": "a PDF document", b"PAR1": "a Parquet file",
          b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"7z\xbc\xaf": "a 7-Zip archive"}
PARQUET_MAGIC = b"PAR1"


@dataclass(frozen=True)
class Upload:
    path: Path
    name: str              # the name it was uploaded under
    size: int
    uploaded_by: str | None = None
    uploaded_at: float | None = None

    @property
    def digest(self) -> str:
        return self.path.stem


def _sniff(name: str, suffix: str, content: bytes) -> None:
    """DataError when the bytes are another kind of file than the suffix says."""
    if suffix == ".parquet":
        if not (content.startswith(PARQUET_MAGIC) and content.endswith(PARQUET_MAGIC)):
            raise DataError(f"{name}: not a Parquet file (Parquet files start and end with 'PAR1')")
        return
    kind = next((what for magic, what in _MAGIC.items() if content.startswith(magic)), None)
    if kind:
        raise DataError(f"{name}: this is {kind}, not a {suffix[1:].upper()} file; upload the data file itself")


def store(runs_root: Path, name: str, content: bytes, cfg: ExperimentConfig, *, by: str,
          max_bytes: int) -> Upload:
    """Check an uploaded file against `cfg` (its task and columns) and keep it; DataError says what is wrong
    (and nothing is kept)."""
    name = Path(str(name)).name or "upload"
    suffix = Path(name).suffix.lower()
    if suffix not in DATA_SUFFIXES:
        raise DataError(f"{name}: unknown file suffix {suffix or '(none)'!r}; allowed: {', '.join(DATA_SUFFIXES)}")
    if len(content) > max_bytes:
        raise DataError(f"{name}: {len(content) / 1e6:.1f} MB is more than this server's upload limit of "
                        f"{max_bytes / 1e6:g} MB (LORA_LAB_MAX_UPLOAD_MB); use a smaller sample or a hub dataset")
    _sniff(name, suffix, content)
    folder = layout.uploads_dir(runs_root)
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=".upload-", suffix=suffix, dir=folder)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(content)
        check_table(read_file(tmp, label=name), name, cfg)
        target = layout.upload_path(runs_root, hashlib.sha256(content).hexdigest()[:32], suffix)
        if target.exists():  # the same bytes were uploaded before: one file
            return _read(target) or Upload(target, name, len(content))
        os.replace(tmp, target)
        files.write_json(layout.upload_info(target), {"name": name, "size": len(content), "uploaded_by": by,
                                                      "uploaded_at": time.time()})
        return Upload(target, name, len(content), by, time.time())
    finally:
        tmp.unlink(missing_ok=True)


def _read(path: Path) -> Upload | None:
    try:
        info = json.loads(layout.upload_info(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    try:
        size = path.stat().st_size
    except OSError:
        return None
    return Upload(path, str(info.get("name") or path.name), size, info.get("uploaded_by"), info.get("uploaded_at"))


def list_uploads(runs_root: Path) -> list[Upload]:
    """Stored uploads, newest first."""
    folder = layout.uploads_dir(runs_root)
    found = [_read(p) for p in folder.iterdir() if p.suffix in DATA_SUFFIXES and not p.name.startswith(".")] \
        if folder.is_dir() else []
    return sorted(filter(None, found), key=lambda u: -(u.uploaded_at or 0))
