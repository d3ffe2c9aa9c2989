"""Faults injected into real tiny runs (tiny-random-gpt2 LoRA, 8 steps, a checkpoint every 2): SIGKILL of the
worker at 10 points, several of them in the middle of a checkpoint's or the adapter's files; a disk that fills
up during training (a real tmpfs when this machine lets us mount one, and a simulated ENOSPC always). After
every fault the run is FAILED with the right reason, the metrics written before it are intact, the registry is
consistent, and resuming from the newest complete checkpoint trains to the end."""
from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys

from pathlib import Path

import pytest

from faults import create_faulty, fill_disk
from helpers import ROOT, cli, tiny_causal, wait_until
from lora_core.errors import StorageError
from lora_core.runs import Runs, RunStatus, files, layout

pytestmark = pytest.mark.reliability

STEPS = 16  # 4 per epoch (16 rows, batch 4): a checkpoint every 2 steps, an evaluation every 4


def config(name: str, steps: int = STEPS):
    return tiny_causal(name, max_steps=steps, **{"train.save_steps": 2})


def kill_chains(seed: int) -> list[list[dict]]:
    """10 SIGKILLs in two chains of 5: each run of a chain is the resumed run of the one before, and is killed at
    its own point (counted from its own start). Chain one: a random training step, then in random order the
    middle of a checkpoint's adapter weights, optimizer state, trainer state and completeness marker (each the
    second checkpoint the run writes, so every run adds a complete one first). Chain two: an evaluation, two
    random training steps, the final adapter's weights, results.json. (Chain two's first run is a new causal-lm
    run, so its first eval is the one before training, at step 0: it is killed at its second, at step 4.)"""
    rng = random.Random(seed)
    writes = [{"at": "safetensors", "nth": 2}, {"at": "torch.save", "name": "optimizer.pt", "nth": 2},
              {"at": "trainer_state", "nth": 2}, {"at": "write_json", "name": layout.CHECKPOINT_DONE, "nth": 2}]
    rng.shuffle(writes)
    one = [{"at": "step", "nth": rng.randint(3, 4)}, *writes]
    two = [{"at": "eval", "nth": 2}, {"at": "step", "nth": rng.randint(1, 2)}, {"at": "step", "nth": rng.randint(1, 2)},
           {"at": "safetensors", "within": ".adapter.saving-", "nth": 1},
           {"at": "write_json", "name": "results.json", "nth": 1}]
    return [[dict(spec, do="kill") for spec in chain] for chain in (one, two)]


def check_metrics_kept(runs: Runs, run_id: str) -> list[dict]:
    """Every line of the stream is whole and parses, and the train logs run 1, 2, ... without a gap (a resumed
    run's stream starts with its parent's events up to the checkpoint)."""
    raw = runs.dir(run_id).metrics.read_bytes()
    events, used = files.parse_events(raw)
    assert used == len(raw) and len(events) == raw.count(b"\n"), "a metrics line was lost or cut"
    steps = sorted({e["step"] for e in events if e.get("kind") == "log" and "loss" in e})
    assert steps == list(range(1, len(steps) + 1)), steps
    return events


def entries(runs_dir: Path) -> list[str]:
    """What is in the runs dir, less SQLite's -wal/-shm beside the registry: they come and go as connections
    (this process's, a worker's, the CLI's) open and close, and say nothing about what a failed launch left."""
    side = {p.name for p in layout.sqlite_companions(runs_dir / layout.REGISTRY_FILE)}
    return sorted(p.name for p in runs_dir.iterdir() if p.name not in side)


def registry_consistent(runs_dir, full_disk: bool = False) -> None:
    path = runs_dir / layout.REGISTRY_FILE
    # on a full disk SQLite cannot create the -shm file a WAL database needs even to read: read the file as it is
    con = sqlite3.connect(f"file:{path}?immutable=1", uri=True) if full_disk else sqlite3.connect(str(path))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    for record in Runs(runs_dir).list(reconcile=False):
        mirror = files.read_json(record.dir.status)
        assert mirror and mirror["status"] == record.status.value, (record.id, mirror)


def check_killed(runs: Runs, run_id: str, spec: dict) -> tuple[int, Path]:
    """A killed run: FAILED for the kill, metrics intact, only marked checkpoints listed as complete, and a
    write cut off mid-way left behind as incomplete. Returns where its resume starts: its newest complete
    checkpoint, or the one it was itself resumed from when it died before saving its own."""
    record = runs.wait(run_id, timeout=600)
    assert record.status is RunStatus.FAILED, (spec, record.status, record.error, record.error_log)
    assert "SIGKILL" in record.error and "[fault] SIGKILL" in runs.log_tail(run_id, 400), (spec, record.error)
    events = check_metrics_kept(runs, run_id)
    artifacts = runs.dir(run_id).artifacts
    complete = runs.checkpoints(run_id)
    for folder in artifacts.checkpoints.glob(f"{layout.CHECKPOINT_PREFIX}*"):
        assert (folder in [p for _, p in complete]) == layout.is_complete_checkpoint(folder)
    if spec["at"] != "step" and spec["at"] != "eval" and spec.get("name") != "results.json":
        assert artifacts.incomplete_checkpoints(), (spec, "the write it cut off is left as incomplete")
    point = runs.resume_point(run_id)
    assert point is not None, (spec, "every point comes after a complete checkpoint")
    assert point == (complete[-1] if complete else (point[0], record.resume_checkpoint))
    assert max(e["step"] for e in events if e.get("kind") == "log") >= point[0]
    return point


