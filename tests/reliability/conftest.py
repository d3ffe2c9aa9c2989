"""Fixtures for the reliability tests: fault injection into real workers (see inject/sitecustomize.py) and a
private runs directory whose workers are stopped after each test, even a failed one."""
from __future__ import annotations

import os

import pytest

from faults import INJECT
from helpers import stop_leftovers
from lora_core.runs import Runs


@pytest.fixture
def faults(monkeypatch):
    """Workers started from now on load the fault injector (it acts only where a spec says so)."""
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")])))
    monkeypatch.delenv("LORA_LAB_TEST_FAULT", raising=False)
    return INJECT


@pytest.fixture(autouse=True)
def no_leftover_workers(runs_dir):
    yield
    stop_leftovers(Runs(runs_dir))
