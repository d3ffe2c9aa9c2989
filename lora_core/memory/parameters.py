"""Parameters: what is stored, what trains, and what the optimizer keeps, as exact byte counts.

Which tensors exist and which train is `structure.plan`, the same PEFT rules `models.count_params` uses, so the
estimate trains what a run trains. This module adds storage: 4-bit packing and quantization constants
(bitsandbytes), dtypes, gradients, optimizer states and the optimizer step's temporaries.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .. import structure
from ..errors import EstimateError, LoraLabError
from .architecture import Architecture
from .settings import DTYPE_BYTES, Settings

BLOCK = 64              # bitsandbytes 4-bit block size (one absmax per 64 weights)
DOUBLE_QUANT_BLOCK = 256  # double quantization: the absmaxes are quantized to 8 bits in blocks of 256
CODE_4BIT = 16 * 4      # each layer's quant_state keeps its 16-value NF4/FP4 code table
DYNAMIC_MAP = 256 * 4   # the 8-bit map of double quantization (a copy per layer once a model is loaded)


@dataclass
class LinearPlan:
    trainable: bool = False       # the base weight trains (full FT, heads, modules_to_save)
    bias_trainable: bool = False
    lora: bool = False
    quant: bool = False
    dtype: str = "f32"


@dataclass
class ParamPlan:
    weights: int = 0              # bytes of every stored parameter, 4-bit packed or not, plus buffers
    quant: int = 0                # quantization constants
    grads: int = 0
    states: int = 0               # optimizer states
    step_tmp: int = 0             # the optimizer step's temporaries
    trainable: int = 0
    total: int = 0
    lora: int = 0
    quantized: int = 0
    unquantized_dtype: str = "f32"
    linears: dict = field(default_factory=dict)   # linear name -> LinearPlan
    norm_trainable: bool = False
    emb_trainable: bool = False
    targets: list = field(default_factory=list)
    tensors: list = field(default_factory=list)   # trainable tensors: (numel, dtype)


def plan_params(arch: Architecture, s: Settings) -> ParamPlan:
    lora = s.method in ("lora", "qlora")
    try:
        planned = structure.plan(arch.structure, s.method, s.lora if lora else None)
    except LoraLabError as exc:  # a target name the model does not have: the message lists what exists
        raise EstimateError(str(exc)) from None
    params = ParamPlan(targets=list(planned.targets))
    # Non-quantized weights of a 4-bit model: prepare_model_for_kbit_training casts them to fp32.
    params.unquantized_dtype = dtype = "f32" if (s.method == "qlora" and s.kbit_prepare) else s.weights_dtype

    def copied(name: str) -> bool:
        return any(name == m or name.startswith(m + ".") for m in planned.copied)

    for lin in arch.linears:
        plan = LinearPlan(dtype=dtype)
        if s.method == "full":
            plan.trainable = plan.bias_trainable = True
        elif s.method == "head-only":
            plan.trainable = plan.bias_trainable = lin.head
        else:
            saved = copied(lin.name)
            plan.trainable = saved
            plan.lora = lin.name in planned.lora_modules
            plan.bias_trainable = saved or s.lora.bias == "all" or (s.lora.bias == "lora_only" and plan.lora)
            plan.quant = s.method == "qlora" and not lin.head and not saved  # bnb skips the heads
        params.linears[lin.name] = plan

    for t in planned.tensors:
        params.total += t.numel
        if t.kind == "lora":
            params.lora += t.numel
            params.tensors.append((t.numel, "f32"))  # PEFT keeps adapters in fp32 (autocast_adapter_dtype)
            continue
        plan = params.linears.get(t.module)
        if t.kind == "base" and plan is not None and plan.quant and not t.bias:
            params.quantized += t.numel
            params.weights += (t.numel + 1) // 2  # two 4-bit values per byte
            params.quant += quantization_constants(t.numel, s.double_quant)
            continue
        params.weights += t.numel * DTYPE_BYTES[dtype]
        if t.trainable:
            params.tensors.append((t.numel, dtype))
    params.weights += 4 * params.lora + arch.buffers
    params.trainable = sum(n for n, _ in params.tensors)
    params.grads = sum(n * DTYPE_BYTES[dt] for n, dt in params.tensors)
    params.states = optimizer_states(params.tensors, s)
    params.step_tmp = optimizer_temporaries(params.tensors, s)
    params.norm_trainable = params.emb_trainable = s.method == "full"
    return params


def quantization_constants(numel: int, double_quant: bool) -> int:
    """Bytes of one 4-bit weight's quant_state: an fp32 absmax per block, or with double quantization an 8-bit
    absmax per block plus fp32 constants per 256 blocks, an offset and the 8-bit map; and the code table."""
    blocks = -(-numel // BLOCK)
    if double_quant:
        return blocks + 4 * -(-blocks // DOUBLE_QUANT_BLOCK) + 4 + DYNAMIC_MAP + CODE_4BIT
    return 4 * blocks + CODE_4BIT


def optimizer_states(tensors: list, s: Settings) -> int:
    if s.optimizer == "adamw":  # exp_avg + exp_avg_sq in the parameter's dtype, and a float32 step per tensor
        return sum(2 * n * DTYPE_BYTES[dt] + 4 for n, dt in tensors)
    if s.optimizer == "adamw_8bit":  # bitsandbytes: uint8 states + an absmax per 256 values; small tensors fp32
        return sum(2 * n + 2 * 4 * -(-n // 256) if n >= 4096 else 2 * 4 * n for n, _ in tensors) + \
            (2 * 256 * 4 if tensors else 0)
    return sum(n * DTYPE_BYTES[dt] for n, dt in tensors) if s.momentum > 0 else 0


def optimizer_temporaries(tensors: list, s: Settings) -> int:
    if s.optimizer != "adamw" or not tensors:
        return 0
    if s.adamw_impl == "foreach":  # _foreach_sqrt(exp_avg_sqs) materializes one state-sized list
        return sum(n * DTYPE_BYTES[dt] for n, dt in tensors)
    if s.adamw_impl == "for-loop":  # (exp_avg_sq.sqrt() / bias_correction).add_(eps): two temporaries per tensor
        return 2 * max(n * DTYPE_BYTES[dt] for n, dt in tensors)
    return 0  # fused: one kernel per parameter group, no tensor-sized temporaries


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
