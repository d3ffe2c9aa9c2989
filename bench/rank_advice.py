"""Does the inspector's rank advice hold? Train LoRA at r=64, read the advice from the saved adapter, train the
advised rank with the same seed and data, and compare (measured and printed; nothing is asserted).

    .venv/bin/python bench/rank_advice.py [--only sample|sst2] [--big-r 64] [--train-rows 2000] [--lr LR]
                                          [--sst2 DIR] [--json out.json]

Data: the bundled 3-class sample (sample:sentiment-3, 600 rows, 20% held out by the seed), and SST-2 from
../shared/datasets/sst2 (2,000 training rows drawn with the seed, the 872-row test.tsv as eval; skipped with a
message when ../shared is absent). Model: MiniLM-L6, LoRA on query+value, alpha 16, dropout 0.1, batch 32, max
length 64, 2 epochs, seed 0, fp32 on CPU, learning rate the config's LoRA default (config.DEFAULT_LEARNING_RATES)
unless --lr. Only lora.r changes between the two runs of a dataset.

Goal to report against: the advised rank within 1 accuracy point of r=64 with at most a quarter of its trainable
parameters.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from common import SST2, run_quietly


def make_config(dataset: str, rank: int, args):
    from lora_core.config import ExperimentConfig

    data = {"train": "sample:sentiment-3", "max_length": args.max_length}
    if dataset == "sst2":
        data = {"train": str(args.sst2 / "train.tsv"), "eval": str(args.sst2 / "test.tsv"),
                "text_column": "sentence", "label_column": "label", "max_length": args.max_length,
                "max_train_samples": args.train_rows}
    return ExperimentConfig.from_dict({
        "name": f"advice-{dataset}-r{rank}", "task": "seq-cls", "method": "lora", "model": {"source": "minilm"},
        "lora": {"r": rank, "alpha": 16, "dropout": 0.1, "target_modules": ["query", "value"]},
        "data": data,
        "train": {"epochs": args.epochs, "batch_size": 32, "learning_rate": args.lr, "seed": args.seed,
                  "logging_steps": 20},
    })


def train_and_inspect(cfg) -> tuple[dict, dict]:
    """(results, the inspector's report as a dict) of one run, trained in a temporary folder."""
    from lora_core.adapters import inspect_adapter
    from lora_core.runs.layout import Artifacts

    return run_quietly(cfg, lambda out: inspect_adapter(Artifacts(out).adapter, base=cfg.model.source).to_dict())


def bench_dataset(dataset: str, args) -> dict:
    big_results, report = train_and_inspect(make_config(dataset, args.big_r, args))
    advice = report["advice"]
    print(f"  r={args.big_r}: accuracy {big_results['accuracy']:.4f}, trainable {big_results['trainable_params']:,}"
          f"; effective ranks {sorted(m['effective_rank'] for m in report['modules'])}", flush=True)
    print(f"  advice: {advice['text']}", flush=True)
    rows = [{"rank": args.big_r, "results": big_results}]
    if advice["advised_r"]:
        small, small_report = train_and_inspect(make_config(dataset, advice["advised_r"], args))
        rows.append({"rank": advice["advised_r"], "results": small, "advice_at_this_rank": small_report["advice"]})
    return {"dataset": dataset, "advice": advice, "rows": rows}


def verdict(entry: dict) -> str:
    rows = entry["rows"]
    if len(rows) < 2:
        return "no smaller rank was advised, so there is nothing to check"
    big, small = rows[0]["results"], rows[1]["results"]
    gap = 100 * (big["accuracy"] - small["accuracy"])
    share = small["trainable_params"] / big["trainable_params"]
    held = gap <= 1.0 and share <= 0.25
    return (f"r={rows[1]['rank']} is {gap:+.1f} accuracy points behind r={rows[0]['rank']} (negative: ahead) with "
            f"{share:.1%} of its trainable parameters: the goal (within 1 point, at most 25%) was "
            f"{'MET' if held else 'NOT met'}")


def print_table(entries: list[dict]) -> None:
    head = f"{'data':<8} {'rank':>5} {'trainable params':>17} {'accuracy':>9} {'macro-F1':>9} {'train s':>8}"
    print(head)
    print("-" * len(head))
    for entry in entries:
        for row in entry["rows"]:
            r = row["results"]
            print(f"{entry['dataset']:<8} {row['rank']:>5} {r['trainable_params']:>17,} {r['accuracy']:>9.4f} "
                  f"{r['macro_f1']:>9.4f} {r['train_time_s']:>8.1f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", choices=["sample", "sst2"], help="run one dataset")
    p.add_argument("--big-r", type=int, default=64)
    p.add_argument("--train-rows", type=int, default=2000)
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--max-length", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the config's LoRA default)")
    p.add_argument("--sst2", type=Path, default=SST2, help=f"the SST-2 folder (default {SST2})")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.lr is None:
        from lora_core.config import DEFAULT_LEARNING_RATES

        args.lr = DEFAULT_LEARNING_RATES["lora"]

    datasets = [args.only] if args.only else ["sample", "sst2"]
    if "sst2" in datasets and not (args.sst2 / "train.tsv").is_file():
        print(f"SKIP sst2: SST-2 not found at {args.sst2} (a fresh clone has no ../shared)")
        datasets.remove("sst2")
    entries = []
    for dataset in datasets:
        print(f"{dataset}: MiniLM-L6, LoRA r={args.big_r} then the advised rank, {args.epochs:g} epochs, "
              f"lr {args.lr:g}, seed {args.seed}", flush=True)
        entries.append(bench_dataset(dataset, args))
    if not entries:
        return 0
    print()
    print_table(entries)
    print()
    for entry in entries:
        print(f"{entry['dataset']}: {entry['advice']['text']}. {verdict(entry)}.")
    print(f"\nRule: {entries[0]['advice']['rule']}")
    print(f"Machine: {os.cpu_count()} cores, 1-min load average {os.getloadavg()[0]:.1f} at the end (times are "
          "wall-clock and shift with other load; accuracies do not).")
    if args.json:
        Path(args.json).write_text(json.dumps(entries, indent=2, default=str), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
