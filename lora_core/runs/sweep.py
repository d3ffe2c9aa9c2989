"""The configs of a sweep: pure config algebra, no I/O.

Every varied field is crossed with every other, except that `method` values are ADDED to the base config's method
(`lora.r=[4,8,16]` + `method=[full, head-only]` on a LoRA base gives LoRA r4/r8/r16, full and head-only), and
lora.* / quant.* variations only apply to methods that use them (no duplicate full-fine-tuning runs per rank).
Name, task, data and seed stay those of the base so the runs are comparable.

With `seeds=N` every setting runs N times, with train.seed = base seed, base seed + 1, ...; data.seed is pinned
to the base's data seed, so the N runs see the same rows and eval split and differ only in weight init, dropout
and data order: the spread across them is what a seed changes.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

from ..config import LORA_METHODS, ConfigError, ExperimentConfig, get_dotted, set_dotted

FIXED_IN_SWEEPS = ("name", "task", "data.", "train.seed")
MAX_SEEDS = 20


def sweep_configs(cfg: ExperimentConfig, vary: dict[str, list], seeds: int = 1) -> list[ExperimentConfig]:
    """The validated configs of a sweep of `cfg` over `vary` (dotted key -> values), duplicates removed, each
    setting `seeds` times with consecutive train seeds."""
    _check(cfg, vary, seeds)
    methods = list(dict.fromkeys([cfg.method, *vary.get("method", [])]))
    others = {k: list(dict.fromkeys(map(_hashable, v))) for k, v in vary.items() if k != "method"}
    for key in others:
        if not any(applies(key, m) for m in methods):
            raise ConfigError(key, f"no method in this sweep ({', '.join(map(str, methods))}) uses it; add "
                                   f"method=lora or qlora for lora.*, method=qlora for quant.*")
    configs, seen = [], set()
    for method in methods:
        keys = [k for k in others if applies(k, method)]
        for combo in itertools.product(*(others[k] for k in keys)):
            changes = dict(zip(keys, combo))
            one = _variant(cfg, method, changes)
            signature = json.dumps({k: v for k, v in one.to_dict().items() if k != "name"}, sort_keys=True)
            if signature not in seen:
                seen.add(signature)
                configs += [one] if seeds == 1 else _seeded(cfg, method, changes, seeds)
    return configs


def _seeded(cfg: ExperimentConfig, method: str, changes: dict[str, Any], seeds: int) -> list[ExperimentConfig]:
    """The setting `changes` once per seed; data.seed pinned so every seed sees the same rows."""
    data_seed = cfg.data.seed if cfg.data.seed is not None else cfg.train.seed
    return [_variant(cfg, method, changes, {"train.seed": seed, "data.seed": data_seed})
            for seed in range(cfg.train.seed, cfg.train.seed + seeds)]


def applies(key: str, method: str) -> bool:
    """Whether a varied field means anything for a method (lora.* for LoRA methods, quant.* for qlora)."""
    if key.startswith("lora."):
        return method in LORA_METHODS
    if key.startswith("quant."):
        return method == "qlora"
    return True


def _check(cfg: ExperimentConfig, vary: dict[str, list], seeds: int) -> None:
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 1 <= seeds <= MAX_SEEDS:
        raise ConfigError("seeds", f"runs per setting must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
    if not vary and seeds == 1:
        raise ConfigError("vary", "name at least one field to vary, e.g. lora.r=4,8,16 (or run seeds > 1)")
    for key, values in vary.items():
        if key.startswith(FIXED_IN_SWEEPS) or key in FIXED_IN_SWEEPS:
            raise ConfigError(key, "a sweep keeps name, task, data and seed fixed so its runs are comparable; "
                                   "vary model, method, lora.*, quant.* or train.* settings")
        get_dotted(cfg, key)  # ConfigError for an unknown key
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(key, "give a non-empty list of values to try")


def _variant(cfg: ExperimentConfig, method: str, changes: dict[str, Any],
             seeding: dict[str, int] | None = None) -> ExperimentConfig:
    data = cfg.to_dict()
    set_dotted(data, "method", method)
    for key, value in {**changes, **(seeding or {})}.items():
        set_dotted(data, key, list(value) if isinstance(value, tuple) else value)
    seed = {"seed": seeding["train.seed"]} if seeding else {}
    data["name"] = _sweep_name(cfg.name, method, {**changes, **seed})
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.message} (in the sweep run method={method}"
                          + "".join(f", {k}={v}" for k, v in changes.items()) + ")") from None


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sweep_name(base: str, method: str, changes: dict) -> str:
    """`base [method r=4 seed=1]`; the bracket survives a long base name, so a name always ends in its part."""
    parts = " ".join([method] + [f"{k.rpartition('.')[2]}={v}" for k, v in changes.items()])
    return f"{base[:max(0, 196 - len(parts))]} [{parts}]"
