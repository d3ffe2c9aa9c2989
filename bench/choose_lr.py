"""How the default learning rate of each method (config.DEFAULT_LEARNING_RATES) was chosen: a grid per method,
scored on a validation split carved out of the TRAINING rows only. The eval split the dashboard reports on is
never read here, so the defaults are not tuned on it.

    .venv/bin/python bench/choose_lr.py [--sample sentiment-3] [--epochs 4] [--methods full lora head-only]
                                        [--lr lora=5e-3,1e-2]

The bundled sample is split exactly as a run splits it (data.eval_fraction and the seed of the default config);
the training part is split again (same fraction, seed + 1) into fit / validation rows, written to temporary CSVs
and trained on with the default config (MiniLM, LoRA r=8 on query+value, batch 32), only the learning rate and
the epochs changed. Prints validation accuracy per (method, learning rate) and the best rate of each method.
Runs in this process through `train.run_experiment`; nothing is asserted.
"""
from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
import time
from pathlib import Path

from common import run_quietly

# Ascending: on a tie the lower rate wins (the first one reaching the best validation accuracy).
GRID = {
    "full": [5e-5, 1e-4, 2e-4],
    "lora": [1e-3, 2e-3, 5e-3, 1e-2, 2e-2],
    "head-only": [1e-3, 1e-2, 3e-2],
}


def validation_files(sample: str, tmp: Path) -> tuple[Path, Path, int, int]:
    """fit.csv / val.csv from the training part of the run's own split (the eval part is left out)."""
    from lora_core import data
    from lora_core.config import ExperimentConfig

    base = ExperimentConfig.from_dict({"data": {"train": f"sample:{sample}"}})
    df, source = data.read_table(base.data.train)
    labels = data.check_labels(df, source, "label")
    seed, fraction = base.train.seed, base.data.eval_fraction
    train_idx, _eval_idx = data.stratified_split(labels, len(df), fraction, seed)
    train = df.iloc[train_idx].reset_index(drop=True)
    fit_idx, val_idx = data.stratified_split(labels=[labels[i] for i in train_idx], n=len(train),
                                             fraction=fraction, seed=seed + 1)
    paths = []
    for name, idx in (("fit", fit_idx), ("val", val_idx)):
        path = tmp / f"{name}.csv"
        with path.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["text", "label"])
            writer.writerows(train.iloc[idx][["text", "label"]].itertuples(index=False))
        paths.append(path)
    return paths[0], paths[1], len(fit_idx), len(val_idx)


def run(method: str, lr: float, epochs: float, fit: Path, val: Path) -> dict:
    from lora_core.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict({"name": f"lr-{method}-{lr:g}", "method": method,
                                      "data": {"train": str(fit), "eval": str(val)},
                                      "train": {"learning_rate": lr, "epochs": epochs}})
    return run_quietly(cfg)[0]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sample", default="sentiment-3", choices=["sentiment-2", "sentiment-3"])
    p.add_argument("--epochs", type=float, default=None, help="default: the config's default epochs")
    p.add_argument("--methods", nargs="*", default=list(GRID), choices=list(GRID))
    p.add_argument("--lr", action="append", default=[], metavar="METHOD=LR1,LR2",
                   help="replace a method's grid, e.g. --lr lora=5e-3,1e-2 (repeatable)")
    args = p.parse_args(argv)
    grid = dict(GRID)
    for item in args.lr:
        method, _, values = item.partition("=")
        if method not in GRID or not values:
            p.error(f"--lr {item!r}: give METHOD=LR1,LR2 with METHOD one of {', '.join(GRID)}")
        grid[method] = [float(v) for v in values.split(",")]

    from lora_core.config import ExperimentConfig

    epochs = args.epochs or ExperimentConfig().train.epochs
    tmp = Path(tempfile.mkdtemp(prefix="choose-lr-data-"))
    try:
        fit, val, n_fit, n_val = validation_files(args.sample, tmp)
        print(f"sample:{args.sample}: {n_fit} fit rows, {n_val} validation rows (both from the training part; "
              f"the eval split is not used), {epochs:g} epochs", flush=True)
        best: dict[str, tuple[float, float]] = {}
        for method in args.methods:
            for lr in grid[method]:
                started = time.perf_counter()
                res = run(method, lr, epochs, fit, val)
                print(f"  {method:<10} lr {lr:<7g} validation accuracy {res['accuracy']:.3f}  "
                      f"({res['steps']} steps, {time.perf_counter() - started:.0f} s)", flush=True)
                if method not in best or res["accuracy"] > best[method][1]:
                    best[method] = (lr, res["accuracy"])
        print()
        for method, (lr, acc) in best.items():
            print(f"best {method:<10} lr {lr:g} (validation accuracy {acc:.3f})")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
