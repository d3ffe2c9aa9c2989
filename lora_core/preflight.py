"""The one check before a run launches, used by every launch path (`Runs.launch`, `sweep`, `resume`: the CLI, the
dashboard and Python callers alike): everything a worker would fail on that can be known without training is
refused here, with the engine's own error naming the field, the file, the column and the row.

    report = check(cfg)                  # LoraLabError, or what was checked: classes, position limit, memory

  * the device: fp16 needs a CUDA GPU;
  * the data (`data.check_rows`, the worker's own first step): columns, empty cells, labels (integer ids below
    MAX_CLASSES, every eval label seen in training, at most MAX_CLASSES classes), rows enough for an eval split;
  * the model, read from its config.json without torch: `data.max_length` within its position limit, and for
    causal-lm each prompt plus `generate.max_new_tokens` within it too; named target modules exist;
  * a model that ships its own code (auto_map) gets only the config.json checks: describing its layers or
    tokenizing would run that code in the caller's process (the dashboard), and it runs only in a worker;
  * memory: the estimated peak of the run against this machine's memory (RAM on a CPU, the GPU's on CUDA).
    Refused with the estimate and the largest batch that fits, unless the caller passes `ignore_memory=True`.
    The estimate pads every row to `data.max_length`, an upper bound: real batches pad to their longest row.

Sweeps share one `Preflight`, so the data and the model are read once for all their configs.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field

import psutil

from . import data, memory, models
from .config import BUNDLED_MODELS, ConfigError, ExperimentConfig
from .errors import EstimateError
from .memory.settings import detected_device

POSITION_KEYS = ("max_position_embeddings", "n_positions", "n_ctx", "max_seq_len", "seq_length")
POSITION_OFFSET = {"roberta": 2, "xlm-roberta": 2, "camembert": 2}  # positions reserved past the padding id
SPECIAL_TOKENS = 4  # BOS/EOS/CLS/SEP a tokenizer may add around a prompt


@dataclass
class Report:
    """What a launch was checked against."""
    num_labels: int | None = None
    train_rows: int = 0
    eval_rows: int = 0
    position_limit: int | None = None
    estimate_bytes: int | None = None
    memory_bytes: int | None = None
    notes: list[str] = field(default_factory=list)


def check(cfg: ExperimentConfig, *, ignore_memory: bool = False) -> Report:
    """Every pre-launch check of one config (see the module docstring)."""
    return Preflight().check(cfg, ignore_memory=ignore_memory)


class Preflight:
    """Runs the checks for one or more configs, reading each data source and model once."""

    def __init__(self):
        self._rows: dict[str, data.Rows] = {}
        self._configs: dict[tuple, dict] = {}

    def check(self, cfg: ExperimentConfig, *, ignore_memory: bool = False) -> Report:
        if cfg.train.precision == "fp16" and detected_device() != "cuda":  # the recipe would refuse it at start
            raise ConfigError("train.precision", "fp16 mixed precision needs a CUDA GPU and this machine trains on "
                                                 "its CPU; use fp32 or bf16")
        rows = self.rows(cfg)
        report = Report(num_labels=rows.num_labels or None, train_rows=len(next(iter(rows.train.values()))),
                        eval_rows=len(next(iter(rows.eval.values()))))
        report.position_limit = self.check_model(cfg, rows.num_labels or 2)
        if models.ships_code(self.config_json(cfg)):  # describing it would run its code here (the dashboard)
            report.notes.append("targets, prompts and memory not checked: the model ships its own code, which runs "
                                "only in a training worker")
            return report
        estimate_run_memory(cfg, rows.num_labels or 2, report, ignore_memory)
        return report

    def rows(self, cfg: ExperimentConfig) -> data.Rows:
        d = cfg.data
        key = repr((cfg.task, d.train, d.eval, d.subset, d.train_split, d.eval_split, d.eval_fraction, d.text_column,
                    d.label_column, d.prompt_column, d.response_column, d.max_train_samples, d.max_eval_samples,
                    cfg.train.seed))
        if key not in self._rows:
            self._rows[key] = data.check_rows(cfg)
        return self._rows[key]

    def config_json(self, cfg: ExperimentConfig) -> dict:
        key = (cfg.model.source, cfg.model.revision)
        if key not in self._configs:
            self._configs[key] = models.config_json(cfg.model.source, cfg.model.revision)
        return self._configs[key]

    def check_model(self, cfg: ExperimentConfig, num_labels: int) -> int | None:
        """The model's position limit (None when its config does not say), checked against the config."""
        config = self.config_json(cfg)
        limit = position_limit(config)
        if limit is not None and cfg.data.max_length > limit:
            raise ConfigError("data.max_length", f"{cfg.data.max_length} is more than {cfg.model.source} accepts: "
                                                 f"its position limit is {limit} tokens; use at most {limit}")
        if models.ships_code(config):  # its tokenizer and layers are its own code: see check()
            return limit
        if limit is not None and cfg.task == "causal-lm":
            check_prompts(cfg, limit)
        if cfg.model.source not in BUNDLED_MODELS or isinstance(cfg.lora.target_modules, list):
            models.count_params(cfg, num_labels)  # ModelError names a target the model does not have
        return limit


