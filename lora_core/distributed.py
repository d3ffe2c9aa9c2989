"""One run on several training processes: data-parallel training (DDP) of the same recipe on every rank.

    results = train_run(cfg, run_dir, on_event=..., observe=..., stop_flag=..., resume_from=None, run_info=...)

`resources.num_workers: 1` is the plain recipe in this process, exactly as before. More workers are launched by
existing engines, never by a scheduler of ours:
  * local: torchrun's launch API (`torch.distributed.launcher.elastic_launch`, standalone rendezvous on a free
    port), one rank per process, all children of the calling worker and so in its process group (a stop or a
    kill reaches every rank); gloo on CPU, NCCL on GPU;
  * ray: Ray Train's `TorchTrainer` with Ray's Hugging Face Trainer integration (`prepare_trainer`), workers
    placed SPREAD over the cluster's nodes; Ray initializes the process group.

Every rank runs `train.run_experiment` on the same config and seed; the Trainer shards the batches (a global step
sees num_workers × train.batch_size rows) and averages the gradients. Rank 0 alone writes the metrics stream,
the results, the adapter and the checkpoints, and alone reports to the trackers (`run_info`, tracking.py); a
resumed run's elapsed time goes on from its parent's on every backend. A stop is asked for through the run's
stop.request file; rank 0 reads it and every rank learns the answer at the same step (an all-reduce), so all of
them checkpoint and leave together instead of one waiting forever in a collective.
"""
from __future__ import annotations

import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from . import train
from .config import ExperimentConfig
from .errors import RunError
from .runs import files
from .runs.layout import RunDir

WATCH_S = 1.0  # how often the launching process passes a stop on and reads progress while ranks train


class RankError(RunError):
    """A training process of a multi-process run died or failed; the message names the rank."""


def node_name() -> str:
    """Where this process runs: the Ray node id inside a Ray job or worker, else the host name."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        return ray.get_runtime_context().get_node_id()
    return socket.gethostname()


def train_run(cfg: ExperimentConfig, rd: RunDir, *, on_event: Callable[[dict], None],
              observe: Callable[[dict], None], stop_flag: threading.Event, resume_from: Path | None,
              run_info: dict | None = None) -> dict:
    """Train the run in `rd` on cfg.resources.num_workers processes and return rank 0's results, with
    `nodes` (where each rank ran). One worker: this process, as it always did. `on_event` gets the events of an
    in-process run; with several ranks rank 0 appends them to the metrics stream itself and `observe` sees
    each one as it is read back. Setting `stop_flag` asks every rank to stop. `run_info`: who the run is, for
    the trackers (train.run_experiment)."""
    workers = cfg.resources.num_workers
    if workers == 1:
        results = train.run_experiment(cfg, rd.artifacts, on_event=continued(on_event, inherited_elapsed(rd)),
                                       should_stop=stop_flag.is_set, resume_from=resume_from, run_info=run_info)
        results["nodes"] = [node_name()]
        return results
    rd.stop_request.unlink(missing_ok=True)  # a resumed run's folder is new; this guards against reuse
    with RankWatch(rd, stop_flag, observe):
        if cfg.resources.backend == "ray":
            launch_ray_train(cfg, rd, resume_from, run_info)
        else:
            launch_local(rd, resume_from, workers, run_info)
    results = files.read_json(rd.results)
    if not results:
        raise RankError(f"the {workers} training processes ended without rank 0 writing its results")
    return results


def inherited_elapsed(rd: RunDir) -> float:
    """The training time a resumed run inherits: the parent's latest elapsed_s up to the checkpoint, from the
    events copied into this run's stream (0 for a fresh run)."""
    events, _ = files.read_events(rd.metrics)
    return max((e["elapsed_s"] for e in events
                if e.get("inherited_from") and isinstance(e.get("elapsed_s"), (int, float))), default=0.0)


def continued(on_event: Callable[[dict], None], elapsed_before: float) -> Callable[[dict], None]:
    """on_event with elapsed_s going on from the parent's, so a resumed run's curves and clock never go back."""
    if not elapsed_before:
        return on_event

    def shifted(event: dict) -> None:
        if isinstance(event.get("elapsed_s"), (int, float)):
            event = dict(event, elapsed_s=event["elapsed_s"] + elapsed_before)
        on_event(event)
    return shifted


