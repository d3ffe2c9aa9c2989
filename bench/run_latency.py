"""Launcher and registry latency, measured (nothing here is asserted; numbers are printed).

    .venv/bin/python bench/run_latency.py [--runs 1000] [--steps 30]

1. launch -> RUNNING: time from `Runs.launch()` to the RUNNING row (slot claimed, worker spawned), to the
   worker registering itself, and to its first event (Python + torch imports dominate that one).
2. metric written -> readable: a real tiny run (tiny-random-gpt2) appends events; a reader polling
   `Runs.metrics(run_id, since=offset)` every 20 ms records when each event became visible, against the `time` the
   worker stamped on it. Goal: under 1 s. A synthetic writer shows the cost of one fsync'd append.
3. listing 1,000 runs: `Runs.list(reconcile=False)` (registry only) side by side with reading every run's
   status.json from disk (what a registry-less design would do). Goal: under 200 ms.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from lora_core.config import ExperimentConfig  # noqa: E402
from lora_core.runs import RunDir, Runs, RunStatus, files, launcher, store  # noqa: E402


def ms(seconds: float) -> str:
    return f"{seconds * 1000:8.1f} ms"


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def tiny(steps: int) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "name": "bench", "task": "causal-lm", "method": "lora", "model": {"source": "tiny-random-gpt2"},
        "lora": {"r": 2}, "data": {"train": "sample:instructions", "max_length": 32, "max_train_samples": 16,
                                   "max_eval_samples": 4},
        "train": {"max_steps": steps, "batch_size": 4, "logging_steps": 1, "eval_steps": 10},
        "generate": {"prompts": ["Hi"], "max_new_tokens": 2}})


def bench_launch_and_stream(runs: Runs, steps: int) -> None:
    print("\n1. launch -> RUNNING, and 2. metric written -> readable (a real tiny run)")
    t0 = time.time()
    run_id = runs.launch(tiny(steps))
    t_return = time.time() - t0
    record = runs.get(run_id, reconcile=False)
    t_running = (record.started or time.time()) - t0
    t_registered = t_first = None
    offset, latencies, events = 0, [], 0
    while True:
        now = time.time()
        if t_registered is None:
            record = runs.get(run_id, reconcile=False)
            if record.heartbeat is not None:
                t_registered = now - t0
        new = runs.metrics(run_id, since=offset)
        offset = new.offset
        seen = time.time()
        for event in new:
            events += 1
            if t_first is None:
                t_first = seen - t0
            if isinstance(event.get("time"), (int, float)):
                latencies.append(seen - event["time"])
        record = runs.get(run_id, reconcile=False)
        if record.terminal:
            events += len(runs.metrics(run_id, since=offset))
            break
        time.sleep(0.02)
    print(f"   launch() returned after            {ms(t_return)}")
    print(f"   run RUNNING (slot claimed) after   {ms(t_running)}")
    print(f"   worker registered after            {ms(t_registered or float('nan'))}")
    print(f"   first event readable after         {ms(t_first or float('nan'))}   (Python + torch imports)")
    print(f"   run ended {record.status} after {time.time() - t0:.1f} s, {events} events")
    if latencies:
        print(f"   write -> readable, reader polling every 20 ms: median {ms(statistics.median(latencies))}, "
              f"p95 {ms(pct(latencies, 0.95))}, max {ms(max(latencies))}   (goal < 1000 ms)")


def bench_append(runs: Runs, n: int = 300) -> None:
    record = runs.create(tiny(1))
    path = record.dir.metrics
    event = {"kind": "log", "step": 1, "loss": 1.234, "learning_rate": 1e-3, "epoch": 0.5, "progress": 0.1}
    t0 = time.perf_counter()
    for i in range(n):
        files.append_event(path, dict(event, step=i))
    per = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    events = runs.metrics(record.id)
    read = time.perf_counter() - t0
    print(f"   one fsync'd append: {ms(per)}; reading all {len(events)} events back: {ms(read)}")


def bench_listing(n: int) -> None:
    print(f"\n3. listing {n} runs")
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        runs = Runs(runs_dir)
        cfg = tiny(1)
        t0 = time.perf_counter()
        ids = [runs.create(cfg.replace(name=f"run {i}", **{"lora.r": 1 + i % 64})).id for i in range(n)]
        created = time.perf_counter() - t0
        results = {"eval_loss": 1.0, "eval_accuracy": 0.9, "train_time_s": 12.5, "trainable_params": 4096,
                   "total_params": 2_000_000, "peak_mem_bytes": 10 ** 8, "device": "cpu", "stopped": False,
                   "versions": {"torch": "2.13", "transformers": "5.23", "peft": "0.21"}}
        # Every run ends (a QUEUED one would be started for real by the reconciling listing).
        for i, rid in enumerate(ids):
            if i % 3 == 2:
                runs.cancel(rid)
                continue
            runs.registry.set_status(rid, RunStatus.RUNNING)
            if i % 3 == 0:
                runs.registry.set_status(rid, RunStatus.SUCCEEDED, results=store.key_results(results))
            else:
                runs.registry.set_status(rid, RunStatus.FAILED, error="RuntimeError: bench")
        print(f"   (made {n} real run dirs in {created:.1f} s; ended them SUCCEEDED with results, FAILED or "
              "cancelled)")

        def registry():
            return runs.list(reconcile=False)

        def reconciled():
            return runs.list()

        def scan_files():
            out = []
            for path in runs_dir.iterdir():
                status = RunDir(path).status
                if status.is_file():
                    out.append(json.loads(status.read_text()))
            return out

        timings = {}
        for name, fn in (("Runs.list(reconcile=False) (registry)", registry),
                         ("Runs.list() (reconcile + registry)", reconciled),
                         ("reading every status.json", scan_files)):
            listed = fn()  # warm the page cache: we compare steady state
            samples = []
            for _ in range(15):
                t0 = time.perf_counter()
                listed = fn()
                samples.append(time.perf_counter() - t0)
            timings[name] = statistics.median(samples)
            print(f"   {name:<44} median {ms(timings[name])}  ({len(listed)} runs)")
        base = timings["Runs.list(reconcile=False) (registry)"]
        print(f"   registry listing is {timings['reading every status.json'] / base:.1f}x faster than reading the "
              f"files; goal < 200 ms: {'met' if base < 0.2 else 'NOT met'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs, max concurrent runs "
          f"{launcher.max_concurrent()}")
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["LORA_LAB_RUNS_DIR"] = tmp
        runs = Runs(tmp)
        bench_launch_and_stream(runs, args.steps)
        bench_append(runs)
    bench_listing(args.runs)


if __name__ == "__main__":
    main()
