"""The cluster side of the Ray backend: what a Ray job runs on a node.

    python -m lora_core.runs.job RUN_DIR [--resume CHECKPOINT] [--sweep ID] [--parent ID]
                                         train one run (ray_jobs.RayJobs submits it; sweep and parent go to the
                                         trackers, as the local worker's run_info)
    python -m lora_core.runs.job --probe RUNS_DIR NONCE     check every node can write the runs dir

A job never opens the registry: SQLite in WAL mode needs a local disk, and here the runs directory is storage the
nodes share over the network. It writes only its run's files (worker.log as it prints, a copy of Ray's job log;
job.json when it starts, metrics.jsonl as it trains, results.json and outcome.json at its end); the dashboard side
reads them and the Jobs API and records the run's status (`RayJobs.check`). A stop arrives as the run's
stop.request file, polled here and, with several ranks, by rank 0; `stop_job` (SIGTERM from Ray) means the same,
but Ray kills the job 3 s later.
"""
from __future__ import annotations

import argparse
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Callable

STOP = threading.Event()
if __name__ == "__main__":  # before the heavy imports: a stop during start-up is honoured
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())

from ..config import ExperimentConfig  # noqa: E402
from . import files, layout  # noqa: E402
from .layout import RunDir  # noqa: E402
from .store import RunStatus  # noqa: E402

POLL_S = 1.0
COPY_SYNC_S = 0.5  # the log copy reaches storage at most this long after a line is printed
COPY_DRAIN_S = 5.0  # how long a job that ends waits for its log copy to finish
PROBE_TIMEOUT_S = 60.0
PROBE_MARK = "[lora-lab probe] "  # the probe's one line of JSON in the job log


def connect_ray() -> None:
    """Join the cluster this job runs on (for node ids and Ray Train). ray.init installs its own SIGTERM
    handler; ours goes back, since SIGTERM from stop_job means "stop gracefully" here."""
    import ray

    ray.init(address="auto", logging_level="ERROR", configure_logging=False)
    signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())


def tee_output(path: Path) -> Callable[[], None]:
    """Copy what this process writes to stdout and stderr (file descriptors 1 and 2: C libraries' output and the
    Ray Train workers' lines Ray prints here too) into `path` as it is written, besides Ray's job log. The dashboard
    then tails that file on the shared runs directory, as it does a local run's log, instead of downloading the
    whole job log from the Jobs API on every refresh. Returns what puts the descriptors back.

    The copier is a process of its own, not a thread, so no C library holding the GIL can block it; and it is
    nobody's child here (forked twice, in a session of its own): Ray's stop_job kills the job and its children
    (SIGKILL 3 s after SIGTERM), and the copier outlives them to drain what the job wrote last into both logs."""
    if not hasattr(os, "fork"):  # no fork (Windows): the pages read the Jobs API's log, as before this copy
        return lambda: None
    sys.stdout.flush()
    sys.stderr.flush()
    read_end, write_end = os.pipe()
    done_read, done_write = os.pipe()  # end of file here once the copier has exited
    try:
        middle = os.fork()  # before any thread or Ray connection of this process exists
    except OSError:
        for fd in (read_end, write_end, done_read, done_write):
            os.close(fd)
        return lambda: None
    if middle == 0:
        try:
            os.setsid()
            if os.fork() == 0:  # the copier; the middle process exits at once, so init adopts it
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                os.close(write_end)
                os.close(done_read)
                copy_until_closed(read_end, to_ray=1, path=path)
        finally:
            os._exit(0)
    os.waitpid(middle, 0)
    os.close(read_end)
    os.close(done_write)
    to_ray, to_ray_err = os.dup(1), os.dup(2)
    os.dup2(write_end, 1)
    os.dup2(write_end, 2)
    os.close(write_end)

    def restore() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(to_ray, 1)  # the pipe's last writer is gone: the copier reads to its end and exits
        os.dup2(to_ray_err, 2)
        select.select([done_read], [], [], COPY_DRAIN_S)
        os.close(done_read)

    return restore


def copy_until_closed(source: int, to_ray: int, path: Path) -> None:
    """The copier: everything read from `source` goes to `to_ray` and is appended to `path`, synced at least every
    COPY_SYNC_S while it grows (a dashboard on another machine then sees it soon on network storage), until end
    of file. Whatever goes wrong with the copy, the pipe is drained into Ray's log: a job whose output nobody
    reads would block, or die of a broken pipe."""
    log = None
    try:
        log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        synced, dirty = time.monotonic(), False
        while True:
            if select.select([source], [], [], COPY_SYNC_S)[0]:
                chunk = os.read(source, 1 << 16)
                if not chunk:
                    break
                write_all(to_ray, chunk)
                write_all(log, chunk)
                dirty = True
            if dirty and time.monotonic() - synced >= COPY_SYNC_S:
                sync(log)
                synced, dirty = time.monotonic(), False
        sync(log)
    except Exception:  # noqa: BLE001 - e.g. a runs dir this node cannot write: Ray's copy goes on
        while chunk := os.read(source, 1 << 16):
            write_all(to_ray, chunk)
    finally:
        if log is not None:
            os.close(log)


