"""Helpers of the reliability tests: where the fault injector lives and how a run gets its fault."""
from __future__ import annotations

import json
from pathlib import Path

from helpers import INJECT  # noqa: F401 - the reliability tests' name for it
from lora_core.config import ExperimentConfig
from lora_core.runs import Runs


def create_faulty(runs: Runs, cfg: ExperimentConfig, spec: dict | None) -> str:
    """A QUEUED run whose worker will meet the fault `spec` (written into its run dir before it can start;
    nothing starts until the caller reconciles)."""
    record = runs.create(cfg)
    if spec:
        (record.dir.path / "fault.json").write_text(json.dumps(spec), encoding="utf-8")
    return record.id


def fill_disk(folder: Path) -> int:
    """Write zeros into `folder` until the disk is full; returns the bytes written."""
    written = 0
    try:
        with open(folder / "filler-test.bin", "ab") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
                written += 65536
    except OSError:
        pass
    return written
