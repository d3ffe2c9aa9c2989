"""A run rebuilt from what its directory holds when its status.json is damaged (Registry.reindex and the
rebuild of a damaged registry come here for each such run)."""
from __future__ import annotations

import time

import yaml

from ..config import LORA_METHODS
from . import files
from .files import key_results
from .layout import RunDir
from .store import RunRecord, RunStatus


def record_from_files(rd: RunDir, created: float, runs_dir: str) -> RunRecord:
    """A run whose status.json is damaged, rebuilt from what it left: its config (name, model, method) and its
    results (it ended, and how). Without results its end is unknown, so it is FAILED with that reason."""
    try:
        cfg = yaml.safe_load(rd.config.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        cfg = None
    cfg = cfg if isinstance(cfg, dict) else {}
    section = lambda name: cfg.get(name) if isinstance(cfg.get(name), dict) else {}  # noqa: E731

    results = files.read_json(rd.results)
    method = cfg.get("method") if isinstance(cfg.get("method"), str) else None
    rank = section("lora").get("r")
    record = RunRecord(
        id=rd.id, name=str(cfg.get("name") or rd.id)[:200], status=RunStatus.FAILED, created=created,
        ended=time.time(), task=cfg.get("task") if isinstance(cfg.get("task"), str) else None,
        model=str(section("model").get("source") or "") or None, method=method,
        lora_r=rank if isinstance(rank, int) and method in LORA_METHODS else None, runs_dir=runs_dir,
        error="its status was lost (status.json and the registry were unreadable); rebuilt from the run "
              "directory, which has no results, so the run did not finish")
    if isinstance(results, dict):
        record.status = RunStatus.STOPPED if results.get("stopped") else RunStatus.SUCCEEDED
        record.results, record.error = key_results(results), "stopped" if results.get("stopped") else None
        record.ended = rd.results.stat().st_mtime
    return record