def position_limit(config: dict) -> int | None:
    """Tokens the model's position embeddings cover, from its config.json (None when it does not say)."""
    for key in POSITION_KEYS:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value - POSITION_OFFSET.get(config.get("model_type", ""), 0)
    return None


def check_prompts(cfg: ExperimentConfig, limit: int) -> None:
    """Each generation prompt plus generate.max_new_tokens must fit the context. A token covers at least one byte
    of UTF-8, so a prompt whose bytes fit needs no tokenizer; only a long one is tokenized to be sure."""
    new = cfg.generate.max_new_tokens
    if new >= limit:
        raise ConfigError("generate.max_new_tokens", f"{new} leaves no room for a prompt in {cfg.model.source}'s "
                                                     f"{limit}-token context; use less than {limit}")
    long = [i for i, p in enumerate(cfg.generate.prompts) if len(p.encode("utf-8")) + SPECIAL_TOKENS + new > limit]
    if not long:
        return
    tokenizer = models.load_tokenizer(cfg.model.source, cfg.model.trust_remote_code, cfg.model.revision)
    for i in long:
        tokens = len(tokenizer(cfg.generate.prompts[i])["input_ids"])
        if tokens + new > limit:
            raise ConfigError(f"generate.prompts[{i}]", f"{tokens} tokens + generate.max_new_tokens {new} is more "
                                                        f"than {cfg.model.source}'s {limit}-token context; shorten "
                                                        "the prompt or generate fewer tokens")


# -- memory --------------------------------------------------------------------------------------------------------

def estimate_run_memory(cfg: ExperimentConfig, num_labels: int, report: Report, ignore_memory: bool) -> None:
    """Refuse a run whose estimated peak exceeds this machine's memory (ConfigError on train.batch_size, with the
    estimate and the largest batch that fits). An estimator that cannot model this model skips the check."""
    device = detected_device()
    total = machine_memory(device)
    try:
        peak = memory.estimate_for_experiment(cfg, num_labels=num_labels, device=device)["peak_bytes"]
    except EstimateError as exc:
        report.notes.append(f"memory not checked: {exc}")
        return
    report.estimate_bytes, report.memory_bytes = int(peak), total
    if total is None or peak <= total or ignore_memory:
        return
    fits = largest_batch(cfg, num_labels, device, total)
    what = "RAM" if device == "cpu" else "GPU memory"
    advice = (f"the largest batch that fits is {fits} (train.batch_size)" if fits else
              "no batch size fits: lower data.max_length, use method lora/qlora or turn on "
              "train.gradient_checkpointing")
    raise ConfigError("train.batch_size", f"this run needs about {_gb(peak)} at its peak (batch {cfg.train.batch_size}"
                                          f" x {cfg.data.max_length} tokens) but this machine has {_gb(total)} of "
                                          f"{what}; {advice}. To launch anyway, use --ignore-memory-estimate "
                                          "(Python: ignore_memory=True)")


def largest_batch(cfg: ExperimentConfig, num_labels: int, device: str, budget: int) -> int:
    """The largest train.batch_size whose estimated peak fits `budget` (0 when not even 1 does)."""
    def fits(batch: int) -> bool:
        trial = cfg.replace(**{"train.batch_size": batch})
        return memory.estimate_for_experiment(trial, num_labels=num_labels, device=device)["peak_bytes"] <= budget

    lo, hi = 0, cfg.train.batch_size  # fits(lo) holds (nothing runs), fits(hi) does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


def machine_memory(device: str) -> int | None:
    """Bytes of memory a run on `device` can use: the machine's RAM on a CPU, the first GPU's memory on CUDA
    (from torch when it is loaded, else nvidia-smi); None when it cannot be told."""
    if device == "cpu":
        return psutil.virtual_memory().total
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return None
    try:
        out = subprocess.run([smi, "--query-gpu=memory.total", "--format=csv,noheader,nounits"], capture_output=True,
                             text=True, timeout=10, env={**os.environ, "LC_ALL": "C"})
        return int(out.stdout.split()[0]) * 2**20
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _gb(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"

