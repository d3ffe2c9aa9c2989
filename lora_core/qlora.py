"""The QLoRA loader, step by step: load a model in fp32 and in 4-bit (NF4/FP4, optional double quantization,
a compute dtype), measure memory before and after, list every layer's type and size, attach LoRA to the 4-bit
model, and compare the 4-bit model's perplexity with the full-precision one.

Memory is reported two ways: transformers' `get_memory_footprint()` (parameters + buffers) and an exact count
that also includes the 4-bit layers' quantization constants (absmax per block, the code book, and with double
quantization the constants of those constants), which live outside parameters and buffers. Double
quantization only shows up in the exact count.
"""
from __future__ import annotations

import gc
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import models
from .config import SAMPLE_FOR_TASK, ExperimentConfig, QuantConfig
from .errors import ModelError

SAMPLE_TEXTS = [
    "The movie was a quiet, moving story about two brothers.",
    "Write a short greeting for a new colleague.",
    "Low-rank adapters train a small number of parameters.",
    "The weather today is cold and rainy, so stay inside.",
]


def quant_settings(quant_type: str = "nf4", double_quant: bool = True, compute_dtype: str = "bfloat16") -> QuantConfig:
    """A validated QuantConfig (the same checks and messages as an experiment config)."""
    cfg = ExperimentConfig.from_dict({"quant": {"quant_type": quant_type, "double_quant": double_quant,
                                                "compute_dtype": compute_dtype}})
    return cfg.quant


# -- measuring memory ------------------------------------------------------------------------------------------

def _tensor_bytes(t) -> int:
    return t.nelement() * t.element_size()


def quant_state_tensors(module) -> list:
    """The tensors a 4-bit layer keeps beside its packed weight: absmax, code book, nested constants."""
    import torch

    state = getattr(getattr(module, "weight", None), "quant_state", None)
    if state is None:
        return []
    out = [state.absmax, state.code, getattr(state, "offset", None)]
    nested = getattr(state, "state2", None)
    if nested is not None:
        out += [nested.absmax, nested.code]
    return [t for t in out if isinstance(t, torch.Tensor)]


def memory_bytes(model) -> dict:
    """{footprint_bytes (transformers), weights_bytes (parameters + buffers, shared storage once),
    quant_state_bytes, exact_bytes}."""
    seen: set[tuple] = set()

    def once(t) -> int:
        key = (t.device.type, t.untyped_storage().data_ptr(), t.storage_offset(), t.nelement(), t.dtype)
        if key in seen:
            return 0
        seen.add(key)
        return _tensor_bytes(t)

    weights = sum(once(t) for t in [*model.parameters(), *model.buffers()])
    qstate = sum(once(t) for m in model.modules() for t in quant_state_tensors(m))
    footprint = model.get_memory_footprint() if hasattr(model, "get_memory_footprint") else weights
    return {"footprint_bytes": int(footprint), "weights_bytes": int(weights), "quant_state_bytes": int(qstate),
            "exact_bytes": int(weights + qstate)}


def layer_table(model) -> list[dict]:
    """One row per module that holds weights itself: name, class, dtype, shape, bytes (incl. 4-bit constants)."""
    rows = []
    for name, module in model.named_modules():
        own = [*module.parameters(recurse=False), *module.buffers(recurse=False)]
        if not own:
            continue
        weight = getattr(module, "weight", None)
        ref = weight if weight is not None else own[0]
        shape = getattr(getattr(ref, "quant_state", None), "shape", None) or ref.shape  # 4-bit: the logical shape
        rows.append({
            "name": name, "class": type(module).__name__, "dtype": str(ref.dtype).replace("torch.", ""),
            "shape": "x".join(str(int(s)) for s in shape),
            "bytes": int(sum(_tensor_bytes(t) for t in [*own, *quant_state_tensors(module)])),
            "quantized": type(ref).__name__ == "Params4bit",
        })
    return rows


# -- loading ---------------------------------------------------------------------------------------------------

@dataclass
class QuantizedLoad:
    """A 4-bit model and what loading it showed. `model` is live: attach_lora() adds adapters to it. `config`
    is the QLoRA experiment this load is the first step of (offline: on the task's bundled sample), so training
    it, or exporting it, starts from the settings tried here."""
    config: ExperimentConfig
    model: Any
    tokenizer: Any
    before: dict | None  # memory of the fp32 model (None when not measured)
    after: dict
    layers: list[dict]
    load_s: float
    lora: dict | None = field(default=None)

    @property
    def source(self) -> str:
        return self.config.model.source

    @property
    def task(self) -> str:
        return self.config.task

    @property
    def quant(self) -> QuantConfig:
        return self.config.quant

    @property
    def saving(self) -> float | None:
        """Fraction of memory saved (exact bytes, fp32 -> 4-bit)."""
        if not self.before:
            return None
        return 1.0 - self.after["exact_bytes"] / self.before["exact_bytes"]

    def summary(self) -> dict:
        return {"source": self.source, "task": self.task, "quant": vars(self.quant), "before": self.before,
                "after": self.after, "saving": self.saving, "load_s": self.load_s,
                "layer_types": layer_type_counts(self.layers),
                "lora": {k: v for k, v in (self.lora or {}).items() if k != "model"} or None}


