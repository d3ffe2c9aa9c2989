"""Training memory, term by term, for full / LoRA / QLoRA / head-only fine-tuning.

    estimate(model="llama-2-7b", method="qlora", batch_size=1, seq_len=512, **knobs) -> Estimate

How the figure is built (sources in /work/shared/notes/memory-formulas.md):

* Parameters come from the architecture itself: the task model is instantiated on the meta device (shapes, no
  memory) and walked once per config (cached). That gives tied vs untied embeddings, grouped-query attention,
  SwiGLU, biases, and which Linear layers bitsandbytes would quantize (all but the heads).
* weights, quantization constants (absmax per 64-weight block, double-quantized in 8-bit per 256 blocks),
  gradients (one per trainable parameter, in its dtype), optimizer states (AdamW: two per trainable parameter;
  8-bit AdamW: two bytes + block constants; SGD: none unless momentum) are exact byte counts.
* activations are not a rule of thumb: a symbolic forward pass (`_Sim`) walks the layers of the model's family
  (BERT-like, DistilBERT, GPT-2, Llama-like) and records which tensors autograd saves for backward, following
  PyTorch's rules: a Linear saves its input only if its weight trains, a dropout saves its mask only if its input
  needs a gradient (so the first layer of a LoRA model saves less), autocast saves 16-bit copies of inputs and
  weights, CPU dropout masks have the input's dtype while CUDA's are 1-byte, SDPA keeps q/k/v/out + a logsumexp
  while eager attention (and CPU SDPA with dropout) keeps b·a·s² probabilities. Gradient checkpointing keeps one
  input per layer and recomputes one layer during backward.
* logits + loss: b·s·V logits, their fp32 upcast, the log-softmax output kept for backward, and in backward its
  gradient and the logits' gradient (transformers #30860).
* peak = weights + quantization constants + optimizer states + max(forward/backward phase, optimizer-step phase),
  where the forward/backward phase is simulated op by op (activations are freed and gradients appear as backward
  runs) and the step phase is gradients + optimizer temporaries. On CUDA a CUDA context and allocator slack are
  added. Optimizer states count as present: the peak of a steady training step, not of the very first one.

Checked against reality: `measure_step_peak` measures one real training step exactly (CPU: allocator events
from torch.profiler; CUDA: max_memory_allocated) and bench/estimator_accuracy.py compares 20 CPU configs (tiny and
small GPT-2 / Llama / MiniLM models; full, LoRA, QLoRA, head-only; fp32 and bf16 autocast; checkpointing on/off)
and published GPU peaks (litgpt, torchtune). The rules were read off what PyTorch saves, never fitted per config.

Limits: the CUDA-only rules (1-byte dropout masks, flash attention, foreach AdamW temporaries, CUDA autocast's
fp32 ops) are checked only against published peaks, not measured here; the CUDA context and allocator slack are
assumptions (knobs); architectures outside the four families get exact parameters but borrowed activations;
batches are assumed unpadded (a padding mask can make SDPA copy k/v for grouped-query attention); DoRA's extra
activations are not modelled.
"""
from __future__ import annotations

import functools
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import EstimateError
from .model_presets import MODEL_PRESETS, preset_config, preset_key
from .paths import is_local_path

__all__ = ["estimate", "estimate_for_experiment", "experiment_knobs", "lora_param_table", "measure_step_peak",
           "live_tensor_bytes", "Estimate", "EstimateError", "MODEL_PRESETS", "GPUS", "KNOBS"]


GB = 1e9
MIB = 1024 ** 2

# Usable memory as nvidia-smi reports it (MiB), so "fits" means fits on the real card.
GPUS: list[tuple[str, float, int]] = [
    ("T4", 16, 15360), ("L4", 24, 23034), ("RTX 3090", 24, 24576), ("RTX 4090", 24, 24564),
    ("A100 40GB", 40, 40960), ("A100 80GB", 80, 81920), ("H100 80GB", 80, 81559), ("H200", 141, 143771),
]

METHODS = ("full", "full-bf16", "full-fp16", "lora", "qlora", "head-only")
PRECISIONS = ("auto", "fp32", "bf16-mixed", "fp16-mixed", "bf16-true", "fp16-true")
_PRECISION_ALIASES = {"bf16": "bf16-mixed", "fp16": "fp16-mixed", "float32": "fp32", "32": "fp32",
                      "bf16_mixed": "bf16-mixed", "fp16_mixed": "fp16-mixed"}
OPTIMIZERS = ("adamw", "adamw_8bit", "sgd")
ADAMW_IMPLS = ("fused", "foreach", "for-loop")
ATTENTIONS = ("sdpa", "eager", "flash")
DEVICES = ("cuda", "cpu")
DTYPES = ("fp32", "bf16", "fp16")

# Every knob estimate() takes besides model/method/batch_size/seq_len, with its default.
KNOBS: dict[str, Any] = {
    "task": None,                  # "causal-lm" | "seq-cls"; None: causal-lm for decoders, seq-cls for encoders
    "num_labels": 2,
    "precision": None,             # see PRECISIONS; None: fp32 for "full", the method's own for full-bf16/fp16,
                                   # "auto" otherwise (bf16-mixed on CUDA, fp32 on CPU)
    "weights_dtype": None,         # storage of the (frozen) weights; None: 16-bit for LoRA/QLoRA/head-only on
                                   # CUDA, else fp32 (full FT keeps fp32 master weights unless *-true)
    "optimizer": "adamw",
    "adamw_impl": "fused",         # transformers' default optimizer here is adamw_torch_fused
    "momentum": 0.0,               # SGD momentum (a state per trainable parameter when > 0)
    "gradient_checkpointing": False,
    "attention": "sdpa",
    "rank": 8,
    "targets": None,               # None: the architecture's q+v preset; "all-linear"; "preset:attention"; names
    "lora_dropout": 0.1,
    "lora_bias": "none",
    "use_dora": False,
    "modules_to_save": None,
    "quant_type": "nf4",
    "double_quant": True,
    "compute_dtype": "bf16",
    "kbit_prepare": True,          # peft.prepare_model_for_kbit_training: non-quantized params -> fp32
    "bnb_saves_input": False,      # bitsandbytes before 0.45-ish kept each 4-bit matmul's input for backward
    "device": "cuda",
    "grad_accum": 1,
    "cuda_context_gb": 0.5,        # PyTorch PR #86509: 0.3-0.7 GB depending on version / lazy loading
    "allocator_slack": 0.05,       # reserved-but-unallocated memory of the caching allocator, as a fraction
    "trust_remote_code": False,
}
_KNOB_ALIASES = {"r": "rank", "target_modules": "targets", "gradient_accumulation_steps": "grad_accum",
                 "attn_implementation": "attention", "quant": "quant_type", "bnb_4bit_quant_type": "quant_type"}


# -- the result ---------------------------------------------------------------------------------------------------

@dataclass
class Estimate:
    model: str
    method: str
    batch_size: int
    seq_len: int
    settings: dict                  # every knob as resolved (what the figure assumed)
    terms: dict                     # ordered name -> bytes
    peak_bytes: int                 # what nvidia-smi would show at the peak (context + slack on CUDA)
    allocated_bytes: int            # the peak of live tensors (torch.cuda.max_memory_allocated)
    phases: dict                    # forward_backward / optimizer_step -> bytes (allocated), and which is the peak
    naive_bytes: int                # the tutorial's rule: weights x 6 (applied to what trains)
    accelerate_bytes: int           # `accelerate estimate-memory` style (no activations, max of the parts)
    params: dict                    # total / trainable / percent / quantized / lora ... (PEFT's way of counting)
    activations: dict               # per layer, first layer, layers, embeddings, head, checkpointing
    fits: list = field(default_factory=list)   # [{gpu, memory_gb, fits, max_batch}]
    notes: list = field(default_factory=list)  # assumptions worth knowing

    def to_dict(self) -> dict:
        return {
            "model": self.model, "method": self.method, "batch_size": self.batch_size, "seq_len": self.seq_len,
            "settings": dict(self.settings), "terms": dict(self.terms), "peak_bytes": self.peak_bytes,
            "peak_gb": round(self.peak_bytes / GB, 3), "allocated_bytes": self.allocated_bytes,
            "phases": dict(self.phases), "naive_bytes": self.naive_bytes, "accelerate_bytes": self.accelerate_bytes,
            "params": dict(self.params), "activations": dict(self.activations), "fits": [dict(f) for f in self.fits],
            "notes": list(self.notes),
        }

    def summary(self) -> str:
        """A readable table for the terminal."""
        p = self.params
        lines = [f"{self.model} · {self.method} · batch {self.batch_size} × seq {self.seq_len} · "
                 f"{self.settings['precision']} · {self.settings['device']}",
                 f"params: {p['total']:,} total, {p['trainable']:,} trainable ({p['percent']:.4f}%)", ""]
        width = max(len(k) for k in self.terms) + 2
        for name, value in self.terms.items():
            lines.append(f"  {name:<{width}}{_fmt(value):>12}")
        lines.append(f"  {'-' * (width + 12)}")
        lines.append(f"  {'peak':<{width}}{_fmt(self.peak_bytes):>12}   "
                     f"(peak phase: {self.phases['peak_phase'].replace('_', '/')})")
        at = self.phases["at_peak"]
        lines.append(f"  {'':<{width}}(forward/backward {_fmt(self.phases['forward_backward'])}, optimizer step "
                     f"{_fmt(self.phases['optimizer_step'])}; at the peak: activations {_fmt(at['activations'])}, "
                     f"gradients {_fmt(at['gradients'])}, temporaries {_fmt(at['temporaries'])})")
        lines.append(f"  {'tutorial rule (weights x 6)':<{width}}{_fmt(self.naive_bytes):>12}")
        lines.append(f"  {'accelerate estimate-memory':<{width}}{_fmt(self.accelerate_bytes):>12}")
        act = self.activations
        ckpt = " (checkpointed)" if act["checkpointing"] else ""
        lines += ["", f"activations{ckpt}: {_fmt(act['per_layer_bytes'])} per layer × {act['layers']} layers "
                      f"(first layer {_fmt(act['first_layer_bytes'])}), head/loss {_fmt(act['head_bytes'])}"]
        if self.fits:
            lines += ["", f"  {'GPU':<12}{'memory':>8}  fits  largest batch"]
            for f in self.fits:
                lines.append(f"  {f['gpu']:<12}{f['memory_gb']:>6g}GB  {'yes ' if f['fits'] else 'no  '}  "
                             f"{f['max_batch'] if f['max_batch'] else '-'}")
        if self.notes:
            lines += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def _fmt(n: float) -> str:
    if abs(n) >= GB:
        return f"{n / GB:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


