"""What the benchmarks share: the repository on sys.path, offline hubs, where SST-2 lives, and one training run
in a throw-away folder. Import it first (`from common import ...`): it sets the environment before lora_core."""
from __future__ import annotations

import contextlib
import gc
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# ../shared beside the repository (a fresh clone has none); $LORA_LAB_SST2 points elsewhere (a worktree)
SST2 = Path(os.environ.get("LORA_LAB_SST2") or ROOT.parent / "shared" / "datasets" / "sst2")


def run_quietly(cfg, after: Callable[[Path], Any] | None = None) -> tuple[dict, Any]:
    """(results, after(artifacts folder)) of one run trained in a temporary folder that is removed afterwards
    (full fine-tuning checkpoints are ~0.3 GB each); the Trainer's log lines are silenced."""
    from lora_core.train import run_experiment

    out = Path(tempfile.mkdtemp(prefix="lora-lab-bench-"))
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            results = run_experiment(cfg, out)
        return results, after(out) if after else None
    finally:
        shutil.rmtree(out, ignore_errors=True)
        gc.collect()
