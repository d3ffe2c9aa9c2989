"""Helpers shared by the test folders: tiny configs, waiting for a condition, the CLI in a subprocess, a few
optimizer steps by hand, a RUNNING run that trains nothing, and stopping whatever runs a test left going."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lora_core import models
from lora_core.config import ExperimentConfig
from lora_core.runs import RunRecord, Runs, RunStatus, layout
from lora_core.runs.launcher import this_host

ROOT = Path(__file__).resolve().parents[1]

# Tiny runs that train in seconds on a CPU: tiny-random-gpt2, a few steps, a few rows.
TINY_SEQ_CLS = {
    "name": "seed", "task": "seq-cls", "method": "lora", "model": {"source": "tiny-random-gpt2"},
    "lora": {"r": 2},
    "data": {"train": "sample:sentiment-2", "max_train_samples": 16, "max_eval_samples": 16, "max_length": 32},
    "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1},
}
TINY_CAUSAL = {
    "name": "seed-gen", "task": "causal-lm", "method": "lora", "model": {"source": "tiny-random-gpt2"},
    "lora": {"r": 2},
    "data": {"train": "sample:instructions", "max_train_samples": 16, "max_eval_samples": 8, "max_length": 32},
    "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1},
    "generate": {"prompts": ["Hi"], "max_new_tokens": 4},
}


def tiny_config(**dotted) -> ExperimentConfig:
    """TINY_SEQ_CLS with dotted keys changed, e.g. tiny_config(**{"train.max_steps": 5})."""
    cfg = ExperimentConfig.from_dict(TINY_SEQ_CLS)
    return cfg.replace(**dotted) if dotted else cfg


def tiny_causal(name: str = "tiny", max_steps: int = 400, **dotted) -> ExperimentConfig:
    """A causal-LM LoRA run on tiny-random-gpt2 with fast steps (a long one by default, for stopping)."""
    base = {"name": name, "task": "causal-lm", "method": "lora", "model": {"source": "tiny-random-gpt2"},
            "lora": {"r": 2},
            "data": {"train": "sample:instructions", "max_length": 32, "max_train_samples": 16,
                     "max_eval_samples": 4},
            "train": {"max_steps": max_steps, "batch_size": 4, "logging_steps": 1},
            "generate": {"prompts": ["Hi"], "max_new_tokens": 2}}
    cfg = ExperimentConfig.from_dict(base)
    return cfg.replace(**dotted) if dotted else cfg


def wait_until(predicate, timeout: float = 120.0, poll: float = 0.2, what: str = "condition"):
    """The first truthy value of predicate(), polled; AssertionError naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cli(*args: str, check: bool = True, timeout: float = 120, input: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m lora_core ARGS` from the repository root (with `input` on stdin, `env` added to the
    environment); with check, it must exit 0."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "lora_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def fake_running(runs: Runs, cfg: ExperimentConfig, owner: str):
    """A RUNNING run owned by `owner` whose worker is a `sleep` in its own process group: pages show it live and
    its Stop really stops something, yet nothing trains. It is registered as RUNNING from the start, so a
    dashboard reconciling meanwhile never starts a worker for it. stop_leftovers ends it."""
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    path = layout.run_path(runs.root, layout.new_run_id(cfg.name))
    path.mkdir()
    run_dir = layout.RunDir(path)
    run_dir.artifacts.path.mkdir()
    run_dir.config.write_text(cfg.to_yaml(), encoding="utf-8")
    run_dir.metrics.touch()
    run_dir.log.touch()
    now = time.time()
    return runs.registry.insert(RunRecord(
        id=run_dir.id, name=cfg.name, status=RunStatus.RUNNING, created=now, started=now, task=cfg.task,
        model=cfg.model.source, method=cfg.method, owner=owner, runs_dir=str(runs.root), pid=sleeper.pid,
        pgid=sleeper.pid, pid_created=psutil.Process(sleeper.pid).create_time(), host=this_host(), heartbeat=now))


def stop_leftovers(runs: Runs, timeout: float = 20.0) -> None:
    """Cancel queued runs and stop running ones (best effort), so no worker outlives the test that made it."""
    for record in runs.list(status=[RunStatus.QUEUED, RunStatus.RUNNING], reconcile=False):
        try:
            runs.stop(record.id, timeout=timeout)
        except Exception:  # noqa: BLE001 - the next one still gets stopped
            pass


def train_by_hand(cfg: ExperimentConfig, texts: list[str], labels: list[int] | None = None, steps: int = 4,
                  id2label: dict | None = None):
    """(model, tokenizer) after a few real AdamW steps on `texts`, seeded like the recipe (train.seed).
    seq-cls trains on `labels`; causal-lm on the texts themselves."""
    import torch
    from transformers import set_seed

    set_seed(cfg.train.seed)
    model, tok = models.load_for_training(cfg, num_labels=len(id2label) if id2label else 2, id2label=id2label)
    enc = tok(texts, return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch["labels"] = torch.tensor(labels) if cfg.task == "seq-cls" else \
        enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok
