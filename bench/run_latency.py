"""Launcher and registry latency, measured (nothing here is asserted; numbers are printed).

    .venv/bin/python bench/run_latency.py [--runs 1000] [--steps 30]

1. launch -> RUNNING: time from `launcher.launch()` to the RUNNING row (slot claimed, worker spawned), to the
   worker registering itself, and to its first event (Python + torch imports dominate that one).
2. metric written -> readable: a real tiny run (tiny-random-gpt2) appends events; a reader polling
   `storage.read_metrics_since` every 20 ms records when each event became visible, against the `time` the
   worker stamped on it. Goal: under 1 s. A synthetic writer shows the cost of one fsync'd append.
3. listing 1,000 runs: `storage.list_runs()` (registry only) side by side with reading every run's
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

from lora_core import launcher, storage  # noqa: E402
from lora_core.config import ExperimentConfig  # noqa: E402


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


def bench_launch_and_stream(runs_dir: Path, steps: int) -> None:
    print("\n1. launch -> RUNNING, and 2. metric written -> readable (a real tiny run)")
    t0 = time.time()
    run_id = launcher.launch(tiny(steps), runs_dir)
    t_return = time.time() - t0
    record = storage.get_run(run_id, runs_dir)
    t_running = (record.started or time.time()) - t0
    t_registered = t_first = None
    offset, latencies, events = 0, [], 0
    while True:
        now = time.time()
        if t_registered is None:
            record = storage.get_run(run_id, runs_dir)
            if record.heartbeat is not None:
                t_registered = now - t0
        new, offset = storage.read_metrics_since(run_id, offset, runs_dir)
        seen = time.time()
        for event in new:
            events += 1
            if t_first is None:
                t_first = seen - t0
            if isinstance(event.get("time"), (int, float)):
                latencies.append(seen - event["time"])
        record = storage.get_run(run_id, runs_dir)
        if record.terminal:
            new, offset = storage.read_metrics_since(run_id, offset, runs_dir)
            events += len(new)
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


def bench_append(runs_dir: Path, n: int = 300) -> None:
    record = storage.create_run(tiny(1), runs_dir)
    path = storage.run_dir(record.id, runs_dir).metrics
    event = {"kind": "log", "step": 1, "loss": 1.234, "learning_rate": 1e-3, "epoch": 0.5, "progress": 0.1}
    t0 = time.perf_counter()
    for i in range(n):
        storage.append_event(path, dict(event, step=i))
    per = (time.perf_counter() - t0) / n
    t0 = time.perf_counter()
    events = storage.read_metrics(record.id, runs_dir)
    read = time.perf_counter() - t0
    print(f"   one fsync'd append: {ms(per)}; reading all {len(events)} events back: {ms(read)}")


def bench_listing(n: int) -> None:
    print(f"\n3. listing {n} runs")
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp)
        cfg = tiny(1)
        t0 = time.perf_counter()
        ids = [storage.create_run(cfg.replace(name=f"run {i}", **{"lora.r": 1 + i % 64}), runs_dir).id
               for i in range(n)]
        created = time.perf_counter() - t0
        results = {"eval_loss": 1.0, "eval_accuracy": 0.9, "train_time_s": 12.5, "trainable_params": 4096,
                   "total_params": 2_000_000, "peak_mem_bytes": 10 ** 8, "device": "cpu", "stopped": False,
                   "versions": {"torch": "2.13", "transformers": "5.23", "peft": "0.21"}}
        # Every run ends (a QUEUED one would be started for real by launcher.list_runs' reconcile).
        for i, rid in enumerate(ids):
            if i % 3 == 2:
                launcher.cancel(rid, runs_dir)
                continue
            storage.set_status(rid, storage.RUNNING, runs_dir)
            if i % 3 == 0:
                storage.set_status(rid, storage.SUCCEEDED, runs_dir, results=storage.key_results(results))
            else:
                storage.set_status(rid, storage.FAILED, runs_dir, error="RuntimeError: bench")
        print(f"   (made {n} real run dirs in {created:.1f} s; ended them SUCCEEDED with results, FAILED or "
              "cancelled)")

        def registry():
            return storage.list_runs(runs_dir)

        def reconciled():
            return launcher.list_runs(runs_dir)

        def scan_files():
            out = []
            for path in runs_dir.iterdir():
                status = path / storage.STATUS_FILE
                if status.is_file():
                    out.append(json.loads(status.read_text()))
            return out

        timings = {}
        for name, fn in (("storage.list_runs (registry)", registry),
                         ("launcher.list_runs (reconcile + registry)", reconciled),
                         ("reading every status.json", scan_files)):
            fn()  # warm the page cache: we compare steady state
            runs = []
            samples = []
            for _ in range(15):
                t0 = time.perf_counter()
                runs = fn()
                samples.append(time.perf_counter() - t0)
            timings[name] = statistics.median(samples)
            print(f"   {name:<44} median {ms(timings[name])}  ({len(runs)} runs)")
        base = timings["storage.list_runs (registry)"]
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
        runs_dir = Path(tmp)
        os.environ["LORA_LAB_RUNS_DIR"] = tmp
        bench_launch_and_stream(runs_dir, args.steps)
        bench_append(runs_dir)
    bench_listing(args.runs)


if __name__ == "__main__":
    main()
