"""Faults injected into real tiny runs (tiny-random-gpt2 LoRA, 8 steps, a checkpoint every 2): SIGKILL of the
worker at 10 points, several of them in the middle of a checkpoint's or the adapter's files; a disk that fills
up during training (a real tmpfs when this machine lets us mount one, and a simulated ENOSPC always). After
every fault the run is FAILED with the right reason, the metrics written before it are intact, the registry is
consistent, and resuming from the newest complete checkpoint trains to the end."""
from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys

import pytest

from faults import create_faulty, fill_disk
from helpers import ROOT, cli, tiny_causal, wait_until
from lora_core.errors import StorageError
from lora_core.runs import Runs, RunStatus, files, layout

pytestmark = pytest.mark.reliability

STEPS = 8


def config(name: str):
    return tiny_causal(name, max_steps=STEPS, **{"train.save_steps": 2})


def kill_points(seed: int) -> list[dict]:
    """10 SIGKILLs: 3 at random training steps, and 7 during writes (a random checkpoint's adapter weights,
    optimizer state, trainer state and completeness marker; the final adapter; results.json; an evaluation)."""
    rng = random.Random(seed)
    steps = rng.sample(range(3, STEPS), 3)
    return [*({"at": "step", "nth": s, "do": "kill"} for s in steps),
            {"at": "safetensors", "nth": rng.randint(2, 4), "do": "kill"},
            {"at": "torch.save", "name": "optimizer.pt", "nth": rng.randint(2, 4), "do": "kill"},
            {"at": "trainer_state", "nth": rng.randint(2, 4), "do": "kill"},
            {"at": "write_json", "name": layout.CHECKPOINT_DONE, "nth": rng.randint(2, 4), "do": "kill"},
            {"at": "safetensors", "nth": STEPS // 2 + 1, "do": "kill"},  # the final adapter, after 4 checkpoints
            {"at": "write_json", "name": "results.json", "nth": 1, "do": "kill"},
            {"at": "eval", "nth": 1, "do": "kill"}]


def check_metrics_kept(runs: Runs, run_id: str) -> list[dict]:
    """Every line of the stream is whole and parses, and the train logs run 1, 2, ... without a gap."""
    raw = runs.dir(run_id).metrics.read_bytes()
    events, used = files.parse_events(raw)
    assert used == len(raw) and len(events) == raw.count(b"\n"), "a metrics line was lost or cut"
    steps = sorted({e["step"] for e in events if e.get("kind") == "log" and "loss" in e})
    assert steps == list(range(1, len(steps) + 1)), steps
    return events


def registry_consistent(runs_dir) -> None:
    con = sqlite3.connect(str(runs_dir / "registry.sqlite"))
    try:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    finally:
        con.close()
    for record in Runs(runs_dir).list(reconcile=False):
        mirror = files.read_json(record.dir.status)
        assert mirror and mirror["status"] == record.status.value, (record.id, mirror)


def test_sigkill_at_10_points_then_resume_from_the_newest_complete_checkpoint(runs, runs_dir, faults, monkeypatch):
    seed = int(os.environ.get("LORA_LAB_FAULT_SEED") or random.randrange(10**6))
    print(f"fault points seed: {seed} (set LORA_LAB_FAULT_SEED to repeat)")
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")
    points = kill_points(seed)
    ids = [create_faulty(runs, config(f"kill-{i}"), spec) for i, spec in enumerate(points)]
    runs.reconcile()
    killed = {rid: runs.wait(rid, timeout=600) for rid in ids}

    children = {}
    for spec, rid in zip(points, ids):
        record = killed[rid]
        assert record.status is RunStatus.FAILED, (spec, record.status, record.error)
        assert "SIGKILL" in record.error, (spec, record.error)
        assert "[fault] SIGKILL" in runs.log_tail(rid, 400), spec  # it died where the spec said
        events = check_metrics_kept(runs, rid)
        artifacts = runs.dir(rid).artifacts
        complete = runs.checkpoints(rid)
        assert complete, (spec, "every point comes after the first checkpoint")
        on_disk = sorted(artifacts.checkpoints.glob(f"{layout.CHECKPOINT_PREFIX}*"))
        for folder in on_disk:  # a folder left out of the complete list has no valid marker
            assert (folder in [p for _, p in complete]) == layout.is_complete_checkpoint(folder)
        if spec["at"] in ("safetensors", "torch.save", "trainer_state", "write_json") \
                and spec.get("name") != "results.json" \
                and spec["nth"] <= STEPS // 2:
            assert len(on_disk) > len(complete) or artifacts.incomplete_checkpoints(), (spec, on_disk)
        assert max(e["step"] for e in events if e.get("kind") == "log") >= complete[-1][0]
        children[rid] = (runs.resume(rid), complete[-1])

    for rid, (child, (step, path)) in children.items():
        record = runs.wait(child, timeout=600)
        assert record.status is RunStatus.SUCCEEDED, (rid, record.error, record.error_log)
        assert record.resume_checkpoint == path  # the newest complete checkpoint
        results = runs.results(child)
        assert results["resumed_from_step"] == step and results["steps"] == STEPS
        resumed = [e for e in runs.metrics(child) if e.get("kind") == "log" and "loss" in e]
        assert [e["step"] for e in resumed] == list(range(1, STEPS + 1))  # the curve continues without a gap
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

        before = sorted(p.name for p in runs_dir.iterdir())
        with pytest.raises(StorageError, match="no space left on device"):
            runs.create(config("no-room"))
        assert sorted(p.name for p in runs_dir.iterdir()) == before
        assert [r.id for r in runs.list(reconcile=False)] == [rid]
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