# -- settings -----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Setup:
    method: str            # full | lora | qlora | head-only
    task: str
    num_labels: int
    device: str
    precision: str         # fp32 | bf16-mixed | fp16-mixed | bf16-true | fp16-true
    autocast: str | None   # "bf16" / "f16" under mixed precision
    wdt: str               # dtype the model's weights are stored in (trainable base weights too)
    optimizer: str
    adamw_impl: str
    momentum: float
    ckpt: bool
    attention: str
    rank: int
    targets: Any
    lora_dropout: float
    lora_bias: str
    use_dora: bool
    modules_to_save: tuple
    quant_type: str
    double_quant: bool
    compute_dtype: str
    kbit_prepare: bool
    bnb_saves_input: bool
    grad_accum: int
    cuda_context: float
    slack: float


_DT = {"fp32": "f32", "float32": "f32", "bf16": "bf16", "bfloat16": "bf16", "fp16": "f16", "float16": "f16"}


def _choice(name: str, value, allowed) -> Any:
    if value not in allowed:
        raise EstimateError(f"{name}: {value!r} is not allowed; allowed: {', '.join(map(str, allowed))}")
    return value


def _precision(method: str, precision, weights_dtype, device: str) -> tuple[str, str | None, str]:
    """-> (precision, its 16-bit dtype or None, the dtype the weights are stored in)."""
    if method in ("full-bf16", "full-fp16") and precision in (None, "auto"):
        precision = method[5:] + "-mixed"
    elif precision is None:
        precision = "fp32" if method == "full" else "auto"
    precision = _PRECISION_ALIASES.get(str(precision).lower(), str(precision).lower())
    _choice("precision", precision, PRECISIONS)
    if precision == "auto":
        precision = "bf16-mixed" if device == "cuda" else "fp32"
    half = {"bf16-mixed": "bf16", "bf16-true": "bf16", "fp16-mixed": "f16", "fp16-true": "f16"}.get(precision)
    if weights_dtype is not None:
        wdt = _DT.get(str(weights_dtype).lower()) or _choice("weights_dtype", weights_dtype, DTYPES)
    elif precision.endswith("-true") or (not method.startswith("full") and device == "cuda" and half):
        wdt = half  # on GPUs a frozen base is loaded in 16-bit in practice (torch_dtype=bfloat16)
    else:
        wdt = "f32"  # full FT keeps fp32 master weights under mixed precision
    return precision, half, wdt


def _settings(method: str, batch_size, seq_len, knobs: dict, default_task: str) -> _Setup:
    for alias, name in _KNOB_ALIASES.items():
        if alias in knobs:
            knobs.setdefault(name, knobs.pop(alias))
    unknown = sorted(set(knobs) - set(KNOBS))
    if unknown:
        raise EstimateError(f"{unknown[0]}: unknown estimator setting; allowed: {', '.join(KNOBS)}")
    k = {**KNOBS, **{n: v for n, v in knobs.items() if v is not None}}
    method = _choice("method", str(method).lower(), METHODS)
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len), ("rank", k["rank"]),
                        ("grad_accum", k["grad_accum"]), ("num_labels", k["num_labels"])):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimateError(f"{name}: must be a whole number >= 1, got {value!r}")
    device = _choice("device", str(k["device"]).lower(), DEVICES)
    task = k["task"] or default_task
    _choice("task", task, ("causal-lm", "seq-cls"))
    base_method = "full" if method.startswith("full") else method
    precision, half, wdt = _precision(method, k["precision"], k["weights_dtype"], device)
    optimizer = _choice("optimizer", str(k["optimizer"]).lower(), OPTIMIZERS)
    attention = {"flash_attention_2": "flash", "flash-attention": "flash"}.get(k["attention"], k["attention"])
    _choice("attention", attention, ATTENTIONS)
    for name in ("lora_dropout", "momentum", "allocator_slack", "cuda_context_gb"):
        if isinstance(k[name], bool) or not isinstance(k[name], (int, float)) or k[name] < 0:
            raise EstimateError(f"{name}: must be a number >= 0, got {k[name]!r}")
    if k["lora_dropout"] >= 1:
        raise EstimateError(f"lora_dropout: must be < 1, got {k['lora_dropout']!r}")
    compute = _DT.get(str(k["compute_dtype"]).lower())
    if compute is None:
        raise EstimateError(f"compute_dtype: {k['compute_dtype']!r} is not allowed; allowed: bf16, fp16, fp32")
    mts = k["modules_to_save"]
    return _Setup(
        method=base_method, task=task, num_labels=k["num_labels"], device=device, precision=precision,
        autocast=half if precision.endswith("-mixed") else None, wdt=wdt, optimizer=optimizer,
        adamw_impl=_choice("adamw_impl", k["adamw_impl"], ADAMW_IMPLS), momentum=float(k["momentum"]),
        ckpt=bool(k["gradient_checkpointing"]), attention=attention, rank=k["rank"],
        targets=tuple(k["targets"]) if isinstance(k["targets"], list) else k["targets"],
        lora_dropout=float(k["lora_dropout"]), lora_bias=_choice("lora_bias", k["lora_bias"],
                                                                 ("none", "all", "lora_only")),
        use_dora=bool(k["use_dora"]), modules_to_save=tuple(mts or ()) if not isinstance(mts, str) else (mts,),
        quant_type=_choice("quant_type", str(k["quant_type"]).lower(), ("nf4", "fp4")),
        double_quant=bool(k["double_quant"]), compute_dtype=compute, kbit_prepare=bool(k["kbit_prepare"]),
        bnb_saves_input=bool(k["bnb_saves_input"]),
        grad_accum=k["grad_accum"], cuda_context=float(k["cuda_context_gb"]) * GB if device == "cuda" else 0.0,
        slack=float(k["allocator_slack"]) if device == "cuda" else 0.0)


# -- the architecture, from the meta device -------------------------------------------------------------------------

@dataclass
class _Lin:
    name: str          # full module name
    leaf: str
    rel: str | None    # name inside its transformer layer ("self_attn.q_proj"), None outside the layers
    layer: int | None
    d_in: int
    d_out: int
    bias: int          # bias numel (0 without)
    head: bool         # classifier / lm_head: never quantized, never a LoRA target
    kind: str          # Linear | Conv1D


@dataclass
class _Arch:
    label: str
    model_type: str
    family: str        # bert | distilbert | gpt2 | llama | raw
    task: str
    h: int
    L: int
    a: int
    kv: int
    d: int             # head dim
    I: int             # MLP width
    V: int
    act: str
    p_attn: float
    p_hidden: float
    p_emb: float
    total: int                                   # unique parameters of the task model
    params: list = field(default_factory=list)   # (name, numel, head, is_bias, owner)
    linears: list = field(default_factory=list)  # [_Lin]
    embeddings: list = field(default_factory=list)  # (name, num, dim)
    heads: tuple = ()
    tied: bool = False
    type_vocab: int = 0
    buffers: int = 0        # bytes of registered buffers (position ids, rotary frequencies)
    max_pos: int = 0
    family_note: str = ""


_DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "phi3", "llama", "mistral",
                  "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3", "olmo", "olmo2", "starcoder2"}
_FAMILY = {"bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert",
           "distilbert": "distilbert", "gpt2": "gpt2", "llama": "llama", "mistral": "llama", "qwen2": "llama",
           "qwen3": "llama", "mixtral": "llama", "gemma": "llama", "gemma2": "llama", "phi3": "llama",
           "olmo": "llama", "olmo2": "llama", "smollm3": "llama"}
_PARAM_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbt]?)\s*$", re.I)


