"""Fixtures for the Streamlit AppTest tests.

`seeded_runs` trains real runs once per test session through the real launcher and worker (tiny-random-gpt2,
2 steps each: a sweep of LoRA r=2/r=4 + full + head-only for classification, and one causal-LM LoRA run), so
the Runs, Compare, Estimator, Merge and Playground pages are tested against results the engine really wrote.
Tests that change runs copy it (`seeded_copy`) so they cannot disturb each other.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from helpers import TINY_CAUSAL, TINY_SEQ_CLS, stop_leftovers
from lora_core.config import ExperimentConfig
from lora_core.runs import Runs, RunStatus


@pytest.fixture(scope="session")
def seeded_runs(tmp_path_factory) -> Path:
    """A runs directory with 5 finished runs trained by the real engine (built once per session)."""
    path = tmp_path_factory.mktemp("seeded") / "runs"
    path.mkdir()
    runs = Runs(path)
    old = os.environ.get("LORA_LAB_MAX_CONCURRENT")
    os.environ["LORA_LAB_MAX_CONCURRENT"] = "2"  # two workers at once: the seeding is mostly imports
    try:
        _, ids = runs.sweep(ExperimentConfig.from_dict(TINY_SEQ_CLS),
                            {"lora.r": [2, 4], "method": ["full", "head-only"]})
        ids.append(runs.launch(ExperimentConfig.from_dict(TINY_CAUSAL)))
        for run_id in ids:
            record = runs.wait(run_id, timeout=400)
            assert record.status is RunStatus.SUCCEEDED, (record.error, record.error_log)
    finally:
        if old is None:
            os.environ.pop("LORA_LAB_MAX_CONCURRENT", None)
        else:
            os.environ["LORA_LAB_MAX_CONCURRENT"] = old
    return path


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
    where = os.environ.get("LORA_LAB_RUNS_DIR")
    if where and os.path.isdir(where):
        stop_leftovers(Runs(where))
