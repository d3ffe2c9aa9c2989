"""The same run on 1 and 2 workers, locally (DDP through torchrun's launcher) and on a Ray cluster (a Ray job; 2
workers through Ray Train), side by side in one table: wall time, samples/s, final eval loss, and the overhead
of each backend from submission to the first metric. Times are printed; nothing is asserted.

    .venv/bin/python bench/scale_out.py [--steps 30] [--skip-ray]

The run: MiniLM-L6, LoRA r=8 on query+value, the bundled sample:sentiment-2, max length 48, a global batch of 16
(16 on one worker, 8 + 8 on two), the same seed, `--steps` optimizer steps, evaluated at the end. The cluster is
started here on loopback like the tests' (a head and a second node, one CPU each, token authentication on) and
ended by pid. On a 2-core machine no speed-up is expected: the point is equal results and what each backend
costs before the first step (goal: under 15 s from submission to the first metric on the local cluster).

Beside them, Ray Train's own floor on the same cluster: a Ray job whose TorchTrainer (2 workers, one CPU each,
SPREAD, like the run's) has a training function that only notes the time. Submission to that function running on
both ranks is what any 2-worker Ray Train job costs here, before a model, a tokenizer or LoRA Lab is imported.
"""
from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import ROOT

sys.path.insert(0, str(ROOT / "tests"))  # the tests' LocalRayCluster, ended by pid

GLOBAL_BATCH, SEED = 16, 0
# the floor's job: Ray Train with 2 workers placed as a run's are, and a training function that does nothing
FLOOR_JOB = """import os, sys, time
from ray.train import FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

def note_time(config):
    import ray.train
    rank = ray.train.get_context().get_world_rank()
    with open(os.path.join(config["out"], f"rank{rank}"), "w") as f:
        f.write(repr(time.time()))

TorchTrainer(note_time, train_loop_config={"out": sys.argv[1]},
             scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}, placement_strategy="SPREAD"),
             run_config=RunConfig(storage_path=sys.argv[1], failure_config=FailureConfig(max_failures=0))).fit()
"""


def config(steps: int, workers: int, backend: str, address: str | None):
    from lora_core.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "name": f"scale-{backend}-{workers}", "model": {"source": "minilm"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.0, "target_modules": ["query", "value"]},
        "data": {"train": "sample:sentiment-2", "max_length": 48},
        "train": {"max_steps": steps, "batch_size": GLOBAL_BATCH // workers, "learning_rate": 1e-3, "seed": SEED,
                  "logging_steps": 1},
        "resources": {"backend": backend, "num_workers": workers, "ray_address": address,
                      "cpus_per_worker": 1 if backend == "ray" else None},
    })


def measure(runs, cfg) -> dict:
    """Launch, then poll: seconds to the first metric (the first logged training step) and to the end."""
    started = time.perf_counter()
    run_id = runs.launch(cfg)
    first = None
    while True:
        record = runs.get(run_id)
        if first is None and any("loss" in e for e in runs.metrics(run_id)):
            first = time.perf_counter() - started
        if record.terminal:
            break
        time.sleep(0.2)
    wall = time.perf_counter() - started
    results = runs.results(run_id) or {}
    speeds = [e["samples_per_s"] for e in runs.metrics(run_id) if e.get("samples_per_s")]
    return {"status": record.status, "error": record.error, "wall_s": wall, "first_metric_s": first,
            "samples_per_s": statistics.median(speeds) if speeds else None, "eval_loss": results.get("eval_loss"),
            "world_size": results.get("world_size"), "nodes": len(set(results.get("nodes") or [])),
            "train_s": results.get("train_time_s")}


