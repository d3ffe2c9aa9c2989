"""The estimator's settings: every knob, its default, and the one check that turns them into `Settings`.

Knobs that are config fields take the config's dotted names and values, so `estimate(..., **{"lora.r": 16})`
means what `lora.r: 16` means in a run's config and `estimate_for_experiment` passes a config straight through.
The estimator's own knobs (attention kernel, device, weights dtype, CUDA overheads) have plain names.
"""
from __future__ import annotations

import importlib.metadata
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import (MAX_CLASSES, MAX_INT, OPTIMIZERS, ExperimentConfig, LoraSettings, excerpt, field_choices,
                      get_dotted)
from ..errors import EstimateError

GB = 1e9
METHODS = ("full", "full-bf16", "full-fp16", "lora", "qlora", "head-only")
# The config's precisions (bf16 / fp16 = mixed precision, as train.precision means them), plus pure 16-bit.
PRECISIONS = tuple(field_choices("train.precision")) + ("bf16-true", "fp16-true")
ADAMW_IMPLS = ("fused", "foreach", "for-loop")
ATTENTIONS = ("sdpa", "eager", "flash")
DEVICES = ("cuda", "cpu")
# Bytes per element of each dtype, by the short codes the estimator uses internally.
DTYPE_BYTES = {"f32": 4, "bf16": 2, "f16": 2, "i64": 8, "bool": 1, "u8": 1}
DTYPE_CODES = {"fp32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "f16", "float16": "f16"}
DTYPE_NAMES = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}

# The config fields that shape memory: estimate() takes them under their own names.
CONFIG_FIELDS = ("train.precision", "train.optimizer", "train.gradient_checkpointing",
                 "train.gradient_accumulation_steps", "lora.r", "lora.target_modules", "lora.dropout", "lora.bias",
                 "lora.use_dora", "lora.modules_to_save", "quant.quant_type", "quant.double_quant",
                 "quant.compute_dtype", "model.trust_remote_code")
_DEFAULT_CONFIG = ExperimentConfig()

# Every knob estimate() takes besides model/method/batch_size/seq_len, with its default. Config fields default
# to the config's defaults, except the two whose default depends on the model and method.
KNOBS: dict[str, Any] = {
    **{name: get_dotted(_DEFAULT_CONFIG, name) for name in CONFIG_FIELDS},
    "task": None,                  # None: causal-lm for decoders, seq-cls for encoders
    "train.precision": None,       # see PRECISIONS; None: fp32 for "full", the method's own for full-bf16/fp16,
                                   # "auto" otherwise (bf16 mixed on CUDA, fp32 on CPU)
    "num_labels": 2,               # classes of a seq-cls head
    "weights_dtype": None,         # storage of the (frozen) weights; None: 16-bit for LoRA/QLoRA/head-only on
                                   # CUDA, else fp32 (full FT keeps fp32 master weights unless *-true)
    "adamw_impl": None,            # None: what train.optimizer runs in the engine (config.OPTIMIZERS)
    "momentum": 0.0,               # SGD momentum (a state per trainable parameter when > 0)
    "attention": "sdpa",
    "device": "cuda",
    "kbit_prepare": True,          # peft.prepare_model_for_kbit_training: non-quantized params -> fp32
    "bnb_saves_input": False,      # bitsandbytes before 0.45-ish kept each 4-bit matmul's input for backward
    "cuda_context_gb": 0.5,        # PyTorch PR #86509: 0.3-0.7 GB depending on version / lazy loading
    "allocator_slack": 0.05,       # reserved-but-unallocated memory of the caching allocator, as a fraction
}


@dataclass(frozen=True)
class Settings:
    """Every knob, checked and resolved (no None, no "auto")."""
    method: str            # full | lora | qlora | head-only
    task: str
    num_labels: int
    device: str
    precision: str         # fp32 | bf16 | fp16 (mixed) | bf16-true | fp16-true
    autocast: str | None   # the 16-bit dtype code autocast computes in under mixed precision
    weights_dtype: str     # dtype code the weights are stored in (trainable base weights too)
    optimizer: str
    adamw_impl: str
    momentum: float
    checkpointing: bool
    attention: str
    lora: LoraSettings     # the config's own section: r, target_modules, dropout, bias, use_dora, modules_to_save
    quant_type: str
    double_quant: bool
    compute_dtype: str     # dtype code of the 4-bit matmuls
    kbit_prepare: bool
    bnb_saves_input: bool
    grad_accum: int
    trust_remote_code: bool
    cuda_context: float    # bytes
    slack: float           # fraction

    def to_dict(self) -> dict:
        """The knobs as resolved, under the names estimate() takes (so they can be passed back in)."""
        lora = self.lora
        return {
            "task": self.task, "num_labels": self.num_labels, "device": self.device,
            "train.precision": self.precision, "weights_dtype": DTYPE_NAMES[self.weights_dtype],
            "train.optimizer": self.optimizer, "adamw_impl": self.adamw_impl, "momentum": self.momentum,
            "train.gradient_checkpointing": self.checkpointing, "attention": self.attention,
            "lora.r": lora.r, "lora.target_modules": lora.target_modules, "lora.dropout": lora.dropout,
            "lora.bias": lora.bias, "lora.use_dora": lora.use_dora, "lora.modules_to_save": lora.modules_to_save,
            "quant.quant_type": self.quant_type, "quant.double_quant": self.double_quant,
            "quant.compute_dtype": {"f32": "float32", "bf16": "bfloat16", "f16": "float16"}[self.compute_dtype],
            "kbit_prepare": self.kbit_prepare, "bnb_saves_input": self.bnb_saves_input,
            "train.gradient_accumulation_steps": self.grad_accum, "model.trust_remote_code": self.trust_remote_code,
            "cuda_context_gb": self.cuda_context / GB, "allocator_slack": self.slack,
        }