class RankWatch(threading.Thread):
    """While ranks train in other processes: turns the stop flag into the stop.request file they poll, and
    hands every event rank 0 appends to `observe` (the worker's heartbeat shows progress from it)."""

    def __init__(self, rd: RunDir, stop_flag: threading.Event, observe: Callable[[dict], None]):
        super().__init__(name="rank-watch", daemon=True)
        self.rd, self.stop_flag, self.observe = rd, stop_flag, observe
        self.done = threading.Event()
        self.offset = 0

    def __enter__(self) -> "RankWatch":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.done.set()
        self.join()

    def run(self) -> None:
        while not self.done.wait(WATCH_S):
            if self.stop_flag.is_set():
                self.rd.request_stop()
            events, self.offset = files.read_events(self.rd.metrics, self.offset)
            for event in events:
                self.observe(event)


# -- inside every rank -------------------------------------------------------------------------------------------

def rank_main(run_dir: str, resume_from: str | None, launcher_pid: int | None = None,
              prepare: Callable | None = None, run_info: dict | None = None) -> dict | None:
    """One rank of a multi-process run: the recipe with rank 0 writing events, results and artifacts and
    reporting to the trackers. `launcher_pid`: exit when that process (the local worker) is gone, so no rank
    outlives it. `prepare`: the Trainer wrapper of the backend (Ray's prepare_trainer). Returns rank 0's results
    (None on other ranks)."""
    import torch
    import torch.distributed as dist

    if launcher_pid:
        _exit_with(launcher_pid)
    if not dist.is_initialized():  # torchrun's launcher sets the env:// variables; Ray Train initializes it
        if torch.cuda.is_available():  # one GPU per rank, before anything (a 4-bit model) lands on one
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    rd = RunDir(Path(run_dir))
    cfg = ExperimentConfig.from_file(rd.config)
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(threads_per_rank(cfg, world))
    placed: list = [None] * world
    dist.all_gather_object(placed, (node_name(), os.getpid()))
    nodes = [node for node, _ in placed]
    main = rank == 0
    if main:
        files.write_json(rd.job, {"ranks": [{"rank": r, "node": node, "pid": pid} for r, (node, pid) in
                                            enumerate(placed)], "pid": os.getpid(), "time": time.time()})

    events = continued(rd.record_event, inherited_elapsed(rd)) if main else None
    results = train.run_experiment(cfg, rd.artifacts, on_event=events,
                                   should_stop=agreed(lambda: rd.stop_request.exists() if main else False),
                                   resume_from=Path(resume_from) if resume_from else None, prepare_trainer=prepare,
                                   run_info=run_info if main else None)
    if not main:
        return None
    results["nodes"] = nodes
    files.write_json(rd.results, results)
    return results


