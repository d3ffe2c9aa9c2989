"""`python -m lora_core.runs.worker RUN_DIR`: train one run and record its life in the run directory.

The launcher starts this in a new session with stdout/stderr going to the run's worker.log. The worker
  1. installs a SIGTERM handler before importing the recipe, so a stop during start-up or model loading is
     honoured;
  2. registers its pid and writes a heartbeat every ~2 s from a daemon thread (which also picks up a stop
     requested through the registry, and samples how busy the machine is while training: machine.py);
  3. trains: `train.run_experiment` in this process, appending every event to metrics.jsonl as it arrives, or
     with resources.num_workers > 1 one rank per child process (distributed.py; they stay in this process
     group, so a stop or a kill of the group reaches them all); a resumed run's elapsed time goes on from its
     parent's, so its curves and its clock never go backwards;
  4. writes results.json (with the machine_* keys) and ends the run SUCCEEDED, STOPPED (the recipe returned
     `stopped: True`) or FAILED (the exception and the log tail);
  5. finally reconciles, which starts the next queued run: the queue drains with nobody watching.

A full disk must not leave a run RUNNING forever or blamed on the wrong cause. The worker holds back a little
space (`RunDir.reserve`) from the start; when the disk fills, it removes the checkpoint it was cutting off and
the reserve, then records FAILED with "no space left on device while writing ...". If even that cannot be
recorded, it leaves the reason in `RunDir.exit`, where the next reconcile finds it.
"""
from __future__ import annotations

import os
import shutil
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
from ..errors import LoraLabError, StatusError, StorageError  # noqa: E402
from . import files, launcher  # noqa: E402
from .layout import RunDir  # noqa: E402
from .machine import MachineMeter  # noqa: E402
from .manager import Runs  # noqa: E402
from .store import Registry, RunStatus, key_results  # noqa: E402

HEARTBEAT_S = 2.0
RESERVE_BYTES = 1 << 20   # enough for the registry's write-ahead log to record the end, and exit.json
RECORD_TRIES = 5
OOM_HINT = ("out of memory: lower train.batch_size or data.max_length, turn on train.gradient_checkpointing, "
            "or use method qlora; the memory estimator shows which term dominates")


def say(text: str = "", *, trace: bool = False) -> None:
    """Write to the worker log (stdout and stderr go there), or the current traceback; a log on a full disk
    must not turn into a second error while the first is being recorded."""
    try:
        if trace:
            traceback.print_exc()
        if text:
            print(text, file=sys.stderr, flush=True)
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


class Heartbeat(threading.Thread):
    """Writes the heartbeat (with the latest progress) every HEARTBEAT_S seconds, turns a stop requested in
    the registry into the stop flag, and samples the machine meter."""

    def __init__(self, registry: Registry, run_id: str, stop_flag: threading.Event, latest: dict,
                 machine: MachineMeter):
        super().__init__(name="heartbeat", daemon=True)
        self.registry, self.run_id, self.stop_flag, self.latest = registry, run_id, stop_flag, latest
        self.machine = machine
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                if self.registry.heartbeat(self.run_id, self.latest.get("progress"), self.latest.get("step")):
                    self.stop_flag.set()
            except Exception as exc:  # a busy disk must not kill training; the next beat tries again
                say(f"[worker] heartbeat failed: {exc}")
            self.machine.sample()
            self.done.wait(HEARTBEAT_S)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, LoraLabError):  # the engine's own errors are written for users: no class name
        return str(exc).splitlines()[0][:500]
    if files.is_no_space(exc):
        return f"no space left on device while writing the run's files ({type(exc).__name__}: {exc})"[:500]
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