def test_sigkill_at_10_points_then_resume_from_the_newest_complete_checkpoint(runs, runs_dir, faults, monkeypatch):
    seed = int(os.environ.get("LORA_LAB_FAULT_SEED") or random.randrange(10**6))
    print(f"fault points seed: {seed} (set LORA_LAB_FAULT_SEED to repeat)")
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")  # the two chains run side by side
    monkeypatch.setenv("LORA_LAB_TEST_FAULT_WAIT", "1")  # a resumed run may start before its fault.json is written
    chains = kill_chains(seed)
    current = [create_faulty(runs, config(f"chain-{i}"), chain[0]) for i, chain in enumerate(chains)]
    starts: list[int | None] = [None, None]  # the step each chain's current run resumes from
    runs.reconcile()
    killed = 0
    for link in range(len(chains[0]) + 1):
        for i, chain in enumerate(chains):
            rid = current[i]
            if link == len(chain):  # the last resumed run: no fault, trains to the end
                record = runs.wait(rid, timeout=600)
                assert record.status is RunStatus.SUCCEEDED, (record.error, record.error_log)
                results = runs.results(rid)
                assert results["steps"] == STEPS and results["resumed_from_step"] == starts[i]
                check_metrics_kept(runs, rid)  # steps 1..STEPS, inherited and new, without a gap
                continue
            starts[i], newest = check_killed(runs, rid, chain[link])
            killed += 1
            child = runs.resume(rid)
            following = chain[link + 1] if link + 1 < len(chain) else {}  # {}: the last run has no fault
            (runs.dir(child).path / "fault.json").write_text(json.dumps(following))
            assert runs.get(child, reconcile=False).resume_checkpoint == newest  # the newest complete checkpoint
            current[i] = child
            runs.reconcile()
    assert killed == 10
    registry_consistent(runs_dir)


def test_simulated_enospc_on_a_checkpoint_ends_failed_with_the_reason(runs, runs_dir, faults):
    """ENOSPC raised by the writer of a checkpoint's optimizer state (simulated: no tmpfs needed)."""
    rid = create_faulty(runs, config("enospc"), {"at": "torch.save", "name": "optimizer.pt", "nth": 2,
                                                 "do": "enospc"})
    runs.reconcile()
    record = runs.wait(rid, timeout=300)
    assert record.status is RunStatus.FAILED
    assert record.error.startswith("no space left on device while writing checkpoint "), record.error
    assert "checkpoint-" in record.error
    check_metrics_kept(runs, rid)
    assert not runs.dir(rid).artifacts.incomplete_checkpoints()  # the cut-off checkpoint was removed
    assert not runs.dir(rid).reserve.exists()
    registry_consistent(runs_dir)
    assert runs.resume(rid)  # the complete checkpoints before it are still there


@pytest.fixture
def small_disk(tmp_path):
    """A 24 MB tmpfs mounted for this test (skipped where mounting is not permitted), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({made.stderr.strip()[:200]}); the simulated ENOSPC test covers "
                    "the worker's path")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_runs_dir_on_a_full_tmpfs(small_disk, faults, monkeypatch):
    """The worker fills the real tmpfs at step 3; its next checkpoint hits ENOSPC. The run ends FAILED with
    the reason, the registry stays consistent and readable, the CLI answers in one line, and a launch on the
    full disk is refused without leaving anything behind."""
    runs_dir = small_disk / "runs"
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(runs_dir))
    runs = Runs(runs_dir)
    try:
        rid = create_faulty(runs, config("full-disk"), {"at": "step", "nth": 3, "do": "fill"})
        runs.reconcile()
        record = runs.wait(rid, timeout=300)
        assert record.status is RunStatus.FAILED, (record.status, record.error, record.error_log)
        assert record.error.startswith("no space left on device while writing "), record.error
        events = check_metrics_kept(runs, rid)
        assert any(e.get("step") == 3 for e in events)  # written before the disk filled
        registry_consistent(runs_dir)
        fill_disk(runs_dir)  # the worker gave back what it could to record its end: take that too

        listed = cli("list", "--runs-dir", str(runs_dir), check=False)
        status = cli("status", rid, "--runs-dir", str(runs_dir), check=False)
        assert listed.returncode == 0 and rid in listed.stdout, listed.stderr
        assert status.returncode == 0 and "no space left on device" in status.stdout, status.stderr
        assert "Traceback" not in listed.stderr + status.stderr

        before = entries(runs_dir)
        with pytest.raises(StorageError, match="no space left on device"):
            runs.create(config("no-room"))
        assert entries(runs_dir) == before  # no run dir, temp file or tombstone left behind
        assert [r.id for r in runs.list(reconcile=False)] == [rid]
        registry_consistent(runs_dir, full_disk=True)
        launched = subprocess.run([sys.executable, "-m", "lora_core", "train", str(ROOT / "examples" /
                                                                                  "minilm-lora.yaml"),
                                   "--runs-dir", str(runs_dir)], capture_output=True, text=True, cwd=ROOT,
                                  timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert launched.returncode == 2 and launched.stderr.startswith("error: "), launched.stderr[-2000:]
        assert "Traceback" not in launched.stderr
        wait_until(lambda: not runs.list(status=[RunStatus.QUEUED, RunStatus.RUNNING], reconcile=False),
                   timeout=30, what="no run left behind")
    finally:
        for filler in ("filler.bin", "filler-test.bin"):
            (runs_dir / filler).unlink(missing_ok=True)