def ray_train_floor(address: str, work: Path) -> float:
    """Seconds from submitting FLOOR_JOB to its training function running on both ranks (as LoRA Lab submits a
    2-worker run: entrypoint needing no CPU, Ray Train's preemption watcher off)."""
    from ray.job_submission import JobSubmissionClient

    from lora_core.runs import ray_jobs

    work.mkdir(parents=True, exist_ok=True)
    script = work / "floor_job.py"
    script.write_text(FLOOR_JOB)
    client = JobSubmissionClient(address)
    started = time.time()
    python = os.environ.get(ray_jobs.PYTHON_ENV, "python")  # the interpreter LoRA Lab's jobs use on the nodes
    job_id = client.submit_job(entrypoint=shlex.join([python, str(script), str(work)]), entrypoint_num_cpus=0,
                               runtime_env={"env_vars": {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0"}})
    marks, checked = [work / "rank0", work / "rank1"], time.time()
    while not all(m.exists() for m in marks):
        if time.time() - checked > 1.0:  # the Jobs API once a second: the files are the clock
            checked = time.time()
            if client.get_job_status(job_id).is_terminal():
                raise SystemExit(f"the floor job ended before both ranks ran:\n{client.get_job_logs(job_id)[-2000:]}")
        time.sleep(0.05)
    while not client.get_job_status(job_id).is_terminal():  # it ends on its own; the cluster is free again
        time.sleep(0.2)
    time.sleep(0.2)  # both files written and closed by now; read them whole
    return max(float(m.read_text()) for m in marks) - started


def fmt(value, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--skip-ray", action="store_true", help="local backend only")
    args = p.parse_args(argv)

    from helpers import LocalRayCluster, stop_leftovers
    from lora_core.runs import Runs, RunStatus

    root = Path(tempfile.mkdtemp(prefix="scale-"))
    floor = None
    os.environ["LORA_LAB_MAX_CONCURRENT"] = "2"  # a 2-worker local run takes both slots of this machine
    runs = Runs(root / "runs")
    print(f"MiniLM LoRA r=8, sample:sentiment-2, {args.steps} steps, global batch {GLOBAL_BATCH}, seed {SEED}; "
          f"{os.cpu_count()} cores")
    try:
        rows = [("local", 1, measure(runs, config(args.steps, 1, "local", None))),
                ("local", 2, measure(runs, config(args.steps, 2, "local", None)))]
        if not args.skip_ray:
            # the cluster's nodes take this environment (LocalRayCluster copies it)
            os.environ.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(16))
            began = time.perf_counter()
            cluster = LocalRayCluster(Path(tempfile.mkdtemp(prefix="r", dir="/tmp")), nodes=2, cpus=1).start()
            print(f"local Ray cluster (2 nodes × 1 CPU, token auth) up in {time.perf_counter() - began:.1f} s")
            try:
                for workers in (1, 2):
                    rows.append(("ray", workers, measure(runs, config(args.steps, workers, "ray",
                                                                      cluster.address))))
                # the first Ray launch also probes the runs dir and uploads lora_core once: the same again, warm
                rows.append(("ray (again)", 1, measure(runs, config(args.steps, 1, "ray", cluster.address))))
                floor = ray_train_floor(cluster.address, root / "floor")
            finally:
                cluster.close()
                shutil.rmtree(cluster.root, ignore_errors=True)
    finally:  # an interrupted bench leaves no worker training
        stop_leftovers(runs)
        shutil.rmtree(root, ignore_errors=True)

    print(f"\n{'backend':<12} {'workers':>7} {'nodes':>5} {'status':<10} {'wall (s)':>9} {'1st metric (s)':>15} "
          f"{'train (s)':>10} {'samples/s':>10} {'eval loss':>10}")
    for backend, workers, m in rows:
        print(f"{backend:<12} {workers:>7} {m['nodes']:>5} {m['status'].value:<10} {m['wall_s']:>9.1f} "
              f"{fmt(m['first_metric_s'], '.1f'):>15} {fmt(m['train_s'], '.1f'):>10} "
              f"{fmt(m['samples_per_s'], '.1f'):>10} {fmt(m['eval_loss'], '.4f'):>10}")
        if m["error"] and m["status"] is not RunStatus.SUCCEEDED:
            print(f"    {m['error']}")
    base = rows[0][2]["eval_loss"]
    if base:
        spread = max(abs(m["eval_loss"] - base) / base for _, _, m in rows if m["eval_loss"] is not None)
        print(f"\nlargest eval-loss difference from local × 1: {spread:.2%}")
    ray_first = [m["first_metric_s"] for b, _, m in rows if b.startswith("ray") and m["first_metric_s"]]
    if ray_first:
        print(f"Ray submission to first metric: {', '.join(f'{s:.1f} s' for s in ray_first)} (goal < 15 s)")
    if floor is not None:
        print(f"Ray Train's floor here: {floor:.1f} s from submission to a training function that does nothing "
              "running on both ranks (2 workers, one per node)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