def choice(name: str, value, allowed) -> Any:
    if value not in allowed:
        raise EstimateError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    return value


def _whole(name: str, value, most: int = MAX_INT) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise EstimateError(f"{name}: must be a whole number >= 1 and <= {most}, got {excerpt(value)}")
    return value


def _number(name: str, value, below_one: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0 \
            or (below_one and value >= 1):
        raise EstimateError(f"{name}: must be a finite number >= 0{' and < 1' if below_one else ''}, got "
                            f"{excerpt(value)}")
    return float(value)


def _names(name: str, value) -> list[str] | None:
    """A list of module names (a string: comma-separated), as the config reads lora.modules_to_save."""
    if value is None:
        return None
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in value):
        raise EstimateError(f"{name}: must be a list of module names, got {value!r}")
    return list(value) or None


def _targets(value) -> str | list[str] | None:
    """lora.target_modules as the config reads it: None, 'all-linear', 'preset:x', or names (comma-separated)."""
    if isinstance(value, str) and (value == "all-linear" or value.startswith("preset:")):
        return value
    return _names("lora.target_modules", value)


def precision_of(method: str, precision, weights_dtype, device: str) -> tuple[str, str | None, str]:
    """-> (precision, the dtype code autocast uses or None, the dtype code the weights are stored in)."""
    if method in ("full-bf16", "full-fp16") and precision in (None, "auto"):
        precision = method[5:]
    elif precision is None:
        precision = "fp32" if method == "full" else "auto"
    precision = choice("train.precision", str(precision).lower(), PRECISIONS)
    if precision == "auto":
        precision = "bf16" if device == "cuda" else "fp32"
    half = {"bf16": "bf16", "bf16-true": "bf16", "fp16": "f16", "fp16-true": "f16"}.get(precision)
    if weights_dtype is not None:
        stored = DTYPE_CODES[choice("weights_dtype", str(weights_dtype).lower(), DTYPE_CODES)]
    elif precision.endswith("-true") or (not method.startswith("full") and device == "cuda" and half):
        stored = half  # on GPUs a frozen base is loaded in 16-bit in practice (dtype=bfloat16)
    else:
        stored = "f32"  # full FT keeps fp32 master weights under mixed precision
    return precision, None if precision.endswith("-true") else half, stored


def resolve(method: str, batch_size, seq_len, knobs: dict, default_task: str) -> Settings:
    """Check every knob (errors name the knob and the allowed values) and resolve the defaults."""
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise EstimateError(f"{unknown[0]}: unknown estimator setting; allowed: {', '.join(KNOBS)}")
    k = {**KNOBS, **{n: v for n, v in knobs.items() if v is not None}}
    method = choice("method", str(method).lower(), METHODS)
    _whole("batch_size", batch_size)
    _whole("seq_len", seq_len)
    device = choice("device", str(k["device"]).lower(), DEVICES)
    task = choice("task", k["task"] or default_task, field_choices("task"))
    precision, autocast, stored = precision_of(method, k["train.precision"], k["weights_dtype"], device)
    optimizer = choice("train.optimizer", str(k["train.optimizer"]).lower(), field_choices("train.optimizer"))
    engine = OPTIMIZERS["adamw"].implementation  # what the engine's AdamW runs
    lora = LoraSettings(
        r=_whole("lora.r", k["lora.r"]), target_modules=_targets(k["lora.target_modules"]),
        dropout=_number("lora.dropout", k["lora.dropout"], below_one=True),
        bias=choice("lora.bias", k["lora.bias"], field_choices("lora.bias")), use_dora=bool(k["lora.use_dora"]),
        modules_to_save=_names("lora.modules_to_save", k["lora.modules_to_save"]))
    return Settings(
        method="full" if method.startswith("full") else method, task=task,
        num_labels=_whole("num_labels", k["num_labels"], MAX_CLASSES), device=device, precision=precision, autocast=autocast,
        weights_dtype=stored, optimizer=optimizer,
        adamw_impl=choice("adamw_impl", k["adamw_impl"] or engine, ADAMW_IMPLS),
        momentum=_number("momentum", k["momentum"]), checkpointing=bool(k["train.gradient_checkpointing"]),
        attention=choice("attention", k["attention"], ATTENTIONS), lora=lora,
        quant_type=choice("quant.quant_type", str(k["quant.quant_type"]).lower(), field_choices("quant.quant_type")),
        double_quant=bool(k["quant.double_quant"]),
        compute_dtype=DTYPE_CODES[choice("quant.compute_dtype", str(k["quant.compute_dtype"]).lower(),
                                         DTYPE_CODES)],
        kbit_prepare=bool(k["kbit_prepare"]), bnb_saves_input=bool(k["bnb_saves_input"]),
        grad_accum=_whole("train.gradient_accumulation_steps", k["train.gradient_accumulation_steps"]),
        trust_remote_code=bool(k["model.trust_remote_code"]),
        cuda_context=_number("cuda_context_gb", k["cuda_context_gb"]) * GB if device == "cuda" else 0.0,
        slack=_number("allocator_slack", k["allocator_slack"]) if device == "cuda" else 0.0)


def detected_device() -> str:
    """The device a run on this machine trains on, without importing torch when nobody has: torch's own answer
    if it is loaded, else cuda when there is an NVIDIA device, CUDA_VISIBLE_DEVICES does not hide it and the
    installed torch is not a CPU-only build."""
    torch = sys.modules.get("torch")
    if torch is not None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if os.environ.get("CUDA_VISIBLE_DEVICES", None) in ("", "-1") or not Path("/dev/nvidia0").exists():
        return "cpu"
    try:
        build = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "cpu"
    return "cpu" if build.endswith("+cpu") else "cuda"
