"""`python -m lora_core.runs.worker RUN_DIR`: train one run and record its life in the run directory.

The launcher starts this in a new session with stdout/stderr going to the run's worker.log. The worker
  1. installs a SIGTERM handler before importing the recipe, so a stop during start-up or model loading is
     honoured;
  2. registers its pid and writes a heartbeat every ~2 s from a daemon thread (which also picks up a stop
     requested through the registry);
  3. trains: `train.run_experiment` in this process, appending every event to metrics.jsonl as it arrives, or
     with resources.num_workers > 1 one rank per child process (distributed.py; they stay in this process
     group, so a stop or a kill of the group reaches them all);
  4. writes results.json and ends the run SUCCEEDED, STOPPED (the recipe returned `stopped: True`) or FAILED
     (the exception and the log tail);
  5. finally reconciles, which starts the next queued run: the queue drains with nobody watching.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback
from pathlib import Path

import psutil

STOP = threading.Event()  # set by SIGTERM or by a stop requested through the registry
if __name__ == "__main__":
    # Before the imports below (the recipe pulls in pandas, and torch right after): from here on SIGTERM means
    # "stop gracefully", even while the worker is still starting.
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())

from ..distributed import train_run  # noqa: E402
from ..errors import StatusError  # noqa: E402
from . import files, launcher  # noqa: E402
from .layout import RunDir  # noqa: E402
from .manager import Runs  # noqa: E402
from .store import Registry, RunStatus, key_results  # noqa: E402

HEARTBEAT_S = 2.0
OOM_HINT = ("out of memory: lower train.batch_size or data.max_length, turn on train.gradient_checkpointing, "
            "or use method qlora; the memory estimator shows which term dominates")


class Heartbeat(threading.Thread):
    """Writes the heartbeat (with the latest progress) every HEARTBEAT_S seconds and turns a stop requested in
    the registry into the stop flag."""

    def __init__(self, registry: Registry, run_id: str, stop_flag: threading.Event, latest: dict):
        super().__init__(name="heartbeat", daemon=True)
        self.registry, self.run_id, self.stop_flag, self.latest = registry, run_id, stop_flag, latest
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                if self.registry.heartbeat(self.run_id, self.latest.get("progress"), self.latest.get("step")):
                    self.stop_flag.set()
            except Exception as exc:  # a busy disk must not kill training; the next beat tries again
                print(f"[worker] heartbeat failed: {exc}", file=sys.stderr, flush=True)
            self.done.wait(HEARTBEAT_S)


def failure_reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    first = text.splitlines()[0][:500] if text else type(exc).__name__
    if "out of memory" in text.lower() or isinstance(exc, MemoryError):
        return f"{first} ({OOM_HINT})"
    return first


def stop_note(results: dict, rd: RunDir) -> str:
    """What a graceful stop left behind, said plainly."""
    if not results.get("steps"):
        return "stopped on request before training started"
    kept = [f"{p.name}/" for p in rd.artifacts.saved_weights()[:1]]
    if rd.artifacts.complete_checkpoints():
        kept.append("a checkpoint")
    return f"stopped on request at step {results['steps']}" + (f"; saved {' and '.join(kept)}" if kept else "")


def run(run_path: Path, stop_flag: threading.Event) -> int:
    runs = Runs(run_path.parent)
    registry, run_id = runs.registry, run_path.name
    record = runs.get(run_id, reconcile=False)
    if record.status != RunStatus.RUNNING:
        print(f"[worker] run {run_id} is {record.status}, not RUNNING; nothing to do", flush=True)
        return 1
    registry.update(run_id, only_if_status=RunStatus.RUNNING, pid=os.getpid(), pgid=os.getpgrp(),
                    pid_created=psutil.Process().create_time(), host=launcher.this_host(), heartbeat=time.time())
    latest: dict = {}
    beat = Heartbeat(registry, run_id, stop_flag, latest)
    beat.start()
    rd = record.dir
    resume_from = record.resume_checkpoint
    print(f"[worker] run {run_id} pid {os.getpid()} python {sys.executable}"
          + (f" resuming from {resume_from}" if resume_from else ""), flush=True)

    def observe(event: dict) -> None:
        for key in ("progress", "step"):
            if isinstance(event.get(key), (int, float)):
                latest[key] = event[key]

    def on_event(event: dict) -> None:
        event = dict(event)
        event.setdefault("time", time.time())
        files.append_event(rd.metrics, event)
        observe(event)

    status, fields = RunStatus.FAILED, {}
    try:
        results = train_run(runs.config(run_id), rd, on_event=on_event, observe=observe, stop_flag=stop_flag,
                            resume_from=resume_from)
        files.write_json(rd.results, results)
        status = RunStatus.STOPPED if results.get("stopped") else RunStatus.SUCCEEDED
        fields = {"results": key_results(results), "nodes": results.get("nodes") or []}
        if status == RunStatus.STOPPED:
            fields["error"] = stop_note(results, rd)
    except BaseException as exc:  # noqa: BLE001 - whatever ends the run is recorded, then we exit
        traceback.print_exc()
        fields = {"error": failure_reason(exc)}
    finally:
        beat.done.set()
        sys.stdout.flush()
        sys.stderr.flush()
        try:
            registry.set_status(run_id, status, **fields)
        except StatusError as exc:  # e.g. the run was force-stopped meanwhile: that word stands
            print(f"[worker] could not record {status}: {exc}", file=sys.stderr, flush=True)
        print(f"[worker] run {run_id} ended {status}", flush=True)
        try:
            runs.reconcile()  # start the next queued run
        except Exception:
            traceback.print_exc()
    return 0 if status == RunStatus.SUCCEEDED else 1


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m lora_core.runs.worker RUN_DIR", file=sys.stderr)
        return 2
    return run(Path(argv[0]).resolve(), STOP)


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: a library thread that never finishes must not keep a finished run's process
    # (and its GPU memory) alive after the status is recorded.
    os._exit(code)