def hold_space(rd: RunDir) -> None:
    """Reserve RESERVE_BYTES in the run dir (real blocks, not a sparse file) to free when the disk fills."""
    try:
        with open(rd.reserve, "wb") as f:
            f.write(b"\0" * RESERVE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError:
        rd.reserve.unlink(missing_ok=True)  # the disk is already full: go on without a reserve


def free_space(rd: RunDir) -> None:
    """Give back what a full disk took: checkpoints cut off mid-save (never resumable), staging folders, the
    reserve. Complete checkpoints and the metrics stay."""
    for folder in rd.artifacts.incomplete_checkpoints():
        shutil.rmtree(folder, ignore_errors=True)
    rd.reserve.unlink(missing_ok=True)


def record_end(registry: Registry, rd: RunDir, status: RunStatus, fields: dict) -> None:
    """Record the run's end, retrying a full disk a few times; if it still cannot be recorded, leave the reason
    in exit.json for the next reconcile (which would otherwise blame a kill)."""
    for attempt in range(RECORD_TRIES):
        try:
            registry.set_status(rd.id, status, **fields)
            return
        except StatusError as exc:  # e.g. the run was force-stopped meanwhile: that word stands
            say(f"[worker] could not record {status}: {exc}")
            return
        except (StorageError, OSError) as exc:
            say(f"[worker] recording {status} failed ({exc}); attempt {attempt + 1} of {RECORD_TRIES}")
            time.sleep(0.5 * (attempt + 1))
    reason = fields.get("error") or f"the worker ended {status} but could not record it (disk full?)"
    try:
        files.write_json(rd.exit, {"status": status.value, "error": reason, "time": time.time()})
    except OSError as exc:
        say(f"[worker] could not write {rd.exit.name} either: {exc}")


def run(run_path: Path, stop_flag: threading.Event) -> int:
    runs = Runs(run_path.parent)
    registry, run_id = runs.registry, run_path.name
    record = runs.get(run_id, reconcile=False)
    if record.status != RunStatus.RUNNING:
        say(f"[worker] run {run_id} is {record.status}, not RUNNING; nothing to do")
        return 1
    registry.update(run_id, only_if_status=RunStatus.RUNNING, pid=os.getpid(), pgid=os.getpgrp(),
                    pid_created=psutil.Process().create_time(), host=launcher.this_host(), heartbeat=time.time())
    latest: dict = {}
    machine = MachineMeter(lambda: max(registry.count(RunStatus.RUNNING) - 1, 0))
    beat = Heartbeat(registry, run_id, stop_flag, latest, machine)
    beat.start()
    rd = record.dir
    hold_space(rd)
    resume_from = record.resume_checkpoint
    say(f"[worker] run {run_id} pid {os.getpid()} python {sys.executable}"
        + (f" resuming from {resume_from}" if resume_from else ""))

    def observe(event: dict) -> None:
        if event.get("kind") == "phase":
            (machine.begin if event.get("phase") == "training" else machine.finish)()
        for key in ("progress", "step"):
            if isinstance(event.get(key), (int, float)):
                latest[key] = event[key]

    def on_event(event: dict) -> None:
        observe(rd.record_event(event))

    status, fields = RunStatus.FAILED, {}
    try:
        results = train_run(runs.config(run_id), rd, on_event=on_event, observe=observe, stop_flag=stop_flag,
                            resume_from=resume_from,
                            run_info={"run_id": run_id, "sweep_id": record.sweep_id, "parent_id": record.parent_id,
                                      "runs_dir": str(rd.path.parent)})
        machine.finish()
        results.update(machine.summary())
        try:
            files.write_json(rd.results, results)
        except OSError as exc:
            if not files.is_no_space(exc):
                raise
            raise StorageError(f"no space left on device while writing {rd.results}") from exc
        status = RunStatus.STOPPED if results.get("stopped") else RunStatus.SUCCEEDED
        fields = {"results": key_results(results), "nodes": results.get("nodes") or []}
        if status == RunStatus.STOPPED:
            fields["error"] = stop_note(results, rd)
    except BaseException as exc:  # noqa: BLE001 - whatever ends the run is recorded, then we exit
        fields = {"error": failure_reason(exc)}
        if files.is_no_space(exc):
            free_space(rd)
        say(trace=True)
    finally:
        beat.done.set()
        rd.reserve.unlink(missing_ok=True)  # its space is what lets the end be recorded on a full disk
        record_end(registry, rd, status, fields)
        say(f"[worker] run {run_id} ended {status}")
        try:
            runs.reconcile()  # start the next queued run
        except Exception:
            say(trace=True)
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
