"""The configs of a sweep: pure config algebra, no I/O.

Every varied field is crossed with every other, except that `method` values are ADDED to the base config's method
(`lora.r=[4,8,16]` + `method=[full, head-only]` on a LoRA base gives LoRA r4/r8/r16, full and head-only), and
lora.* / quant.* variations only apply to methods that use them (no duplicate full-fine-tuning runs per rank).
Name, task, data and seed stay those of the base so the runs are comparable.
"""
from __future__ import annotations

import itertools
import json
from typing import Any

from ..config import LORA_METHODS, ConfigError, ExperimentConfig, get_dotted, set_dotted

FIXED_IN_SWEEPS = ("name", "task", "data.", "train.seed")


def sweep_configs(cfg: ExperimentConfig, vary: dict[str, list]) -> list[ExperimentConfig]:
    """The validated configs of a sweep of `cfg` over `vary` (dotted key -> values), duplicates removed."""
    _check(cfg, vary)
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
            one = _variant(cfg, method, dict(zip(keys, combo)))
            signature = json.dumps({k: v for k, v in one.to_dict().items() if k != "name"}, sort_keys=True)
            if signature not in seen:
                seen.add(signature)
                configs.append(one)
    return configs


def applies(key: str, method: str) -> bool:
    """Whether a varied field means anything for a method (lora.* for LoRA methods, quant.* for qlora)."""
    if key.startswith("lora."):
        return method in LORA_METHODS
    if key.startswith("quant."):
        return method == "qlora"
    return True


def _check(cfg: ExperimentConfig, vary: dict[str, list]) -> None:
    if not vary:
        raise ConfigError("vary", "name at least one field to vary, e.g. lora.r=4,8,16")
    for key, values in vary.items():
        if key.startswith(FIXED_IN_SWEEPS) or key in FIXED_IN_SWEEPS:
            raise ConfigError(key, "a sweep keeps name, task, data and seed fixed so its runs are comparable; "
                                   "vary model, method, lora.*, quant.* or train.* settings")
        get_dotted(cfg, key)  # ConfigError for an unknown key
        if not isinstance(values, (list, tuple)) or not values:
            raise ConfigError(key, "give a non-empty list of values to try")


def _variant(cfg: ExperimentConfig, method: str, changes: dict[str, Any]) -> ExperimentConfig:
    data = cfg.to_dict()
    set_dotted(data, "method", method)
    for key, value in changes.items():
        set_dotted(data, key, list(value) if isinstance(value, tuple) else value)
    data["name"] = _sweep_name(cfg.name, method, changes)
    try:
        return ExperimentConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(exc.field, f"{exc.message} (in the sweep run method={method}"
                          + "".join(f", {k}={v}" for k, v in changes.items()) + ")") from None


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _sweep_name(base: str, method: str, changes: dict) -> str:
    parts = [method] + [f"{k.rpartition('.')[2]}={v}" for k, v in changes.items()]
    return f"{base} [{' '.join(parts)}]"[:200]
