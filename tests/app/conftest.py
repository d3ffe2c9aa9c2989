"""Fixtures for the Streamlit AppTest tests.

`seeded_runs` trains real runs once per test session through the real launcher and worker (tiny-random-gpt2,
2 steps each: a sweep of LoRA r=2/r=4 + full + head-only for classification, and one causal-LM LoRA run), so
the Runs, Compare, Estimator, Merge and Playground pages are tested against results the engine really wrote.
Tests that change runs copy it (`seeded_copy`) so they cannot disturb each other.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from apptest_helpers import TINY_CAUSAL, TINY_SEQ_CLS


@pytest.fixture(scope="session")
def seeded_runs(tmp_path_factory) -> Path:
    """A runs directory with 5 finished runs trained by the real engine (built once per session)."""
    import os

    from lora_core import launcher
    from lora_core.config import ExperimentConfig

    runs = tmp_path_factory.mktemp("seeded") / "runs"
    runs.mkdir()
    old = os.environ.get("LORA_LAB_MAX_CONCURRENT")
    os.environ["LORA_LAB_MAX_CONCURRENT"] = "2"  # two workers at once: the seeding is mostly imports
    try:
        _, ids = launcher.sweep(ExperimentConfig.from_dict(TINY_SEQ_CLS),
                                {"lora.r": [2, 4], "method": ["full", "head-only"]}, runs_dir=runs)
        ids.append(launcher.launch(ExperimentConfig.from_dict(TINY_CAUSAL), runs_dir=runs))
        for run_id in ids:
            record = launcher.wait(run_id, timeout=400, runs_dir=runs)
            assert record.status == "SUCCEEDED", (record.error, record.error_log)
    finally:
        if old is None:
            os.environ.pop("LORA_LAB_MAX_CONCURRENT", None)
        else:
            os.environ["LORA_LAB_MAX_CONCURRENT"] = old
    return runs


@pytest.fixture
def use_seeded(seeded_runs, monkeypatch) -> Path:
    """Point the pages at the shared seeded runs (read-only use)."""
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(seeded_runs))
    return seeded_runs


@pytest.fixture
def seeded_copy(seeded_runs, tmp_path, monkeypatch) -> Path:
    """A private copy of the seeded runs, for tests that delete, merge or resume."""
    runs = tmp_path / "runs"
    shutil.copytree(seeded_runs, runs)
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(runs))
    return runs




@pytest.fixture(autouse=True)
def no_leftover_workers(monkeypatch):
    """After each test, stop whatever it left QUEUED or RUNNING in its runs directory (even when it failed),
    so no worker outlives its test."""
    yield
    import os

    from lora_core import launcher, storage

    where = os.environ.get("LORA_LAB_RUNS_DIR")
    if not where or not os.path.isdir(where):
        return
    for record in storage.list_runs(where, status=["QUEUED", "RUNNING"]):
        try:
            launcher.stop(record.id, timeout=20, runs_dir=where)
        except Exception:  # noqa: BLE001 - best effort; the next one still gets stopped
            pass