def layer_type_counts(layers: list[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in layers:
        counts[row["class"]] = counts.get(row["class"], 0) + 1
    return counts


def load_quantized(source: str, quant_type: str = "nf4", double_quant: bool = True,
                   compute_dtype: str = "bfloat16", task: str | None = None, measure_before: bool = True,
                   num_labels: int = 2) -> QuantizedLoad:
    """Load `source` in 4-bit; with measure_before, load it in fp32 first to measure what quantization saves."""
    quant = quant_settings(quant_type, double_quant, compute_dtype)
    task = task or models.default_task(models.load_config(source))
    config = ExperimentConfig.from_dict({
        "name": f"{Path(source).name} qlora", "task": task, "method": "qlora", "model": {"source": source},
        "quant": vars(quant), "data": {"train": SAMPLE_FOR_TASK[task]}})
    tok = models.load_tokenizer(source)
    before = None
    if measure_before:
        full = models.load_model(source, task, num_labels=num_labels, pad_token_id=tok.pad_token_id)
        before = memory_bytes(full)
        del full
        gc.collect()
    started = time.perf_counter()
    model = models.load_model(source, task, num_labels=num_labels, quant=quant, pad_token_id=tok.pad_token_id)
    load_s = time.perf_counter() - started
    model.eval()
    return QuantizedLoad(config, model, tok, before, memory_bytes(model), layer_table(model), load_s)


def attach_lora(loaded: QuantizedLoad, lora: dict[str, Any] | None = None,
                gradient_checkpointing: bool = False) -> dict:
    """QLoRA proper: prepare the 4-bit model for training and add LoRA adapters (in place: `loaded.model`
    becomes the PeftModel, `loaded.config` carries the settings). `lora` holds the config's LoRA fields by name
    ({"r": 8, "alpha": 16, "target_modules": "preset:qv", ...}), checked like any config (errors name lora.r).
    Returns the counts and which 4-bit layers got adapters."""
    if loaded.lora is not None:
        raise ModelError("LoRA is already attached to this model; load it again to try other settings")
    cfg = loaded.config.replace(**{f"lora.{key}": value for key, value in (lora or {}).items()},
                                **{"train.gradient_checkpointing": gradient_checkpointing})
    model = models.apply_method(cfg, loaded.model, quantized=True)  # the LoRA config: models.build_lora_config
    adapted = sorted({n.rsplit(".base_layer", 1)[0] for n, m in model.named_modules()
                      if n.endswith(".base_layer") and type(m).__name__ == "Linear4bit"})
    loaded.model, loaded.config = model, cfg
    loaded.lora = {**models.summarize_params(cfg, model), "adapted_4bit_layers": len(adapted),
                   "adapted_names": adapted, "targets": list(model.peft_config["default"].target_modules)}
    loaded.after = memory_bytes(model)
    return loaded.lora


# -- quality: perplexity of 4-bit vs full precision ------------------------------------------------------------

def perplexity(model, tokenizer, texts: list[str], max_length: int = 128) -> dict:
    """Token-weighted perplexity of a causal LM on texts (every token after the first is predicted)."""
    import torch

    nll, tokens = 0.0, 0
    device = next(model.parameters()).device
    model.eval()
    for text in texts:
        enc = tokenizer(text, return_tensors="pt", truncation=True, max_length=max_length)
        ids = enc["input_ids"].to(device)
        if ids.shape[1] < 2:
            continue
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=enc["attention_mask"].to(device), labels=ids)
        n = ids.shape[1] - 1
        nll += float(out.loss) * n
        tokens += n
    if not tokens:
        raise ModelError("perplexity needs texts with at least two tokens")
    return {"perplexity": math.exp(nll / tokens), "nll": nll / tokens, "tokens": tokens}


def compare_perplexity(source: str, texts: list[str] | None = None, quant_type: str = "nf4",
                       double_quant: bool = True, compute_dtype: str = "bfloat16", max_length: int = 128) -> dict:
    """Perplexity of the full-precision and the 4-bit model on the same texts, and their ratio."""
    texts = [t for t in (texts or SAMPLE_TEXTS) if t and t.strip()]
    config = models.load_config(source)
    if models.default_task(config) != "causal-lm":
        raise ModelError(f"model.source: perplexity needs a causal LM, and {source!r} is an encoder "
                         f"({config.model_type}); use smollm2-135m-instruct, a tiny random model or a decoder hub id")
    quant = quant_settings(quant_type, double_quant, compute_dtype)
    tok = models.load_tokenizer(source)
    full = models.load_model(source, "causal-lm", pad_token_id=tok.pad_token_id)
    fp32 = perplexity(full, tok, texts, max_length)
    del full
    gc.collect()
    q4 = perplexity(models.load_model(source, "causal-lm", quant=quant, pad_token_id=tok.pad_token_id),
                    tok, texts, max_length)
    return {"fp32": fp32, "4bit": q4, "ratio": q4["perplexity"] / fp32["perplexity"],
            "quant": vars(quant), "texts": len(texts)}
