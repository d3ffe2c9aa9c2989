"""Several processes launching at once never exceed the concurrency limit, and the queue drains by itself: 3
processes launch 10 runs each at the same moment with a limit of 1; all 30 end, none is lost, and no two were
ever RUNNING together (judged by the registry's own start and end times, not by sampling).

The runs' workers are real worker processes started by the real launcher and queue; what they train is replaced
by a short sleep (the fault injector's "quick" mode), because this test is about the queue, and 30 real trainings
would take minutes. Real training under faults is test_faults.py's."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from helpers import ROOT, TINY_SEQ_CLS
from lora_core.runs import Runs, RunStatus

pytestmark = pytest.mark.reliability

PROCESSES, EACH = 3, 10
LAUNCHER = """
import sys, time
from lora_core.config import ExperimentConfig
from lora_core.runs import Runs
cfg = ExperimentConfig.from_dict({cfg!r})
runs = Runs(sys.argv[1])
while time.time() < float(sys.argv[2]):  # start together
    time.sleep(0.005)
for i in range({each}):
    print(runs.launch(cfg.replace(name=f"p{{sys.argv[3]}}-{{i}}")), flush=True)
"""


def test_three_launchers_one_slot_thirty_runs(runs, runs_dir, faults, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "1")
    monkeypatch.setenv("LORA_LAB_TEST_FAULT", '{"do": "quick", "seconds": 0.3}')
    code = LAUNCHER.format(cfg=TINY_SEQ_CLS, each=EACH)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ["PYTHONPATH"]])}
    start = time.time() + 8  # after every launcher has imported the engine
    procs = [subprocess.Popen([sys.executable, "-c", code, str(runs_dir), str(start), str(p)], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for p in range(PROCESSES)]
    launched = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
        launched += out.split()
    assert len(set(launched)) == PROCESSES * EACH

    deadline = time.time() + 400
    while time.time() < deadline:  # this process only looks (and reconciles); the workers drain the queue
        records = runs.list()
        if all(r.terminal for r in records):
            break
        time.sleep(1)
    records = {r.id: r for r in runs.list()}
    assert sorted(records) == sorted(launched)  # none lost, no stray run
    assert all(r.status is RunStatus.SUCCEEDED for r in records.values()), \
        {r.id: (r.status, r.error) for r in records.values() if r.status is not RunStatus.SUCCEEDED}
    spans = sorted((r.started, r.ended) for r in records.values())
    overlaps = [(a, b) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    assert not overlaps, f"{len(overlaps)} runs started before the previous one ended"
    assert all(Runs(runs_dir).results(rid)["quick"] for rid in launched)  # each was really run by a worker
