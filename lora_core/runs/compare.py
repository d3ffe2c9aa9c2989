"""Comparing runs as data: which config fields differ between them, runs grouped by setting (every config field
but the seed), and each group's mean ± std. Records and configs in, plain rows out: the CLI prints them and the
Compare page draws them, so both show the same numbers. No I/O, no pandas.
"""
from __future__ import annotations

import json
import math
import re
import statistics
from dataclasses import dataclass
from typing import Any

from ..config import ExperimentConfig
from .store import RunRecord

SEED_FIELD = "train.seed"
LABEL_FIELDS = ("name",)   # how a run is called, not how it trains: never part of a diff or a setting
# (column, results key) of the numbers a comparison aggregates, in table order
METRICS = [("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("eval loss", "eval_loss"),
           ("perplexity", "perplexity"), ("train time (s)", "train_time_s")]
STD_SUFFIX = " ±"          # the column holding a metric's standard deviation across seeds


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as {dotted field: value}; lists become tuples so values can be compared and hashed."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = tuple(value) if isinstance(value, list) else value
    return out


def config_diff(configs: dict[str, ExperimentConfig], ignore: tuple[str, ...] = LABEL_FIELDS) -> dict[str, dict]:
    """{dotted field: {run id: value}} for the fields whose values are not all equal across the runs."""
    flat = {run_id: flatten(cfg.to_dict()) for run_id, cfg in configs.items()}
    fields = dict.fromkeys(k for f in flat.values() for k in f)
    out = {}
    for field in fields:
        if field in ignore:
            continue
        values = {run_id: f.get(field) for run_id, f in flat.items()}
        if len({json.dumps(v, default=str) for v in values.values()}) > 1:
            out[field] = values
    return out


def setting_key(cfg: ExperimentConfig) -> str:
    """What makes two runs the same setting: every config field except the label and the seed."""
    flat = flatten(cfg.to_dict())
    return json.dumps({k: v for k, v in flat.items() if k not in (*LABEL_FIELDS, SEED_FIELD)}, sort_keys=True,
                      default=str)


@dataclass
class Stat:
    mean: float | None
    std: float | None   # sample standard deviation (n − 1); None with fewer than two values
    n: int

    def text(self, digits: int = 4) -> str:
        if self.mean is None:
            return "—"
        return f"{self.mean:.{digits}f}" + (f" ± {self.std:.{digits}f}" if self.std is not None else "")


def summarize(values: list) -> Stat:
    """Mean and sample standard deviation of the finite numbers among `values`."""
    nums = [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)
            and math.isfinite(v)]
    if not nums:
        return Stat(None, None, 0)
    return Stat(statistics.fmean(nums), statistics.stdev(nums) if len(nums) > 1 else None, len(nums))


@dataclass
class Group:
    """Runs of one setting, differing only in their seed."""
    label: str
    records: list[RunRecord]
    config: ExperimentConfig    # the first run's

    @property
    def seeds(self) -> list[int]:
        return [r.results.get("seed") for r in self.records]

    def stat(self, key: str) -> Stat:
        return summarize([(r.results or {}).get(key) for r in self.records])


def group_by_setting(records: list[RunRecord], configs: dict[str, ExperimentConfig]) -> list[Group]:
    """Runs grouped by setting, in the order each setting first appears; labels name what tells them apart."""
    groups: dict[str, list[RunRecord]] = {}
    for rec in records:
        groups.setdefault(setting_key(configs[rec.id]), []).append(rec)
    firsts = {members[0].id: configs[members[0].id] for members in groups.values()}
    differ = config_diff(firsts, ignore=(*LABEL_FIELDS, SEED_FIELD))
    out = []
    for members in groups.values():
        first = members[0]
        parts = [f"{field.rpartition('.')[2]}={value_text(differ[field][first.id])}" for field in differ]
        out.append(Group(" ".join(parts) or _unseeded_name(first.name), members, configs[first.id]))
    return out


def group_rows(groups: list[Group]) -> list[dict]:
    """One row per setting: its runs and seeds, each metric's mean and its std across seeds, trainable params."""
    rows = []
    for g in groups:
        row: dict[str, Any] = {"setting": g.label, "method": g.config.method,
                               "rank": g.config.lora.r if g.config.uses_lora else None, "runs": len(g.records),
                               "seeds": ", ".join(str(s) for s in g.seeds)}
        for column, key in METRICS:
            stat = g.stat(key)
            row[column], row[column + STD_SUFFIX] = stat.mean, stat.std
        row["trainable"] = g.stat("trainable_params").mean
        row["ids"] = " ".join(r.id for r in g.records)
        rows.append(row)
    return rows


def has_seed_groups(groups: list[Group]) -> bool:
    return any(len(g.records) > 1 for g in groups)


def value_text(value: Any) -> str:
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


def _unseeded_name(name: str) -> str:
    """A sweep run's name without its seed part ("base [lora r=4 seed=1]" -> "base [lora r=4]")."""
    return re.sub(r" seed=\d+\]$", "]", name)