def write_all(fd: int, data: bytes) -> None:
    """All of `data` to `fd`; a full disk drops it (the copy must not stop: the job would block on output)."""
    try:
        while data:
            data = data[os.write(fd, data):]
    except OSError:
        pass


def sync(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError:
        pass


def watch_stop_file(rd: RunDir) -> None:
    def watch() -> None:
        while not STOP.is_set():
            if rd.stop_request.exists():
                STOP.set()
            time.sleep(POLL_S)

    threading.Thread(target=watch, name="stop-watch", daemon=True).start()


def run(rd: RunDir, resume_from: Path | None, sweep_id: str | None = None, parent_id: str | None = None) -> int:
    from ..distributed import node_name, train_run
    from .worker import failure_reason, stop_note

    connect_ray()
    cfg = ExperimentConfig.from_file(rd.config)
    if cfg.resources.num_workers == 1:  # it trains here, now; with several, rank 0 writes it once Ray placed them
        files.write_json(rd.job, {"pid": os.getpid(), "host": socket.gethostname(), "node": node_name(),
                                  "time": time.time()})
    watch_stop_file(rd)
    print(f"[job] run {rd.id} pid {os.getpid()} on {socket.gethostname()}"
          + (f" resuming from {resume_from}" if resume_from else ""), flush=True)

    outcome: dict = {"status": RunStatus.FAILED.value}
    try:
        if cfg.resources.num_workers == 1:
            import torch

            torch.set_num_threads(cfg.resources.cpus_per_worker or 1)  # what the job reserved
        results = train_run(cfg, rd, on_event=rd.record_event, observe=lambda event: None, stop_flag=STOP,
                            resume_from=resume_from,
                            run_info={"run_id": rd.id, "sweep_id": sweep_id, "parent_id": parent_id,
                                      "runs_dir": str(rd.path.parent)})
        files.write_json(rd.results, results)
        stopped = bool(results.get("stopped"))
        outcome = {"status": (RunStatus.STOPPED if stopped else RunStatus.SUCCEEDED).value,
                   "error": stop_note(results, rd) if stopped else None, "nodes": results.get("nodes")}
    except BaseException as exc:  # noqa: BLE001 - whatever ends the run is recorded, then we exit
        traceback.print_exc()
        outcome = {"status": RunStatus.FAILED.value, "error": failure_reason(exc)}
    finally:
        outcome["time"] = time.time()
        files.write_json(rd.outcome, outcome)
        print(f"[job] run {rd.id} ended {outcome['status']}", flush=True)
    return 1 if outcome["status"] == RunStatus.FAILED.value else 0


# -- the probe: can every node read and write the runs directory? ------------------------------------------------

def probe(runs_dir: Path, nonce: str) -> int:
    """On every alive node, a zero-CPU task checks it sees this runs directory (its registry file) and writes
    `<runs>/cluster-probe/<nonce>/<node id>`. Prints one JSON line: {node id: "ok" or what went wrong}; the
    dashboard then checks that it sees each file the nodes wrote."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    connect_ray()

    @ray.remote(num_cpus=0)
    def write(node: str) -> str:
        try:
            if not layout.registry_path(runs_dir).is_file():
                return f"{runs_dir} has no {layout.REGISTRY_FILE}: this node sees another folder (or none) there"
            folder = layout.probe_path(runs_dir, nonce)
            folder.mkdir(parents=True, exist_ok=True)
            files.atomic_write(folder / node, json.dumps({"host": socket.gethostname(), "time": time.time()}))
            return "ok"
        except OSError as exc:
            return f"{type(exc).__name__}: {exc}"

    nodes = [n["NodeID"] for n in ray.nodes() if n.get("Alive")]
    pending = {node: write.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(node)
               for node in nodes}
    report = {}
    for node, ref in pending.items():
        try:
            report[node] = ray.get(ref, timeout=PROBE_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 - a node that cannot run the task is a failed check too
            report[node] = f"the check could not run there: {type(exc).__name__}: {exc}"
    print(PROBE_MARK + json.dumps(report), flush=True)
    return 0 if all(v == "ok" for v in report.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lora_core.runs.job")
    parser.add_argument("run_dir", nargs="?", help="the run's folder on storage every node shares")
    parser.add_argument("--resume", help="a checkpoint-N folder of the parent run")
    parser.add_argument("--sweep", help="the run's sweep id (for the trackers)")
    parser.add_argument("--parent", help="the run it resumes (for the trackers)")
    parser.add_argument("--probe", nargs=2, metavar=("RUNS_DIR", "NONCE"))
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    if args.probe and not args.run_dir:
        return probe(Path(args.probe[0]), args.probe[1])
    if args.run_dir and not args.probe:
        rd = RunDir(Path(args.run_dir))
        restore = tee_output(rd.log)
        try:
            return run(rd, Path(args.resume) if args.resume else None, args.sweep, args.parent)
        except BaseException:  # before training (joining Ray, reading the config): the reason goes in both logs
            traceback.print_exc()
            return 1
        finally:
            restore()
    parser.print_usage(sys.stderr)
    return 2


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # as the local worker: no library thread keeps a finished job alive