def threads_per_rank(cfg: ExperimentConfig, world: int) -> int:
    """resources.cpus_per_worker, else this machine's cores split evenly over the ranks on it."""
    if cfg.resources.cpus_per_worker:
        return cfg.resources.cpus_per_worker
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world))
    return max(1, (os.cpu_count() or 1) // max(1, local))


def agreed(ask: Callable[[], bool]) -> Callable[[], bool]:
    """A should_stop that every rank answers alike: the largest of the ranks' answers (one tiny all-reduce).
    The recipe asks it at the same points on every rank (between phases, after each optimizer step)."""
    import torch
    import torch.distributed as dist

    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None

    def should_stop() -> bool:
        flag = torch.tensor([1.0 if ask() else 0.0], device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    return should_stop


def _exit_with(pid: int) -> None:
    """End this rank as soon as process `pid` (its launcher) is gone: a SIGKILLed worker leaves no rank behind."""
    def watch() -> None:
        while os.getppid() == pid:
            time.sleep(WATCH_S)
        os._exit(1)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


# -- local: torchrun's launch API --------------------------------------------------------------------------------

def launch_local(rd: RunDir, resume_from: Path | None, workers: int, run_info: dict | None = None) -> None:
    """`workers` ranks on this machine through torchrun's launcher (standalone rendezvous on a free port, no
    restarts). A rank that dies ends the others and raises RankError naming it."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=workers, run_id=rd.id, rdzv_backend="c10d",
                          rdzv_endpoint="127.0.0.1:0", max_restarts=0, monitor_interval=0.5,
                          start_method="spawn",
                          # SIGTERM stays the worker's "stop gracefully" (the launcher would turn it into a kill)
                          signals_to_handle="SIGHUP,SIGQUIT")
    try:
        elastic_launch(config, rank_main)(str(rd.path), str(resume_from) if resume_from else None, os.getpid(),
                                          None, run_info)
    except ChildFailedError as exc:
        raise RankError(describe_failures(exc.failures)) from None


def describe_failures(failures: dict) -> str:
    """'rank 1 (pid 123) was killed by SIGKILL' for the first rank that failed, then the others."""
    ordered = sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    parts = []
    for rank, failure in ordered:
        if failure.exitcode is not None and failure.exitcode < 0:
            how = f"was killed by {failure.signal_name()}"
        else:
            message = (failure.message or "").strip().splitlines()
            how = f"failed with exit code {failure.exitcode}" + (f": {message[-1][:300]}" if message else "")
        parts.append(f"rank {rank} (pid {failure.pid}) {how}")
    first, rest = parts[0], parts[1:]
    return f"training process {first}" + (f"; then {', '.join(rest)}" if rest else "") + \
        "; the other ranks were stopped"


# -- ray: Ray Train's TorchTrainer ---------------------------------------------------------------------------------

def _ray_train_loop(config: dict) -> None:
    """The per-worker function of the TorchTrainer: the same rank_main, with Ray's Trainer integration."""
    from ray.train.huggingface.transformers import prepare_trainer

    rank_main(config["run_dir"], config["resume_from"], prepare=prepare_trainer, run_info=config.get("run_info"))


def launch_ray_train(cfg: ExperimentConfig, rd: RunDir, resume_from: Path | None,
                     run_info: dict | None = None) -> None:
    """cfg.resources.num_workers Ray Train workers, SPREAD over the nodes, no retries (a failure is the run's).
    Checkpoints go where the recipe writes them (the run's folder on shared storage), not through Ray's
    checkpoint reporting, so resume reads the same files on either backend."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Ray Train's preemption watcher is one more actor (a fresh Python process, ~2.6 s here) before the first
    # step; a run allows no retries, so a drained node fails it with or without the watcher. Set it to 1 to keep it.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    res = cfg.resources
    per_worker = {"CPU": res.cpus_per_worker or 1}
    if res.gpus_per_worker:
        per_worker["GPU"] = res.gpus_per_worker
    trainer = TorchTrainer(
        _ray_train_loop,
        train_loop_config={"run_dir": str(rd.path), "resume_from": str(resume_from) if resume_from else None,
                           "run_info": run_info},
        scaling_config=ScalingConfig(num_workers=res.num_workers, use_gpu=bool(res.gpus_per_worker),
                                     resources_per_worker=per_worker, placement_strategy="SPREAD"),
        run_config=RunConfig(name=rd.id, storage_path=str(rd.artifacts.ray_storage),
                             failure_config=FailureConfig(max_failures=0)))
    try:
        trainer.fit()
    except Exception as exc:  # Ray Train's TrainingFailedError: say which rank, in one line
        raise RankError(describe_ray_failure(exc)) from None


def describe_ray_failure(exc: Exception) -> str:
    failures = getattr(exc, "worker_failures", None) or {}
    if not failures:
        return f"Ray Train failed: {str(exc).strip().splitlines()[-1][:500] if str(exc).strip() else exc!r}"
    parts = []
    for rank, error in sorted(failures.items()):
        text = str(error).strip().splitlines()
        parts.append(f"rank {rank}: {type(error).__name__}" + (f": {text[0][:300]}" if text else ""))
    return "training process " + "; ".join(parts) + "; the other ranks were stopped"