def _resolve_model(model, trust_remote_code: bool) -> tuple[str, str, str]:
    """-> (kind, payload, label): kind is 'count' (payload = count), 'config' (payload = config JSON) or
    'pretrained' (payload = a local path or hub id for AutoConfig)."""
    if isinstance(model, dict):
        if "model_type" not in model:
            raise EstimateError("model: a config dict needs a 'model_type' key (as in config.json)")
        return "config", json.dumps(model, sort_keys=True, default=str), model.get("_name_or_path") or \
            model["model_type"]
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return "count", str(int(model)), f"{_fmt_count(int(model))} params"
    text = str(model or "").strip()
    if not text:
        raise EstimateError("model: must not be empty; give a preset (" + ", ".join(MODEL_PRESETS) + "), a "
                            "config.json or model directory, a hub id, or a parameter count like 7e9")
    m = _PARAM_COUNT.match(text)
    if m:
        count = float(m.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[m.group(2).lower()]
        return "count", str(int(count)), f"{_fmt_count(int(count))} params"
    key = preset_key(text)
    if key is not None:
        return "config", json.dumps(preset_config(key), sort_keys=True), key
    path = Path(text).expanduser()
    if path.is_file():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise EstimateError(f"model: cannot read {path} as a config.json: {exc}") from None
        if not isinstance(data, dict) or "model_type" not in data:
            raise EstimateError(f"model: {path} is not a Hugging Face config.json (no 'model_type' key)")
        return "config", json.dumps(data, sort_keys=True), path.parent.name or path.name
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EstimateError(f"model: {path} has no config.json, so it is not a model directory")
        return "pretrained", str(path), path.name
    if is_local_path(text):
        raise EstimateError(f"model: {text!r} does not exist")
    return "pretrained", text, text


def _fmt_count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


class _Quiet:
    """Silence transformers' logging and warnings while building meta models."""

    def __enter__(self):
        import warnings

        from transformers.utils import logging as hf_logging

        self._level = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()
        self._warn = warnings.catch_warnings()
        self._warn.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        from transformers.utils import logging as hf_logging

        self._warn.__exit__(*exc)
        hf_logging.set_verbosity(self._level)
        return False


def _load_config(kind: str, payload: str, trust_remote_code: bool):
    from transformers import AutoConfig

    if kind == "config":
        data = json.loads(payload)
        model_type = data.pop("model_type")
        try:
            return AutoConfig.for_model(model_type, **data)
        except (ValueError, KeyError) as exc:
            raise EstimateError(f"model: unknown model_type {model_type!r} for this transformers version "
                                f"({str(exc).splitlines()[0][:200]})") from None
    try:
        return AutoConfig.from_pretrained(payload, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
        hint = " (the hub is offline here)" if offline else ""
        raise EstimateError(
            f"model: {payload!r} is not a preset ({', '.join(MODEL_PRESETS)}), a parameter count like 7e9, "
            f"a local config.json/model directory, or a reachable hub id{hint}: "
            f"{str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__}") from None


def _default_task(config) -> str:
    archs = " ".join(getattr(config, "architectures", None) or [])
    if config.model_type in _DECODER_TYPES or "CausalLM" in archs or "LMHead" in archs:
        return "causal-lm"
    return "seq-cls"


@functools.lru_cache(maxsize=16)
def _config_and_task(kind: str, payload: str, trust_remote_code: bool):
    config = _load_config(kind, payload, trust_remote_code)
    return config, _default_task(config)


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


@functools.lru_cache(maxsize=32)
def _walk(kind: str, payload: str, task: str, num_labels: int, trust_remote_code: bool, label: str) -> _Arch:
    """Instantiate the task model on the meta device and record what the estimator needs. Cached per config."""
    config, _ = _config_and_task(kind, payload, trust_remote_code)
    model = _meta_model(config, task, num_labels, trust_remote_code)
    dims = _dims(config)
    linears, embeddings, params, heads = _modules(model, dims["L"])
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    family, note = _family(config, task, linears)
    return _Arch(label=label, model_type=config.model_type, family=family, task=task, **dims,
                 total=sum(p[1] for p in params), params=params, linears=linears, embeddings=embeddings,
                 heads=heads, tied=bool(out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight),
                 buffers=int(sum(b.numel() * b.element_size() for b in model.buffers())), family_note=note)


def _meta_model(config, task: str, num_labels: int, trust_remote_code: bool):
    import copy

    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    config = copy.deepcopy(config)
    if task == "seq-cls":
        config.num_labels = num_labels
        if getattr(config, "pad_token_id", None) is None:  # decoder classifiers find the last token by pad id
            eos = getattr(config, "eos_token_id", None)
            config.pad_token_id = eos[0] if isinstance(eos, list) else eos
    cls = AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM
    with _Quiet(), torch.device("meta"):
        try:
            return cls.from_config(config, trust_remote_code=trust_remote_code)
        except ValueError as exc:
            raise EstimateError(f"task: {config.model_type} has no {task} head in transformers "
                                f"({str(exc).splitlines()[0][:160]})") from None


def _dims(config) -> dict:
    """Widths, depth, heads, activation and dropout rates under their many config names."""
    h = int(_first(config, "hidden_size", "n_embd", "dim", "d_model"))
    a = int(_first(config, "num_attention_heads", "n_head", "n_heads"))
    p_hidden = float(_first(config, "hidden_dropout_prob", "resid_pdrop", "dropout", default=0.0))
    return {
        "h": h, "a": a,
        "L": int(_first(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers")),
        "kv": int(_first(config, "num_key_value_heads", default=a) or a),
        "d": int(_first(config, "head_dim", default=h // a) or h // a),
        "I": int(_first(config, "intermediate_size", "n_inner", "hidden_dim", "ffn_dim", default=4 * h) or 4 * h),
        "V": int(getattr(config, "vocab_size", 0) or 0),
        "act": str(_first(config, "hidden_act", "activation_function", "activation", default="gelu")),
        "p_attn": float(_first(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                               default=0.0)),
        "p_hidden": p_hidden,
        "p_emb": float(_first(config, "embd_pdrop", default=p_hidden)),
        "type_vocab": int(getattr(config, "type_vocab_size", 0) or 0),
        "max_pos": int(_first(config, "max_position_embeddings", "n_positions", default=0) or 0),
    }


def _modules(model, n_layers: int):
    """(linears, embeddings, params, heads) of an instantiated model. Heads are the top-level modules outside the
    backbone that hold weights (classifier, score, lm_head); params lists each tensor once (tied weights too)."""
    import torch.nn as nn

    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    heads = tuple(name for name, child in model.named_children()
                  if child is not backbone and any(True for _ in child.parameters()))
    layer_prefix = next((name + "." for name, m in model.named_modules()
                         if isinstance(m, nn.ModuleList) and len(m) == n_layers), "")
    linears, embeddings = [], []
    for name, module in model.named_modules():
        if type(module).__name__ == "Conv1D" and hasattr(module, "nf"):  # GPT-2: weight is (in, out)
            d_in, d_out = module.weight.shape
        elif isinstance(module, nn.Linear):
            d_in, d_out = module.in_features, module.out_features
        else:
            if isinstance(module, nn.Embedding):
                embeddings.append((name, module.num_embeddings, module.embedding_dim))
            continue
        layer, rel = None, None
        if layer_prefix and name.startswith(layer_prefix):
            index, _, rel = name[len(layer_prefix):].partition(".")
            layer = int(index) if index.isdigit() else None
        bias = module.bias.numel() if getattr(module, "bias", None) is not None else 0
        linears.append(_Lin(name, name.split(".")[-1], rel, layer, int(d_in), int(d_out), int(bias),
                            name.split(".")[0] in heads, type(module).__name__))
    params = [(name, int(p.numel()), name.split(".")[0] in heads, name.endswith("bias"),
               name.rsplit(".", 1)[0] if "." in name else "") for name, p in model.named_parameters()]
    return linears, embeddings, params, heads


def _family(config, task: str, linears: list) -> tuple[str, str]:
    family = _FAMILY.get(config.model_type)
    if family is not None:
        return family, ""
    gated = any(lin.leaf in ("gate_proj", "w1", "gate_up_proj") for lin in linears)
    family = "llama" if gated else ("gpt2" if task == "causal-lm" else "bert")
    return family, f"activations of {config.model_type} are modelled on the {family} family (parameters are exact)"


def _raw_arch(count: int, task: str, num_labels: int) -> _Arch:
    """A Llama-like stand-in for a bare parameter count: h and L on the usual depth/width curve, 32k vocab.
    Parameter totals are exact (the count given); trainable LoRA counts and activations are approximate."""
    V = 32000
    h = 64 * max(2, round((count / 12 / 0.0078 / 64 ** 3) ** (1 / 3)))  # L/h = 32/4096 as in Llama-2-7B
    I = int(round(2.6875 * h / 64) * 64)
    per_layer = 4 * h * h + 3 * h * I + 2 * h
    L = max(1, round((count - 2 * V * h) / per_layer))
    linears = []
    for i in range(L):
        for rel, d_in, d_out in (("self_attn.q_proj", h, h), ("self_attn.k_proj", h, h), ("self_attn.v_proj", h, h),
                                 ("self_attn.o_proj", h, h), ("mlp.gate_proj", h, I), ("mlp.up_proj", h, I),
                                 ("mlp.down_proj", I, h)):
            linears.append(_Lin(f"model.layers.{i}.{rel}", rel.split(".")[-1], rel, i, d_in, d_out, 0, False,
                                "Linear"))
    head_out = V if task == "causal-lm" else num_labels
    linears.append(_Lin("lm_head" if task == "causal-lm" else "score", "lm_head" if task == "causal-lm" else "score",
                        None, None, h, head_out, 0, True, "Linear"))
    lin_total = sum(x.d_in * x.d_out for x in linears)
    rest = max(0, count - lin_total)
    params = [(x.name + ".weight", x.d_in * x.d_out, x.head, False, x.name) for x in linears]
    params.append(("model.embed_tokens.weight", rest, False, False, "model.embed_tokens"))
    return _Arch(label=f"{_fmt_count(count)} params", model_type="llama", family="llama", task=task, h=h, L=L,
                 a=max(1, h // 128), kv=max(1, h // 128), d=128, I=I, V=V, act="silu", p_attn=0.0, p_hidden=0.0,
                 p_emb=0.0, total=count, params=params, linears=linears, embeddings=[("model.embed_tokens", V, h)],
                 heads=(linears[-1].name,), family_note=f"a bare parameter count: shapes assumed Llama-like "
                 f"(h={h}, {L} layers, vocab {V}); totals exact, activations approximate")


# -- parameters: what is stored, what trains ------------------------------------------------------------------------

_B = {"f32": 4, "bf16": 2, "f16": 2, "i64": 8, "bool": 1, "u8": 1}
_BLOCK = 64            # bitsandbytes 4-bit block size (one absmax per 64 weights)
_DQ_BLOCK = 256        # double quantization: the absmaxes are quantized to 8 bits in blocks of 256
_4BIT_CODE = 16 * 4    # each layer's quant_state keeps its 16-value NF4/FP4 code table
_DYNAMIC_MAP = 256 * 4  # the 8-bit map of double quantization (a copy per layer once a model is loaded)


@dataclass
class _LinPlan:
    trainable: bool = False       # the base weight trains (full FT, heads, modules_to_save)
    bias_trainable: bool = False
    lora: bool = False
    quant: bool = False
    wdt: str = "f32"


@dataclass
class _Params:
    weights: int = 0
    quant: int = 0
    grads: int = 0
    states: int = 0
    step_tmp: int = 0
    trainable: int = 0
    total: int = 0
    lora: int = 0
    quantized: int = 0
    unquantized_dtype: str = "f32"
    lin: dict = field(default_factory=dict)       # linear name -> _LinPlan
    norm_trainable: bool = False
    emb_trainable: bool = False
    targets: list = field(default_factory=list)
    tensors: list = field(default_factory=list)   # trainable tensors: (numel, dtype)


def _presets_for(arch: _Arch) -> dict[str, list[str]]:
    layers = [{"name": x.name, "leaf": x.leaf, "type": x.kind, "in_features": x.d_in, "out_features": x.d_out,
               "params": x.d_in * x.d_out + x.bias, "head": x.head} for x in arch.linears]
    try:  # the engine's own presets, so the estimate trains what a run would train
        from .models import target_presets

        return target_presets("", layers=layers, model_type=arch.model_type)
    except (ImportError, AttributeError, TypeError):
        body = list(dict.fromkeys(x["leaf"] for x in layers if not x["head"]))
        qv = [leaf for leaf in body if re.fullmatch(r"(q|v|query|value)(_proj|_lin)?|c_attn", leaf)]
        return {"qv": qv or body, "attention": qv or body, "all-linear": body}


def _resolve_targets(arch: _Arch, targets) -> list[str]:
    presets = _presets_for(arch)
    if targets is None:
        return list(presets["qv"])
    if isinstance(targets, str):
        key = targets[7:] if targets.startswith("preset:") else targets
        if key in presets:
            return list(presets[key])
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    names = [x.name for x in arch.linears if not x.head] + [e[0] for e in arch.embeddings]
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        leaves = ", ".join(dict.fromkeys(x.leaf for x in arch.linears if not x.head))
        raise EstimateError(f"targets: {', '.join(map(repr, missing))} matches no adaptable layer of "
                            f"{arch.label}; leaf names: {leaves}; presets: "
                            + ", ".join(f"preset:{p}" for p in presets))
    return list(targets)


def _matches(name: str, targets: list[str]) -> bool:
    return any(name == t or name.endswith("." + t) for t in targets)


def _plan_params(arch: _Arch, s: _Setup) -> _Params:
    P = _Params()
    lora = s.method in ("lora", "qlora")
    qlora = s.method == "qlora"
    heads = set(arch.heads)
    to_save = set(s.modules_to_save) | (heads if (lora and arch.task == "seq-cls") else set())
    if lora:
        P.targets = _resolve_targets(arch, s.targets)
    # Non-quantized weights of a 4-bit model: prepare_model_for_kbit_training casts them to fp32.
    other_dt = "f32" if (qlora and s.kbit_prepare) else s.wdt
    P.unquantized_dtype = other_dt

    def wrapped(owner: str) -> bool:  # PEFT wraps a module whose name is (or ends with) a modules_to_save entry
        parts = owner.split(".")
        prefixes = [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
        return lora and any(p == m or p.endswith("." + m) for p in prefixes for m in to_save)

    for lin in arch.linears:
        plan = _LinPlan(wdt=other_dt)
        if s.method == "full":
            plan.trainable = plan.bias_trainable = True
        elif s.method == "head-only":
            plan.trainable = plan.bias_trainable = lin.head
        else:
            saved = wrapped(lin.name)
            plan.trainable = saved
            plan.lora = not lin.head and not saved and _matches(lin.name, P.targets)
            plan.bias_trainable = saved or s.lora_bias == "all" or (s.lora_bias == "lora_only" and plan.lora)
            plan.quant = qlora and not lin.head and not saved
        P.lin[lin.name] = plan

    total = 0
    for name, numel, head, is_bias, owner in arch.params:
        plan = P.lin.get(owner)
        copied = wrapped(owner)
        if s.method == "full":
            trains = True
        elif s.method == "head-only":
            trains = head
        else:
            trains = copied or (is_bias and (s.lora_bias == "all" or
                                             (s.lora_bias == "lora_only" and plan is not None and plan.lora)))
        total += numel
        if plan is not None and plan.quant and not is_bias:
            P.quantized += numel
            P.weights += (numel + 1) // 2  # two 4-bit values per byte
            blocks = -(-numel // _BLOCK)
            P.quant += (blocks + 4 * -(-blocks // _DQ_BLOCK) + 4 + _DYNAMIC_MAP if s.double_quant else 4 * blocks) \
                + _4BIT_CODE
            continue
        P.weights += numel * _B[other_dt]
        if copied:  # modules_to_save: PEFT keeps the original (frozen) and trains a copy
            P.weights += numel * _B[other_dt]
            total += numel
        if trains:
            P.tensors.append((numel, other_dt))
    if lora:
        for lin in arch.linears:
            if not P.lin[lin.name].lora:
                continue
            for numel in (s.rank * lin.d_in, s.rank * lin.d_out) + ((lin.d_out,) if s.use_dora else ()):
                P.lora += numel
                P.tensors.append((numel, "f32"))  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
        for name, num, dim in arch.embeddings:
            if _matches(name, P.targets):
                for numel in (s.rank * num, s.rank * dim):
                    P.lora += numel
                    P.tensors.append((numel, "f32"))
        P.weights += 4 * P.lora
        total += P.lora
    P.weights += arch.buffers
    P.total = total
    P.trainable = sum(n for n, _ in P.tensors)
    P.grads = sum(n * _B[dt] for n, dt in P.tensors)
    P.states = _optimizer_states(P.tensors, s)
    P.step_tmp = _optimizer_temporaries(P.tensors, s)
    P.norm_trainable = s.method == "full"
    P.emb_trainable = s.method == "full"
    return P


def _optimizer_states(tensors: list, s: _Setup) -> int:
    if s.optimizer == "adamw":  # exp_avg + exp_avg_sq in the parameter's dtype, and a float32 step per tensor
        return sum(2 * n * _B[dt] + 4 for n, dt in tensors)
    if s.optimizer == "adamw_8bit":  # bitsandbytes: uint8 states + an absmax per 256 values; small tensors fp32
        return sum(2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 2 * 4 * n for n, _ in tensors) + \
            (2 * 256 * 4 if tensors else 0)
    return sum(n * _B[dt] for n, dt in tensors) if s.momentum > 0 else 0


def _optimizer_temporaries(tensors: list, s: _Setup) -> int:
    if s.optimizer != "adamw" or not tensors:
        return 0
    if s.adamw_impl == "foreach":  # _foreach_sqrt(exp_avg_sqs) materializes one state-sized list
        return sum(n * _B[dt] for n, dt in tensors)
    if s.adamw_impl == "for-loop":  # (exp_avg_sq.sqrt() / bias_correction).add_(eps): two temporaries per tensor
        return 2 * max(n * _B[dt] for n, dt in tensors)
    return 0


# -- activations: a symbolic forward pass --------------------------------------------------------------------------
# Sizes are per sample (batch 1); everything an activation holds scales linearly with the batch. Weight copies and
# dequantized weights do not ("const"). Each _Op remembers what it saved for backward and what it holds briefly,
# so the timeline below can replay forward and backward.

@dataclass
class _T:
    n: int                 # elements (per sample unless const)
    dt: str
    rg: bool               # requires grad
    const: bool = False
    id: int = 0
    base: "_T | None" = None  # a view shares its base's storage: keeping the view keeps all of it


@dataclass
class _Op:
    saved: list = field(default_factory=list)   # tensors first saved for backward by this op
    fwd: tuple = (0, 0)    # (per-sample, const) bytes held briefly while it runs forward (its output, temporaries)
    keep: tuple = (0, 0)   # bytes it creates that stay until the forward returns (the KV cache), unless saved
    bwd: tuple = (0, 0)    # (per-sample, const) bytes held while its backward runs (gradients in flight)
    wgrad: int = 0         # parameter-gradient bytes its backward allocates (stay until the optimizer step)
    label: str = ""


def _bytes(t: _T) -> tuple[int, int]:
    size = t.n * _B[t.dt]
    return (0, size) if t.const else (size, 0)


def _promote(a: str, b: str) -> str:
    return "f32" if "f32" in (a, b) else a


class _Sim:
    """Replays the forward of one model family op by op with PyTorch's saving rules (see module docstring)."""

    def __init__(self, arch: _Arch, s: _Setup, P: _Params, seq: int):
        self.arch, self.s, self.P, self.seq = arch, s, P, seq
        self.ops: list[_Op] = []
        self._ids = 0
        self._saved: set[int] = set()
        self._cache: set[str] = set()   # autocast's per-forward cache of trainable weights' 16-bit copies
        self._held: list[_T] = []       # tensors a Python variable keeps alive for a while (see hold())
        self._kept: list = []           # (op index, tensor) of KV-cache copies
        self.ac = s.autocast
        self.cuda = s.device == "cuda"

    # tensors and bookkeeping
    def new(self, n: int, dt: str, rg: bool, const: bool = False) -> _T:
        self._ids += 1
        return _T(int(n), dt, rg, const, self._ids)

    def op(self, label: str, saved=(), out: _T | None = None, inp: _T | None = None, fwd_extra=(0, 0),
           bwd_extra=(0, 0), wgrad: int = 0) -> None:
        first = []
        for t in saved:
            t = t.base if (t is not None and t.base is not None) else t
            if t is not None and t.id not in self._saved:
                self._saved.add(t.id)
                first.append(t)
        o = _bytes(out) if out is not None else (0, 0)
        i = _bytes(inp) if inp is not None else (0, 0)
        gi = i if (inp is not None and inp.rg) else (0, 0)
        on_path = out is not None and out.rg
        bwd = (o[0] + gi[0] + bwd_extra[0], o[1] + gi[1] + bwd_extra[1]) if on_path else (0, 0)
        # forward: the input (unless it is kept anyway), the output and any temporaries are alive at once
        held = (0, 0) if inp is None or inp.id in self._saved else i
        for t in self._held:
            if t.id not in self._saved and t is not inp and t is not out:
                held = (held[0] + _bytes(t)[0], held[1] + _bytes(t)[1])
        fwd = (o[0] + held[0] + fwd_extra[0], o[1] + held[1] + fwd_extra[1])
        self.ops.append(_Op(saved=first, fwd=fwd, bwd=bwd, wgrad=wgrad, label=label))

    def view(self, base: _T, n: int) -> _T:
        t = self.new(n, base.dt, base.rg)
        t.base = base
        return t

    def cache(self, t: _T) -> _T:
        """transformers builds a KV cache even in training (use_cache defaults to True; gradient checkpointing
        turns it off): DynamicCache.update concatenates a copy of k / v that lives until the forward returns."""
        if self.s.ckpt:
            return t
        copy = self.new(t.n, t.dt, t.rg)
        self.op("kv_cache", (), copy, None)
        self._kept.append((len(self.ops) - 1, copy))
        return copy

    def finish(self) -> None:
        """Cache copies that no op saved are extra memory until the forward returns."""
        for index, t in self._kept:
            if t.id not in self._saved:
                op = self.ops[index]
                b = _bytes(t)
                op.keep = (op.keep[0] + b[0], op.keep[1] + b[1])

    def hold(self, t: _T) -> None:
        """A tensor still referenced by a Python variable (e.g. BERT's intermediate output until its layer
        returns) stays alive in the forward even when autograd does not keep it."""
        self._held.append(t)

    def release(self, t: _T) -> None:
        self._held = [x for x in self._held if x is not t]

    def cast(self, t: _T, dt: str) -> _T:
        return t if t.dt == dt else self.new(t.n, dt, t.rg, t.const)

    def lower(self, t: _T) -> _T:
        """Autocast's input cast for matmul-like ops (a new tensor when the dtype changes)."""
        return self.cast(t, self.ac) if self.ac else t

    # layers
    def linear(self, x: _T, d_in: int, d_out: int, plan: _LinPlan, key: str, label: str = "linear") -> _T:
        tokens = x.n // d_in
        w_numel = d_in * d_out
        out_rg = x.rg or plan.trainable or plan.bias_trainable or plan.lora
        if plan.quant:  # bitsandbytes Linear4bit: dequantize, matmul, keep only the packed weight for backward
            cd = self.s.compute_dtype  # bnb casts the input to its compute dtype and the output back
            xc = self.cast(x, cd)
            saved = [xc] if (self.s.bnb_saves_input and x.rg) else []
            tmp = (_bytes(xc)[0] if xc is not x and not saved else 0, w_numel * _B[cd])
            out = self.new(tokens * d_out, x.dt, out_rg)
            self.op(label, saved, out, x, fwd_extra=tmp, bwd_extra=(0, w_numel * _B[cd]) if x.rg else (0, 0))
        else:
            xin = self.lower(x)
            saved = [xin] if plan.trainable else []
            if x.rg and self.ac and plan.wdt != self.ac:  # the 16-bit weight copy is kept for grad_input
                if not (plan.trainable and key in self._cache):
                    saved.append(self.new(w_numel, self.ac, False, const=True))
                if plan.trainable:
                    self._cache.add(key)
            out = self.new(tokens * d_out, self.ac or x.dt, out_rg)
            wgrad = w_numel * _B[plan.wdt] if plan.trainable else 0
            self.op(label, saved, out, x, wgrad=wgrad)
        if plan.lora:
            out = self.lora(x, d_in, d_out, out, plan)
        return out

    def lora(self, x: _T, d_in: int, d_out: int, base_out: _T, plan: _LinPlan) -> _T:
        s, tokens = self.s, x.n // d_in
        if not (plan.quant and self.ac):  # PEFT casts the input to the adapter dtype (4-bit layers skip it
            x = self.cast(x, "f32")         # under autocast)
        xd = self.dropout(x, s.lora_dropout)
        a_plan = _LinPlan(trainable=True, wdt="f32")
        a = self.linear(xd, d_in, s.rank, a_plan, key=f"A{self._ids}", label="lora_A")
        self.linear(a, s.rank, d_out, a_plan, key=f"B{self._ids}", label="lora_B")
        out = self.new(tokens * d_out, base_out.dt, True)  # base + B(A(x)) * scaling
        self.op("lora_add", (), out, None)
        return out

    def dropout(self, x: _T, p: float) -> _T:
        if p <= 0:
            return x
        mask = self.new(x.n, "bool" if self.cuda else x.dt, False)  # CPU dropout multiplies by a float noise
        out = self.new(x.n, x.dt, x.rg)
        self.op("dropout", [mask] if x.rg else [], out, x, fwd_extra=_bytes(mask) if not x.rg else (0, 0))
        return out

    def layer_norm(self, x: _T, width: int, trainable: bool) -> _T:
        xin = self.cast(x, "f32") if self.ac else x
        rg = x.rg or trainable
        saved = [xin, self.new(2 * (x.n // width), "f32", False)] if rg else []  # input, mean and rstd
        out = self.new(x.n, xin.dt, rg)
        self.op("layer_norm", saved, out, x, wgrad=2 * width * _B[self.s.wdt] if trainable else 0)
        return out

    def rms_norm(self, x: _T, width: int, trainable: bool) -> _T:
        """transformers' LlamaRMSNorm: upcast to fp32, x * rsqrt(mean(x²)+eps), back to the input dtype, * weight."""
        x32 = self.cast(x, "f32")
        saved = [x32, self.new(x.n // width, "f32", False)] if x.rg else []
        h = self.new(x.n, "f32", x.rg)
        self.op("rms_norm", saved, h, x)
        h = self.cast(h, x.dt)
        wdt = self.P.unquantized_dtype
        out = self.new(x.n, _promote(wdt, h.dt), x.rg or trainable)
        self.op("rms_weight", [h] if trainable else [], out, h, wgrad=width * _B[wdt] if trainable else 0)
        return out

    def act(self, x: _T, fn: str) -> _T:
        fn = fn.lower()
        if fn in ("gelu_new", "gelu_fast", "gelu_python_tanh"):  # python tanh-GELU: x, tanh, 0.5x, 1+tanh saved
            hi = "f32" if (self.ac and self.cuda) else x.dt    # CUDA autocast runs pow (and what follows) in fp32
            th = self.new(x.n, hi, x.rg)
            half = self.new(x.n, x.dt, x.rg)
            one_th = self.new(x.n, hi, x.rg)
            out = self.new(x.n, _promote(hi, x.dt), x.rg)
            self.op(fn, [x, th, half, one_th] if x.rg else [], out, x,
                    fwd_extra=(3 * x.n * _B[hi], 0))
            return out
        out = self.new(x.n, x.dt, x.rg)
        keep = out if fn in ("relu", "tanh", "sigmoid") else x  # these keep their output, gelu/silu their input
        self.op(fn, [keep] if x.rg else [], out, x)
        return out

    def add(self, a: _T, b: _T) -> _T:
        out = self.new(max(a.n, b.n), _promote(a.dt, b.dt), a.rg or b.rg)
        self.op("add", (), out, None)
        return out

    def mul(self, a: _T, b: _T) -> _T:
        out = self.new(a.n, _promote(a.dt, b.dt), a.rg or b.rg)
        self.op("mul", ([a] if b.rg else []) + ([b] if a.rg else []), out, None,
                bwd_extra=(_bytes(a)[0] + _bytes(b)[0], 0))
        return out

    def attention(self, q: _T, k: _T, v: _T, heads: int, kv_heads: int, p: float, family: str) -> _T:
        """Self-attention core. q: b·s·(heads·d); k, v: b·s·(kv_heads·d). Returns b·s·(heads·d)."""
        s, seq = self.s, self.seq
        rg = q.rg or k.rg or v.rg
        impl = s.attention
        if impl in ("sdpa", "flash") and not self.cuda and (impl == "flash" or p == 0):
            kernel = "flash"          # CPU flash attention (no dropout)
        elif impl in ("sdpa", "flash") and self.cuda:
            kernel = "flash"          # CUDA flash / memory-efficient: dropout inside the kernel
        elif impl == "sdpa":
            kernel = "math"           # CPU SDPA with dropout falls back to the math path
        else:
            kernel = "eager"
        probs = heads * seq * seq  # per sample
        if kernel == "flash":  # with grouped-query attention transformers passes enable_gqa: k, v stay small
            qs, ks, vs = self.lower(q), self.lower(k), self.lower(v)
            out = self.new(q.n, qs.dt, rg)
            lse = self.new(heads * seq, "f32", False)
            inputs = 0 if rg else (q.n + k.n + v.n) * _B[qs.dt]
            self.op("sdpa", [qs, ks, vs, out, lse] if rg else [], out, None, fwd_extra=(inputs, 0),
                    bwd_extra=(2 * (q.n + k.n) * _B[qs.dt], 0))
            return out
        if kernel == "math":  # at::_scaled_dot_product_attention_math; CPU upcasts 16-bit inputs to fp32
            dt = "f32" if not self.cuda else (self.ac or q.dt)
            rep = heads // kv_heads
            qs = self.new(q.n, dt, rg)
            ks = self.new(k.n * rep, dt, rg)
            vs = self.new(v.n * rep, dt, rg)
            attn = self.new(probs, dt, rg)
            noise = self.new(probs, "bool" if self.cuda else dt, False) if p > 0 else None
            dropped = self.new(probs, dt, rg) if p > 0 else attn
            out = self.new(q.n, dt, rg)
            saved = self._attention_saves(q, k, v, qs, ks, vs, attn, attn, noise, dropped)
            inputs = (q.n + k.n + v.n) * _B[q.dt]
            # forward: the inputs, then the scores (until softmax); unsaved, the scaled q/k and the
            # probabilities, noise and dropped probabilities are temporaries too
            # (the output only appears once the scores are gone)
            tmp = probs * _B[dt] if rg else k.n * _B[dt] + (3 if p > 0 else 1) * probs * _B[dt]
            self.op("sdpa_math", saved, out, None, fwd_extra=(inputs + tmp, 0),
                    bwd_extra=(3 * probs * _B[dt], 0))
            ctx = self.new(q.n, q.dt if not self.ac else self.ac, rg)  # back to the input dtype, heads merged
            self.op("merge_heads", (), ctx, None)
            return ctx
        # eager: matmul(q, kᵀ) -> (scale, mask) -> softmax -> dropout -> matmul(·, v) -> merge heads
        qs, ks, vs = self.lower(q), self.lower(k), self.lower(v)
        rep = heads // kv_heads
        if rep > 1:  # repeat_kv copies k and v to every query head
            ks, vs = self.new(ks.n * rep, ks.dt, ks.rg), self.new(vs.n * rep, vs.dt, vs.rg)
        sdt = "f32" if (family == "llama" or (self.ac and self.cuda)) else qs.dt  # llama: softmax in fp32
        soft = self.new(probs, sdt, rg)
        attn = self.cast(soft, qs.dt) if family == "llama" else soft
        noise, dropped = None, attn
        if p > 0:
            noise = self.new(probs, "bool" if self.cuda else attn.dt, False)
            dropped = self.new(probs, attn.dt, rg)
        mm_in = self.lower(dropped)
        saved = self._attention_saves(q, k, v, qs, ks, vs, soft, attn, noise, mm_in)
        out = self.new(q.n, mm_in.dt, rg)
        inputs = (q.n + k.n + v.n) * _B[q.dt]
        tmp = probs * _B[sdt] if rg else (3 if p > 0 else 2) * probs * _B[sdt]
        self.op("eager_attention", saved, out, None, fwd_extra=(inputs + tmp, 0),
                bwd_extra=(3 * probs * _B[sdt], 0))
        ctx = self.new(q.n, out.dt, rg)  # transpose(1, 2).contiguous()
        self.op("merge_heads", (), ctx, None)
        return ctx


    @staticmethod
    def _attention_saves(q, k, v, qs, ks, vs, soft, attn, noise, mm_in) -> list:
        """What matmul(q, kᵀ) -> softmax -> dropout -> matmul(·, v) keeps: each operand only for the other's
        gradient (in a LoRA model's first layer a frozen k needs no gradient, so q is not kept)."""
        qk = q.rg or k.rg
        saved = ([qs] if k.rg else []) + ([ks] if q.rg else [])
        if qk:
            saved += [soft] + ([noise] if noise is not None else []) + [vs]
        if v.rg:
            saved.append(mm_in)
        return saved


# Where each family keeps its layers' linears (names inside one transformer layer).
_ROLES = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
                   "up": "ffn.lin1", "down": "ffn.lin2"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
}
_ROLE_LEAVES = {"q": ("q_proj", "query", "q_lin", "wq", "q"), "k": ("k_proj", "key", "k_lin", "wk", "k"),
                "v": ("v_proj", "value", "v_lin", "wv", "v"), "o": ("o_proj", "out_proj", "out_lin", "dense", "wo"),
                "qkv": ("c_attn", "qkv_proj", "query_key_value", "Wqkv"), "gate": ("gate_proj", "w1"),
                "up": ("up_proj", "c_fc", "fc1", "lin1", "w3", "dense_h_to_4h"),
                "down": ("down_proj", "fc2", "lin2", "w2", "dense_4h_to_h")}


class _Layer:
    """The linears of transformer layer i: role -> (d_in, d_out, plan, key)."""

    def __init__(self, arch: _Arch, P: _Params, index: int):
        self.arch, self.P, self.index = arch, P, index
        self.by_rel = {x.rel: x for x in arch.linears if x.layer == index and x.rel}

    def get(self, role: str, d_in: int, d_out: int):
        rel = _ROLES.get(self.arch.family, {}).get(role)
        lin = self.by_rel.get(rel) if rel else None
        if lin is None:  # an architecture outside the presets: find the layer by its usual leaf names
            for cand in self.by_rel.values():
                if cand.leaf in _ROLE_LEAVES.get(role, ()) and (cand.d_in, cand.d_out) == (d_in, d_out):
                    lin = cand
                    break
        if lin is None:
            plan = _LinPlan(trainable=self.P.norm_trainable, bias_trainable=self.P.norm_trainable,
                            wdt=self.P.unquantized_dtype)
            return d_in, d_out, plan, f"{self.index}.{role}"
        return lin.d_in, lin.d_out, self.P.lin[lin.name], lin.name


def _layer_llama(sim: _Sim, lay: _Layer, x: _T, rope_dt: str) -> _T:
    A = sim.arch
    trainable_norm = sim.P.norm_trainable
    h = sim.rms_norm(x, A.h, trainable_norm)
    sim.hold(h)  # the attention block's `hidden_states` argument lives until the block returns
    q = sim.linear(h, *lay.get("q", A.h, A.a * A.d))
    k = sim.linear(h, *lay.get("k", A.h, A.kv * A.d))
    v = sim.linear(h, *lay.get("v", A.h, A.kv * A.d))
    # rotary embeddings: q*cos + rotate_half(q)*sin keeps only cos/sin (shared); the result takes cos' dtype
    q = sim.new(q.n, _promote(q.dt, rope_dt), q.rg)
    k = sim.new(k.n, _promote(k.dt, rope_dt), k.rg)
    sim.op("rope", (), None, None, fwd_extra=(_bytes(q)[0] + _bytes(k)[0], 0))
    k, v = sim.cache(k), sim.cache(v)
    o = sim.attention(q, k, v, A.a, A.kv, A.p_attn, "llama")
    o = sim.linear(o, *lay.get("o", A.a * A.d, A.h))
    sim.release(h)
    x = sim.add(x, o)
    h = sim.rms_norm(x, A.h, trainable_norm)
    sim.hold(h)  # ... and the MLP's input: down_proj(act(gate_proj(x)) * up_proj(x)) uses x twice
    g = sim.linear(h, *lay.get("gate", A.h, A.I))
    u = sim.linear(h, *lay.get("up", A.h, A.I))
    g = sim.act(g, A.act)
    m = sim.mul(g, u)
    d = sim.linear(m, *lay.get("down", A.I, A.h))
    sim.release(h)
    return sim.add(x, d)


def _layer_gpt2(sim: _Sim, lay: _Layer, x: _T) -> _T:
    A = sim.arch
    h = sim.layer_norm(x, A.h, sim.P.norm_trainable)
    sim.hold(h)  # GPT2Block's `hidden_states` keeps the normed input until the attention returns
    qkv = sim.linear(h, *lay.get("qkv", A.h, 3 * A.h))
    third = qkv.n // 3
    q, k, v = (sim.view(qkv, third) for _ in range(3))  # split: views of one qkv tensor
    k, v = sim.cache(k), sim.cache(v)
    o = sim.attention(q, k, v, A.a, A.a, A.p_attn, "gpt2")
    o = sim.linear(o, *lay.get("o", A.h, A.h))
    o = sim.dropout(o, A.p_hidden)
    sim.release(h)
    x = sim.add(x, o)
    h = sim.layer_norm(x, A.h, sim.P.norm_trainable)
    sim.hold(h)  # ... and likewise around the MLP
    u = sim.linear(h, *lay.get("up", A.h, A.I))
    u = sim.act(u, A.act)
    d = sim.linear(u, *lay.get("down", A.I, A.h))
    d = sim.dropout(d, A.p_hidden)
    sim.release(h)
    return sim.add(x, d)


def _layer_bert(sim: _Sim, lay: _Layer, x: _T, distil: bool) -> _T:
    A = sim.arch
    layer_input = x  # the encoder loop's variable keeps it until the layer returns (held once x moves on)
    q = sim.linear(x, *lay.get("q", A.h, A.h))
    k = sim.linear(x, *lay.get("k", A.h, A.h))
    v = sim.linear(x, *lay.get("v", A.h, A.h))
    ctx = sim.attention(q, k, v, A.a, A.a, A.p_attn, "bert")
    sim.hold(ctx)  # BertAttention keeps the attention output in a variable until its output block returns
    o = sim.linear(ctx, *lay.get("o", A.h, A.h))
    if not distil:  # DistilBERT has no dropout after the attention output
        o = sim.dropout(o, A.p_hidden)
    x = sim.layer_norm(sim.add(o, x), A.h, sim.P.norm_trainable)
    sim.release(ctx)
    sim.hold(layer_input)
    u = sim.linear(x, *lay.get("up", A.h, A.I))
    u = sim.act(u, A.act)
    sim.hold(u)  # ... and the intermediate activation until the layer returns
    d = sim.linear(u, *lay.get("down", A.I, A.h))
    d = sim.dropout(d, A.p_hidden)
    sim.hold(d)
    out = sim.layer_norm(sim.add(d, x), A.h, sim.P.norm_trainable)
    for t in (u, d, layer_input):
        sim.release(t)
    return out


def _layer(sim: _Sim, index: int, x: _T, rope_dt: str) -> _T:
    lay = _Layer(sim.arch, sim.P, index)
    family = sim.arch.family
    if family == "llama" or family == "raw":
        return _layer_llama(sim, lay, x, rope_dt)
    if family == "gpt2":
        return _layer_gpt2(sim, lay, x)
    return _layer_bert(sim, lay, x, distil=family == "distilbert")


def _embeddings(sim: _Sim) -> _T:
    """Token (+ position, + token type) embeddings -> (LayerNorm) -> dropout. The output needs a gradient when the
    embeddings train, or with gradient checkpointing (transformers then calls enable_input_require_grads)."""
    A, P, s = sim.arch, sim.P, sim.s
    trainable = P.emb_trainable
    dt = P.unquantized_dtype
    ids = sim.new(sim.seq, "i64", False)
    x = sim.new(sim.seq * A.h, dt, trainable or s.ckpt)
    emb = sum(num * dim for _, num, dim in A.embeddings) * _B[dt] if trainable else 0
    tied = A.V * A.h * _B[dt] if (trainable and A.tied) else 0
    # Untied embeddings allocate their gradient here; a tied one already has it (from lm_head) and adds a
    # dense temporary of the same size.
    sim.op("embedding", [ids] if trainable else [], x, None, bwd_extra=(0, tied), wgrad=emb - tied)
    if A.family in ("bert", "distilbert"):
        if A.family == "bert" and A.type_vocab and trainable:
            sim.op("token_type_ids", [sim.new(sim.seq, "i64", False)], None, None)
        x = sim.layer_norm(x, A.h, trainable)
        return sim.dropout(x, A.p_hidden)
    if A.family == "gpt2":
        return sim.dropout(x, A.p_emb)
    return x


def _head(sim: _Sim, x: _T) -> None:
    """Final norm, the task head and the loss."""
    A, P = sim.arch, sim.P
    heads = [lin for lin in A.linears if lin.head]
    if A.task == "causal-lm":
        if A.family == "llama" or A.family == "raw":
            x = sim.rms_norm(x, A.h, P.norm_trainable)
        else:
            x = sim.layer_norm(x, A.h, P.norm_trainable)
        lm = next((lin for lin in heads if lin.d_out == A.V), None)
        plan = P.lin[lm.name] if lm else _LinPlan(trainable=P.norm_trainable, wdt=P.unquantized_dtype)
        if A.tied and lm is not None and P.emb_trainable:
            plan = _LinPlan(trainable=True, wdt=plan.wdt)
        logits = sim.linear(x, A.h, A.V, plan, key="lm_head", label="lm_head")
        _causal_loss(sim, logits, A.V)
        return
    if A.family in ("gpt2", "llama", "raw"):  # decoder classifier: score on every token, pick the last one
        x = sim.rms_norm(x, A.h, P.norm_trainable) if A.family != "gpt2" else \
            sim.layer_norm(x, A.h, P.norm_trainable)
        for lin in heads:
            x = sim.linear(x, lin.d_in, lin.d_out, P.lin[lin.name], key=lin.name, label="score")
        return
    # encoder classifier: the first token through pooler / classifier linears
    cls = sim.new(A.h, x.dt, x.rg)
    sim.op("select_cls", (), cls, None)
    pooler = [lin for lin in A.linears if not lin.head and lin.layer is None and "pool" in lin.name]
    for lin in pooler + heads:
        cls = sim.linear(cls, lin.d_in, lin.d_out, P.lin[lin.name], key=lin.name, label="classifier")
        if lin is not heads[-1]:
            cls = sim.act(cls, "tanh" if A.family == "bert" else "relu")
            cls = sim.dropout(cls, A.p_hidden)


def _causal_loss(sim: _Sim, logits: _T, V: int) -> None:
    """transformers' ForCausalLMLoss: logits.float(), log_softmax (kept for backward), nll. In backward the
    log-probs' gradient and the logits' gradient exist at the same time."""
    seq = sim.seq
    l32 = sim.cast(logits, "f32")
    if l32 is not logits:  # in backward: the fp32 gradient and its 16-bit copy
        sim.op("to_fp32", (), sim.new(1, "f32", logits.rg), None, bwd_extra=(seq * V * 4 + _bytes(logits)[0], 0))
    logp = sim.new(seq * V, "f32", logits.rg)
    targets = sim.new(seq, "i64", False)
    extra = (_bytes(logits)[0] + (_bytes(l32)[0] if l32 is not logits else 0), 0)  # logits live till forward ends
    sim.op("log_softmax", [logp, targets] if logits.rg else [], sim.new(1, "f32", logits.rg), None,
           fwd_extra=extra, bwd_extra=(2 * seq * V * 4, 0))


# -- the step's timeline ------------------------------------------------------------------------------------------

@dataclass
class _Segment:
    kind: str              # pre | layer | head
    ops: list
    x: _T | None = None    # a layer's input (what gradient checkpointing keeps)
    repeat: int = 1


@dataclass
class _Timeline:
    points: list           # (act_p, act_c, grad_c, tmp_p, tmp_c) at every forward and backward op
    saved_p: int           # activations saved at the end of the forward, per sample
    saved_c: int
    layer_first: tuple     # saved by layer 0 / by each later layer / by the embeddings / by the head, (p, c)
    layer_rest: tuple
    pre: tuple
    head: tuple
    loss_saved: int        # log-probs + targets kept for the loss, per sample
    loss_peak: int         # the most logits/loss memory at once (kept + logits or their gradients), per sample
    layer_input: int       # one layer's input (what checkpointing keeps per layer), per sample


def _saved_of(op: _Op, skip: int = -1) -> tuple[int, int]:
    p = c = 0
    for t in op.saved:
        if t.id == skip:
            continue
        bp, bc = _bytes(t)
        p += bp
        c += bc
    return p, c


def _sum_saved(ops, skip: int = -1) -> tuple[int, int]:
    p = c = 0
    for op in ops:
        bp, bc = _saved_of(op, skip)
        p += bp
        c += bc
    return p, c


def _replay(segments: list[_Segment], ckpt: bool, resid: int, g0: int) -> list:
    """Forward then backward, op by op: activations saved and freed, gradients appearing, transients."""
    points = []
    act_p = act_c = 0
    keep_p = keep_c = 0  # the KV cache: alive until the forward returns
    grad = g0
    for seg in segments:
        for _ in range(seg.repeat):
            if ckpt and seg.kind == "layer":
                for op in seg.ops:  # checkpointed: everything is transient, only the layer input stays
                    sp, sc = _saved_of(op, seg.x.id)
                    points.append((act_p + sp, act_c + sc, grad, op.fwd[0] + resid, op.fwd[1]))
                xp, xc = _bytes(seg.x)
                act_p, act_c = act_p + xp, act_c + xc
                continue
            in_layer = resid if seg.kind == "layer" else 0  # the residual stream lives through the layer
            for op in seg.ops:
                sp, sc = _saved_of(op)
                act_p, act_c = act_p + sp, act_c + sc
                keep_p, keep_c = keep_p + op.keep[0], keep_c + op.keep[1]
                points.append((act_p, act_c, grad, op.fwd[0] + in_layer + keep_p, op.fwd[1] + keep_c))
    for seg in reversed(segments):
        for _ in range(seg.repeat):
            in_layer = resid if seg.kind == "layer" else 0
            if ckpt and seg.kind == "layer":  # recompute this layer's forward: its saves plus its transients
                lp, lc = _sum_saved(seg.ops, seg.x.id)
                act_p, act_c = act_p + lp, act_c + lc
                worst = max(seg.ops, key=lambda op: op.fwd[0])
                points.append((act_p, act_c, grad, worst.fwd[0] + resid, worst.fwd[1]))
            for op in reversed(seg.ops):
                skip = seg.x.id if (ckpt and seg.kind == "layer") else -1
                points.append((act_p, act_c, grad + op.wgrad, op.bwd[0] + in_layer, op.bwd[1]))
                grad += op.wgrad
                sp, sc = _saved_of(op, skip)
                act_p, act_c = act_p - sp, act_c - sc
            if ckpt and seg.kind == "layer":
                xp, xc = _bytes(seg.x)
                act_p, act_c = act_p - xp, act_c - xc
    return points


def _simulate(arch: _Arch, s: _Setup, P: _Params, seq: int) -> _Timeline:
    sim = _Sim(arch, s, P, seq)
    pre_start = len(sim.ops)
    x = _embeddings(sim)
    pre = _Segment("pre", sim.ops[pre_start:])
    rope_dt = P.unquantized_dtype  # cos/sin take the embeddings' dtype
    segments = [pre]
    layer_saved = []
    for index in range(min(arch.L, 2)):
        start = len(sim.ops)
        x_in = x
        x = _layer(sim, index, x, rope_dt)
        seg = _Segment("layer", sim.ops[start:], x_in, repeat=1 if index == 0 else arch.L - 1)
        segments.append(seg)
        layer_saved.append(_sum_saved(seg.ops))
    if arch.L == 1:
        layer_saved.append((0, 0))
    start = len(sim.ops)
    _head(sim, x)
    sim.finish()
    head = _Segment("head", sim.ops[start:])
    segments.append(head)
    stream = _B[x.dt] if x.dt in _B else 4
    resid = seq * arch.h * stream
    points = _envelope(_replay(segments, s.ckpt, resid, P.grads if s.grad_accum > 1 else 0))
    head_saved = _sum_saved(head.ops)
    loss_ops = [op for op in head.ops if op.label in ("log_softmax", "to_fp32")]
    loss_saved = _sum_saved(loss_ops)[0]
    loss_peak = loss_saved + max([max(op.fwd[0], op.bwd[0]) for op in loss_ops] + [0])
    pre_saved = _sum_saved(pre.ops)
    if s.ckpt:
        per_layer = _bytes(segments[1].x)
        total_p = pre_saved[0] + per_layer[0] * arch.L + head_saved[0]
        total_c = pre_saved[1] + head_saved[1]
    else:
        first, rest = layer_saved[0], layer_saved[1]
        total_p = pre_saved[0] + first[0] + rest[0] * (arch.L - 1) + head_saved[0]
        total_c = pre_saved[1] + first[1] + rest[1] * (arch.L - 1) + head_saved[1]
    return _Timeline(points, total_p, total_c, layer_saved[0], layer_saved[1], pre_saved, head_saved, loss_saved,
                     loss_peak, _bytes(segments[1].x)[0])


def _envelope(points: list) -> list:
    """The points that can be the peak for some batch size: memory is const + batch x per-sample, so only those
    not beaten by another with at least as much of both matter (a few out of thousands)."""
    keyed = sorted(((pt[0] + pt[3], pt[1] + pt[2] + pt[4], pt) for pt in points), key=lambda x: (-x[0], -x[1]))
    out, best_const = [], -1
    for _, const, pt in keyed:
        if const > best_const:
            out.append(pt)
            best_const = const
    return out


def _peak_at(points: list, b: int) -> tuple[int, tuple]:
    best, arg = -1, None
    for pt in points:
        v = pt[1] + pt[2] + pt[4] + b * (pt[0] + pt[3])
        if v > best:
            best, arg = v, pt
    return best, arg


# -- the public functions -------------------------------------------------------------------------------------------

_DT_NAME = {"f32": "fp32", "bf16": "bf16", "f16": "fp16"}


def estimate(model: Any = "llama-2-7b", method: str = "qlora", batch_size: int = 1, seq_len: int = 512,
             **knobs) -> Estimate:
    """Training memory of one step, term by term. `model`: a preset name (see MODEL_PRESETS), a config dict,
    a config.json or model directory, a hub id (needs the hub or its cache), or a parameter count ("7e9").
    `method`: full (fp32), full-bf16 / full-fp16 (mixed precision), lora, qlora, head-only. Knobs: see KNOBS.
    Pure: reads no weights and allocates nothing; the meta-device walk of an architecture is cached."""
    trust = bool(knobs.get("trust_remote_code", False))
    kind, payload, label = _resolve_model(model, trust)
    default_task = "causal-lm" if kind == "count" else _config_and_task(kind, payload, trust)[1]
    s = _settings(method, batch_size, seq_len, dict(knobs), default_task)
    if s.method == "head-only" and s.task != "seq-cls":
        raise EstimateError("method: head-only trains a classifier head, so it needs task seq-cls")
    arch = _raw_arch(int(payload), s.task, s.num_labels) if kind == "count" else \
        _walk(kind, payload, s.task, s.num_labels, trust, label)
    P = _plan_params(arch, s)
    tl = _simulate(arch, s, P, seq_len)
    b = batch_size
    resident = P.weights + P.quant + P.states
    fb, point = _peak_at(tl.points, b)
    step = P.grads + P.step_tmp
    allocated = resident + max(fb, step)
    slack = int(round(allocated * s.slack))
    peak = allocated + slack + int(s.cuda_context)
    in_fb = fb >= step
    terms = {
        "weights": P.weights,
        "quantization_constants": P.quant,
        "gradients": P.grads,
        "optimizer_states": P.states,
        "activations": tl.saved_p * b + tl.saved_c - tl.loss_saved * b,
        "logits_loss": tl.loss_peak * b,
        "optimizer_step_temporaries": P.step_tmp,
        "cuda_context": int(s.cuda_context),
        "allocator_slack": slack,
    }
    at_peak = {"weights": P.weights, "quantization_constants": P.quant, "optimizer_states": P.states}
    if in_fb:
        at_peak.update(activations=point[0] * b + point[1], gradients=point[2], temporaries=point[3] * b + point[4])
    else:
        at_peak.update(activations=0, gradients=P.grads, temporaries=P.step_tmp)
    phases = {"forward_backward": resident + fb, "optimizer_step": resident + step,
              "peak_phase": "forward_backward" if in_fb else "optimizer_step", "at_peak": at_peak}
    # the tutorial's weights x 6 (weights, gradients, 2 Adam states, 2x for activations) applied to what trains
    naive = (P.weights - arch.buffers - P.grads) + 6 * P.grads
    layer = tl.layer_rest if arch.L > 1 else tl.layer_first
    est = Estimate(
        model=arch.label, method=method, batch_size=b, seq_len=seq_len, settings=_settings_dict(s, P),
        terms=terms, peak_bytes=int(peak), allocated_bytes=int(allocated), phases=phases, naive_bytes=int(naive),
        accelerate_bytes=int(_accelerate_style(arch, s, P)),
        params={"total": P.total, "trainable": P.trainable,
                "percent": 100.0 * P.trainable / P.total if P.total else 0.0, "base": arch.total, "quantized": P.quantized, "lora": P.lora, "trainable_bytes": P.grads,
                "targets": list(P.targets), "tied_embeddings": arch.tied, "buffer_bytes": arch.buffers},
        activations={
            "per_layer_bytes": tl.layer_input * b if s.ckpt else _at(layer, b),
            "first_layer_bytes": tl.layer_input * b if s.ckpt else _at(tl.layer_first, b),
            "layers": arch.L,
            "recompute_bytes": _at(layer, b) if s.ckpt else 0,
            "embeddings_bytes": _at(tl.pre, b), "head_bytes": _at(tl.head, b),
            "total_bytes": tl.saved_p * b + tl.saved_c, "checkpointing": s.ckpt,
            "attention": _kernel_name(s, arch), "family": arch.family},
        notes=_notes(arch, s, seq_len))
    if s.device == "cuda":
        est.fits = _fits(tl.points, resident, step, s, b)
    return est


def _at(pc: tuple, b: int) -> int:
    return int(pc[0] * b + pc[1])


def _kernel_name(s: _Setup, arch: _Arch) -> str:
    if s.attention == "eager":
        return "eager (keeps b·a·s² probabilities)"
    if s.device == "cuda" or arch.p_attn == 0:
        return "sdpa flash/memory-efficient (keeps q, k, v, out, logsumexp)"
    return "sdpa math fallback (CPU with attention dropout: keeps b·a·s² probabilities)"


def _settings_dict(s: _Setup, P: _Params) -> dict:
    return {"task": s.task, "num_labels": s.num_labels, "device": s.device, "precision": s.precision,
            "weights_dtype": _DT_NAME[s.wdt], "unquantized_dtype": _DT_NAME[P.unquantized_dtype],
            "optimizer": s.optimizer, "adamw_impl": s.adamw_impl, "momentum": s.momentum,
            "gradient_checkpointing": s.ckpt, "attention": s.attention, "rank": s.rank,
            "targets": list(P.targets), "lora_dropout": s.lora_dropout, "lora_bias": s.lora_bias,
            "use_dora": s.use_dora, "quant_type": s.quant_type, "double_quant": s.double_quant,
            "compute_dtype": _DT_NAME[s.compute_dtype], "kbit_prepare": s.kbit_prepare,
            "bnb_saves_input": s.bnb_saves_input, "grad_accum": s.grad_accum,
            "cuda_context_bytes": int(s.cuda_context), "allocator_slack": s.slack}


def _accelerate_style(arch: _Arch, s: _Setup, P: _Params) -> float:
    """What `accelerate estimate-memory` reports: for full training the largest of model / gradients /
    optimizer / step (4x the fp32 size in float32, 2x in mixed precision); for LoRA it has only the model's
    load size in the chosen dtype (int4 = fp32 / 8, no quantization constants). Never activations."""
    fp32 = arch.total * 4
    if s.method == "full":
        return fp32 * 4 if s.precision == "fp32" and s.wdt == "f32" else fp32 * 2
    if s.method == "qlora":
        return fp32 / 8
    return arch.total * _B[s.wdt]


def _fits(points: list, resident: int, step: int, s: _Setup, b: int) -> list[dict]:
    """For each GPU: does this batch fit, and the largest batch that does (activations scale with the batch)."""
    out = []
    for gpu, nominal, mib in GPUS:
        room = (mib * MIB - s.cuda_context) / (1 + s.slack) - resident  # for the phase peaks
        best = math.inf if step <= room else 0
        for act_p, act_c, grad_c, tmp_p, tmp_c in points:
            per, const = act_p + tmp_p, act_c + grad_c + tmp_c
            if per > 0:
                best = min(best, (room - const) // per)
            elif const > room:
                best = 0
        best = int(max(0, min(best, 1 << 20)))
        out.append({"gpu": gpu, "memory_gb": nominal, "memory_bytes": mib * MIB, "fits": best >= b,
                    "max_batch": best})
    return out


def _notes(arch: _Arch, s: _Setup, seq_len: int) -> list[str]:
    notes = []
    if arch.family_note:
        notes.append(arch.family_note)
    if arch.max_pos and seq_len > arch.max_pos:
        notes.append(f"seq_len {seq_len} is longer than the model's {arch.max_pos} positions")
    notes.append("peak of a steady training step: optimizer states already exist, gradients are freed after "
                 "each step (zero_grad(set_to_none=True))")
    if s.device == "cuda":
        notes.append(f"CUDA context {s.cuda_context / GB:.2f} GB and allocator slack {s.slack:.0%} are "
                     "assumptions (PyTorch version and fragmentation dependent)")
    if s.use_dora:
        notes.append("DoRA: its magnitude vectors are counted; its extra activations (the weight norm) are not")
    if s.method == "qlora" and s.kbit_prepare:
        notes.append("prepare_model_for_kbit_training keeps embeddings, norms and heads in fp32")
    if s.method in ("lora", "qlora", "head-only") and s.device == "cuda" and s.wdt == "f32":
        notes.append("the frozen base is stored in fp32: loading it in bf16 would halve it")
    return notes


# -- measuring the real thing -------------------------------------------------------------------------------------

def live_tensor_bytes(model, optimizer=None, batch: dict | None = None) -> int:
    """Bytes of the distinct storages behind a model's parameters, buffers, gradients, 4-bit quantization
    states, the optimizer's states and a batch: what is resident before a step starts."""
    import torch

    storages: dict[tuple, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            storages[(t.device.type, st.data_ptr())] = st.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, qs.code, getattr(qs, "offset", None)):
                add(t)
            if getattr(qs, "state2", None) is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
    for t in model.buffers():
        add(t)
    if optimizer is not None:
        for state in optimizer.state.values():
            for t in state.values():
                add(t)
    for t in (batch or {}).values():
        add(t)
    return sum(storages.values())


def measure_step_peak(model, batch: dict, optimizer, *, autocast_dtype=None, max_grad_norm: float = 1.0) -> dict:
    """Run one training step (forward, backward, clip, optimizer step, zero_grad) and return its real peak in
    bytes of live tensors. CUDA: torch.cuda.max_memory_allocated. CPU: every allocation and free that the
    CPU allocator reports to torch.profiler (profile_memory=True), replayed in time order on top of what was
    resident before the step (parameters, buffers, optimizer states, the batch). Exact, unlike RSS.
    Returns {peak_bytes, resident_bytes, forward_bytes, backward_bytes, step_bytes, saved_bytes}: the phase
    figures are peaks of each phase; saved_bytes is what the forward left alive for backward."""
    import torch

    device = next(model.parameters()).device
    inputs = batch

    def run_step(mark):
        with mark("forward"):
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else \
                torch.autocast(device.type, enabled=False)
            with ctx:
                loss = model(**inputs).loss  # the outputs (and their logits) go as the forward ends
        with mark("backward"):
            loss.backward()
            del loss
        with mark("step"):
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    resident = live_tensor_bytes(model, optimizer, inputs)
    if device.type == "cuda":
        import contextlib

        marks, phases = {}, {}

        @contextlib.contextmanager
        def mark(name):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()
            phases[name] = torch.cuda.max_memory_allocated()
            if name == "forward":
                marks["saved"] = torch.cuda.memory_allocated()

        start = torch.cuda.memory_allocated()
        run_step(mark)
        return {"peak_bytes": max(phases.values()), "resident_bytes": start, "forward_bytes": phases["forward"],
                "backward_bytes": phases["backward"], "step_bytes": phases["step"],
                "saved_bytes": marks["saved"] - start}

    from torch.profiler import ProfilerActivity, profile, record_function

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        run_step(lambda name: record_function(f"lora_lab_phase:{name}"))
    events = prof.profiler.kineto_results.events()
    spans = {e.name().split(":", 1)[1]: (e.start_ns(), e.end_ns()) for e in events
             if e.name().startswith("lora_lab_phase:")}
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"), key=lambda x: x[0])
    live = peak = 0
    phase_peak = {name: 0 for name in spans}
    saved = 0
    for t, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
        for name, (a, b) in spans.items():
            if a <= t <= b:
                phase_peak[name] = max(phase_peak[name], live)
        if t <= spans["forward"][1]:
            saved = live
    return {"peak_bytes": resident + peak, "resident_bytes": resident,
            "forward_bytes": resident + phase_peak["forward"], "backward_bytes": resident + phase_peak["backward"],
            "step_bytes": resident + phase_peak["step"], "saved_bytes": saved}


# -- for the training recipe and the pages -------------------------------------------------------------------------

# The engine (train.OPTIMIZERS) runs "adamw" as transformers' adamw_torch: torch.optim.AdamW with its default
# implementation, foreach on CUDA and a per-tensor loop on CPU.
_ENGINE_ADAMW_IMPL = {"cuda": "foreach", "cpu": "for-loop"}


def experiment_knobs(cfg, num_labels: int = 2, device: str | None = None) -> dict:
    """estimate() arguments for an ExperimentConfig, as the engine trains it: weights loaded in fp32
    (models.load_model), LoRA/QLoRA from cfg.lora/cfg.quant, the Trainer's precision and optimizer. The
    sequence length is cfg.data.max_length: batches are padded to their longest row, so this bounds the peak."""
    if device is None:
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = {"auto": "auto", "fp32": "fp32", "bf16": "bf16-mixed", "fp16": "fp16-mixed"}[cfg.train.precision]
    targets = cfg.lora.target_modules
    return {
        "model": cfg.model.source, "method": cfg.method, "batch_size": cfg.train.batch_size,
        "seq_len": cfg.data.max_length, "task": cfg.task, "num_labels": num_labels, "device": device,
        "precision": precision, "weights_dtype": "fp32", "optimizer": cfg.train.optimizer,
        "adamw_impl": _ENGINE_ADAMW_IMPL[device], "gradient_checkpointing": cfg.train.gradient_checkpointing,
        "rank": cfg.lora.r, "targets": list(targets) if isinstance(targets, list) else targets,
        "lora_dropout": cfg.lora.dropout, "lora_bias": cfg.lora.bias, "use_dora": cfg.lora.use_dora,
        "modules_to_save": cfg.lora.modules_to_save, "quant_type": cfg.quant.quant_type,
        "double_quant": cfg.quant.double_quant, "compute_dtype": cfg.quant.compute_dtype,
        "grad_accum": cfg.train.gradient_accumulation_steps, "trust_remote_code": cfg.model.trust_remote_code,
    }


def estimate_for_experiment(cfg, num_labels: int = 2, device: str | None = None) -> dict:
    """The estimate a run records beside its measured peak (Estimate.to_dict()). Compare `allocated_bytes`
    with a CUDA run's torch.cuda.max_memory_allocated; `peak_bytes` adds the CUDA context and allocator slack.
    Reads only the model's config (never weights); the architecture walk is cached."""
    knobs = experiment_knobs(cfg, num_labels, device)
    model, method = knobs.pop("model"), knobs.pop("method")
    est = estimate(model, method, knobs.pop("batch_size"), knobs.pop("seq_len"), **knobs)
    out = est.to_dict()
    out["notes"].append(f"sequence length = data.max_length ({cfg.data.max_length}): the longest a padded "
                        "batch can be, so real steps with shorter batches use less")
    return out


def lora_param_table(d_in: int, d_out: int, ranks=(1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """LoRA on one d_in x d_out layer: W (d_out x d_in) stays frozen; B·A with A: r x d_in and B: d_out x r
    trains r·(d_in + d_out) parameters instead of d_in·d_out."""
    for name, value in (("d_in", d_in), ("d_out", d_out)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise EstimateError(f"{name}: must be a whole number >= 1, got {value!r}")
    full = d_in * d_out
    rows = []
    for r in ranks:
        if isinstance(r, bool) or not isinstance(r, int) or r < 1:
            raise EstimateError(f"ranks: every rank must be a whole number >= 1, got {r!r}")
        lora = r * (d_in + d_out)
        rows.append({"rank": r, "lora_params": lora, "full_params": full, "percent_of_full": 100.0 * lora / full,
                     "reduction": full / lora})
    return rows
