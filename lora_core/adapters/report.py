"""What a saved LoRA adapter learned, read from its files alone (adapter_config.json + the safetensors weights):
per adapted module the update ΔW as PEFT applies it, its size against the base weight, its singular values and
effective rank; and how two adapters of the same base compare (subspace similarity).

    report = inspect_adapter(adapter_dir, base="minilm")     # base: a model source; None skips ‖W‖
    report.to_dict()["modules"][0]["singular_values"]
    similarity(report_r8, report_r64).to_dict()

The scaling is PEFT's (`tuners/lora/layer.py`, `update_layer`): s = alpha / r, or alpha / √r with rsLoRA, with
alpha and r per module from `alpha_pattern` and the saved tensors' shapes. DoRA updates are PEFT's merged
weight minus the base (`dora_update`), which needs the base weight. The base weight is read from the base
model's checkpoint files; for a QLoRA adapter those are the full-precision weights that were quantized to 4 bits
when training started, so ‖ΔW‖/‖W‖ is relative to the unquantized base.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..runs.layout import adapter_config, adapter_weights
from . import spectrum
from .advice import rank_advice
from .tensors import BaseWeights, SafetensorsFile, base_weights

PEFT_PREFIX = "base_model.model."
# saved key suffixes of LoRA's two factors, for Linear / Conv1D and for Embedding layers
FACTORS = {".lora_A.weight": ".lora_B.weight", ".lora_embedding_A": ".lora_embedding_B"}
MAGNITUDE = ".lora_magnitude_vector"


@dataclass
class ModuleUpdate:
    """The update one adapted module applies. `svd` and `A` stay in memory for spectra and similarities."""
    name: str                      # module path in the task model, e.g. bert.encoder.layer.0.attention.self.query
    layer: int | None              # the first layer index in the path
    module: str                    # a short name, unique among the adapter's modules (set by the report)
    shape: tuple[int, int]         # (d_out, d_in)
    r: int
    scaling: float
    delta_norm: float
    singular_values: list[float]
    effective_rank: int
    base_norm: float | None = None
    relative_norm: float | None = None
    magnitude_norm: float | None = None   # DoRA: ‖(c − 1) ⊙ W‖_F, the part of ΔW the magnitude vector adds
    svd: spectrum.LowRankSVD | None = field(default=None, repr=False)
    A: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in ("name", "layer", "module", "r", "scaling", "delta_norm", "base_norm",
                                             "relative_norm", "effective_rank", "singular_values")}
        out["shape"] = list(self.shape)
        if self.magnitude_norm is not None:
            out["magnitude_norm"] = self.magnitude_norm
        return out


@dataclass
class AdapterReport:
    adapter_dir: str
    base_model: str | None
    r: int
    lora_alpha: float
    use_rslora: bool
    use_dora: bool
    energy: float
    modules: list[ModuleUpdate]
    also_saved: list[str]          # tensors saved in full beside LoRA (modules_to_save, e.g. the classifier)
    base_note: str                 # where ‖W‖ came from, or why it is missing
    run_id: str | None = None
    method: str | None = None      # lora or qlora, when the report is of a run

    def module(self, name: str) -> ModuleUpdate:
        found = [m for m in self.modules if name in (m.name, m.module)]
        if not found:
            raise ModelError(f"module {name!r} is not adapted here; adapted: "
                             + ", ".join(m.module for m in self.modules[:12]))
        return found[0]

    def to_dict(self) -> dict:
        ranks = [m.effective_rank for m in self.modules]
        return {
            "run_id": self.run_id, "method": self.method, "adapter_dir": self.adapter_dir,
            "base_model": self.base_model, "r": self.r,
            "lora_alpha": self.lora_alpha, "use_rslora": self.use_rslora, "use_dora": self.use_dora,
            "energy": self.energy, "base_note": self.base_note, "also_saved": self.also_saved,
            "summary": {"modules": len(self.modules), "max_effective_rank": max(ranks, default=0),
                        "median_effective_rank": float(np.median(ranks)) if ranks else None,
                        "total_delta_norm": float(np.sqrt(sum(m.delta_norm ** 2 for m in self.modules)))},
            "advice": rank_advice(self).to_dict(),
            "modules": [m.to_dict() for m in self.modules],
        }


# -- reading --------------------------------------------------------------------------------------------------

def read_config(adapter_dir: Path) -> dict:
    path = adapter_config(adapter_dir)
    if not path.is_file():
        what = "does not exist" if not Path(adapter_dir).exists() else f"has no {path.name}"
        raise ModelError(f"adapter folder {adapter_dir} {what}: only finished LoRA/QLoRA runs have an adapter")
    config = json.loads(path.read_text(encoding="utf-8"))
    if config.get("peft_type", "LORA") != "LORA":
        raise ModelError(f"{path}: a {config.get('peft_type')} adapter; the inspector reads LoRA adapters")
    return config


def module_alpha(config: dict, module: str) -> float:
    """alpha for one module: the first alpha_pattern key that matches its path (PEFT's get_pattern_key)."""
    for key, alpha in (config.get("alpha_pattern") or {}).items():
        if re.match(rf"(.*\.)?({key})$", module):
            return float(alpha)
    return float(config["lora_alpha"])


def scaling(config: dict, module: str, r: int) -> float:
    alpha = module_alpha(config, module)
    return alpha / (r ** 0.5 if config.get("use_rslora") else r)


def factor_pairs(tensors: SafetensorsFile) -> dict[str, tuple[str, str]]:
    """module path -> (A key, B key) for every LoRA-adapted module in the file, in file order."""
    pairs = {}
    for key in tensors.keys():
        for a_suffix, b_suffix in FACTORS.items():
            if key.endswith(a_suffix):
                stem = key[: -len(a_suffix)]
                if stem + b_suffix in tensors.header:
                    pairs[stem.removeprefix(PEFT_PREFIX)] = (key, stem + b_suffix)
    return pairs


def layer_index(module: str) -> int | None:
    return next((int(p) for p in module.split(".") if p.isdigit()), None)


def short_names(paths: list[str]) -> dict[str, str]:
    """The part of each path after its layer index, cut to the shortest suffix no other such part shares:
    bert's `attention.self.query` -> `query`, but `attention.output.dense` and `output.dense` stay apart."""
    rests = {p: _after_layer(p) for p in paths}
    distinct = set(rests.values())

    def shortest(rest: tuple[str, ...]) -> tuple[str, ...]:
        for k in range(1, len(rest)):
            if sum(other[-k:] == rest[-k:] for other in distinct) == 1:
                return rest[-k:]
        return rest

    return {p: ".".join(shortest(rest)) or p for p, rest in rests.items()}


def _after_layer(path: str) -> tuple[str, ...]:
    parts = path.split(".")
    first = next((i + 1 for i, part in enumerate(parts) if part.isdigit()), 0)
    return tuple(parts[first:])


# -- one adapter ------------------------------------------------------------------------------------------------

def inspect_adapter(adapter_dir: str | Path, base: str | BaseWeights | None = None,
                    energy: float = spectrum.ENERGY, revision: str | None = None) -> AdapterReport:
    """The report of the adapter in `adapter_dir`. `base`: the base model's source (as in model.source) or
    already opened weights; None skips ‖W‖ (and is an error for DoRA, whose update depends on W)."""
    adapter_dir = Path(adapter_dir)
    config = read_config(adapter_dir)
    tensors = SafetensorsFile(adapter_weights(adapter_dir))
    pairs = factor_pairs(tensors)
    if not pairs:
        raise ModelError(f"{adapter_weights(adapter_dir)} holds no lora_A / lora_B tensors")
    weights, note = _open_base(base, revision)
    if config.get("use_dora") and weights is None:
        raise ModelError(f"a DoRA adapter's update depends on the base weights, which could not be read: {note}")
    fan_in_fan_out = bool(config.get("fan_in_fan_out"))
    modules = [_module_update(name, tensors, a_key, b_key, config, weights, fan_in_fan_out, energy)
               for name, (a_key, b_key) in pairs.items()]
    names = short_names([m.name for m in modules])
    for m in modules:
        m.module = names[m.name]
    lora_keys = {k for pair in pairs.values() for k in pair}
    also = [k.removeprefix(PEFT_PREFIX) for k in tensors.keys() if k not in lora_keys and MAGNITUDE not in k]
    return AdapterReport(str(adapter_dir), base if isinstance(base, str) else config.get("base_model_name_or_path"),
                         int(config["r"]), float(config["lora_alpha"]), bool(config.get("use_rslora")),
                         bool(config.get("use_dora")), energy, modules, also, note)


def _open_base(base, revision: str | None) -> tuple[BaseWeights | None, str]:
    if isinstance(base, BaseWeights):
        return base, f"base weights from {base.where}"
    if base is None:
        return None, "no base model given: ‖W‖ and relative sizes are left out"
    try:
        weights = base_weights(base, revision)
    except ModelError as exc:
        return None, f"base weights unavailable: {exc}"
    return weights, f"base weights from {weights.where}"


def _module_update(name: str, tensors: SafetensorsFile, a_key: str, b_key: str, config: dict,
                   weights: BaseWeights | None, fan_in_fan_out: bool, energy: float) -> ModuleUpdate:
    A, B = tensors.get(a_key), tensors.get(b_key)
    if A.ndim != 2 or B.ndim != 2:
        raise ModelError(f"{name}: LoRA on a {A.ndim}-d weight (a convolution?) is not analysed")
    embedding = a_key.endswith("lora_embedding_A")
    if embedding:  # PEFT: ΔW = (B·A)ᵀ for embeddings, stored as A (r×vocab), B (dim×r)
        A, B = B.T, A.T
    r = A.shape[0]
    scale = scaling(config, name, r)
    W = weights.weight(name) if weights is not None else None
    if W is not None and fan_in_fan_out and not embedding:  # Conv1D stores its weight as (d_in, d_out)
        W = W.T
    if W is not None and W.shape != (B.shape[0], A.shape[1]):
        W = None  # not the weight this module adapts (a renamed or tied tensor): leave the ratio out
    magnitude_norm = None
    if config.get("use_dora"):
        if W is None:
            raise ModelError(f"{name}: DoRA needs the base weight, which the base checkpoint does not hold")
        delta_norm, svd, magnitude_norm = spectrum.dora_update(W, B, A, scale, tensors.get(_magnitude_key(a_key)))
    else:
        svd = spectrum.lowrank_svd(B, A, scale)
        delta_norm = svd.frobenius
    base_norm = float(np.linalg.norm(np.asarray(W, dtype=np.float64))) if W is not None else None
    return ModuleUpdate(
        name=name, layer=layer_index(name), module=name, shape=(B.shape[0], A.shape[1]), r=r, scaling=scale,
        delta_norm=delta_norm, singular_values=[float(x) for x in svd.s],
        effective_rank=spectrum.effective_rank(svd.s, energy), base_norm=base_norm,
        relative_norm=delta_norm / base_norm if base_norm else None, magnitude_norm=magnitude_norm, svd=svd, A=A)


def _magnitude_key(a_key: str) -> str:
    return a_key.removesuffix(".lora_A.weight") + MAGNITUDE
