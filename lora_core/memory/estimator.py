"""The estimate: training memory of one step, term by term, and the `Estimate` it returns.

    estimate(model="llama-2-7b", method="qlora", batch_size=1, seq_len=512, **knobs) -> Estimate

peak = weights + quantization constants + optimizer states + max(forward/backward phase, optimizer-step phase),
where the forward/backward phase is the simulated timeline (activations freed and gradients appearing as
backward runs) and the step phase is gradients + optimizer temporaries. On CUDA a CUDA context and allocator
slack are added. Optimizer states count as present: the peak of a steady training step, not of the first one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ..errors import EstimateError
from .architecture import Architecture, model_ref
from .parameters import plan_params
from .presets import GPUS
from .settings import DTYPE_BYTES, DTYPE_NAMES, GB, Settings, resolve
from .timeline import Timeline, peak_at, simulate

MIB = 1024 ** 2


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
                 f"{self.settings['train.precision']} · {self.settings['device']}",
                 f"params: {p['total']:,} total, {p['trainable']:,} trainable ({p['percent']:.4f}%)", ""]
        width = max(len(k) for k in self.terms) + 2
        for name, value in self.terms.items():
            lines.append(f"  {name:<{width}}{fmt_bytes(value):>12}")
        lines.append(f"  {'-' * (width + 12)}")
        lines.append(f"  {'peak':<{width}}{fmt_bytes(self.peak_bytes):>12}   "
                     f"(peak phase: {self.phases['peak_phase'].replace('_', '/')})")
        at = self.phases["at_peak"]
        lines.append(f"  {'':<{width}}(forward/backward {fmt_bytes(self.phases['forward_backward'])}, "
                     f"optimizer step {fmt_bytes(self.phases['optimizer_step'])}; at the peak: activations "
                     f"{fmt_bytes(at['activations'])}, gradients {fmt_bytes(at['gradients'])}, temporaries "
                     f"{fmt_bytes(at['temporaries'])})")
        lines.append(f"  {'tutorial rule (weights x 6)':<{width}}{fmt_bytes(self.naive_bytes):>12}")
        lines.append(f"  {'accelerate estimate-memory':<{width}}{fmt_bytes(self.accelerate_bytes):>12}")
        act = self.activations
        ckpt = " (checkpointed)" if act["checkpointing"] else ""
        lines += ["", f"activations{ckpt}: {fmt_bytes(act['per_layer_bytes'])} per layer × {act['layers']} layers "
                      f"(first layer {fmt_bytes(act['first_layer_bytes'])}), head/loss {fmt_bytes(act['head_bytes'])}"]
        if self.fits:
            lines += ["", f"  {'GPU':<12}{'memory':>8}  fits  largest batch"]
            for f in self.fits:
                lines.append(f"  {f['gpu']:<12}{f['memory_gb']:>6g}GB  {'yes ' if f['fits'] else 'no  '}  "
                             f"{f['max_batch'] if f['max_batch'] else '-'}")
        if self.notes:
            lines += [""] + [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


def fmt_bytes(n: float) -> str:
    if abs(n) >= GB:
        return f"{n / GB:.2f} GB"
    if abs(n) >= 1e6:
        return f"{n / 1e6:.1f} MB"
    return f"{n / 1e3:.1f} kB"


def estimate(model: Any = "llama-2-7b", method: str = "qlora", batch_size: int = 1, seq_len: int = 512,
             **knobs) -> Estimate:
    """Training memory of one step, term by term. `model`: a preset name (see MODEL_PRESETS), a config dict,
    a config.json or model directory, a hub id (needs the hub or its cache), or a parameter count ("7e9").
    `method`: full (fp32), full-bf16 / full-fp16 (mixed precision), lora, qlora, head-only. `seq_len`: tokens
    per row of the (padded) batch. Knobs: see settings.KNOBS (config fields by their dotted names).
    Pure: reads no weights and allocates nothing; a model's structure is described once and cached on disk."""
    ref = model_ref(model)
    s = resolve(method, batch_size, seq_len, dict(knobs), ref.default_task())
    if s.method == "head-only" and s.task != "seq-cls":
        raise EstimateError("method: head-only trains a classifier head, so it needs task seq-cls")
    arch = ref.architecture(s.task, s.num_labels, s.trust_remote_code)
    params = plan_params(arch, s)
    tl = simulate(arch, s, params, seq_len)
    b = batch_size
    resident = params.weights + params.quant + params.states
    fb, point = peak_at(tl.points, b)
    step = params.grads + params.step_tmp
    allocated = resident + max(fb, step)
    slack = int(round(allocated * s.slack))
    in_fb = fb >= step
    terms = {
        "weights": params.weights,
        "quantization_constants": params.quant,
        "gradients": params.grads,
        "optimizer_states": params.states,
        "activations": tl.saved_p * b + tl.saved_c - tl.loss_saved * b,
        "logits_loss": tl.loss_peak * b,
        "optimizer_step_temporaries": params.step_tmp,
        "cuda_context": int(s.cuda_context),
        "allocator_slack": slack,
    }
    at_peak = {"weights": params.weights, "quantization_constants": params.quant, "optimizer_states": params.states}
    if in_fb:
        at_peak.update(activations=point[0] * b + point[1], gradients=point[2], temporaries=point[3] * b + point[4])
    else:
        at_peak.update(activations=0, gradients=params.grads, temporaries=params.step_tmp)
    phases = {"forward_backward": resident + fb, "optimizer_step": resident + step,
              "peak_phase": "forward_backward" if in_fb else "optimizer_step", "at_peak": at_peak}
    # the tutorial's weights x 6 (weights, gradients, 2 Adam states, 2x for activations) applied to what trains
    naive = (params.weights - arch.buffers - params.grads) + 6 * params.grads
    est = Estimate(
        model=arch.label, method=method, batch_size=b, seq_len=seq_len,
        settings={**s.to_dict(), "unquantized_dtype": DTYPE_NAMES[params.unquantized_dtype]},
        terms=terms, peak_bytes=int(allocated + slack + s.cuda_context), allocated_bytes=int(allocated),
        phases=phases, naive_bytes=int(naive), accelerate_bytes=int(accelerate_style(arch, s)),
        params={"total": params.total, "trainable": params.trainable,
                "percent": 100.0 * params.trainable / params.total if params.total else 0.0, "base": arch.total,
                "quantized": params.quantized, "lora": params.lora, "trainable_bytes": params.grads,
                "targets": list(params.targets), "tied_embeddings": arch.tied, "buffer_bytes": arch.buffers},
        activations=_activations(tl, arch, s, b), notes=_notes(arch, s, seq_len))
    if s.device == "cuda":
        est.fits = _fits(tl.points, resident, step, s, b)
    return est


def _activations(tl: Timeline, arch: Architecture, s: Settings, b: int) -> dict:
    def at(pc: tuple) -> int:
        return int(pc[0] * b + pc[1])

    layer = tl.layer_rest if arch.layers > 1 else tl.layer_first
    ckpt = s.checkpointing
    return {"per_layer_bytes": tl.layer_input * b if ckpt else at(layer),
            "first_layer_bytes": tl.layer_input * b if ckpt else at(tl.layer_first), "layers": arch.layers,
            "recompute_bytes": at(layer) if ckpt else 0, "embeddings_bytes": at(tl.pre), "head_bytes": at(tl.head),
            "total_bytes": tl.saved_p * b + tl.saved_c, "checkpointing": ckpt, "attention": _kernel_name(s, arch),
            "family": arch.family}


def _kernel_name(s: Settings, arch: Architecture) -> str:
    if s.attention == "eager":
        return "eager (keeps b·a·s² probabilities)"
    if s.device == "cuda" or arch.p_attn == 0:
        return "sdpa flash/memory-efficient (keeps q, k, v, out, logsumexp)"
    return "sdpa math fallback (CPU with attention dropout: keeps b·a·s² probabilities)"


def accelerate_style(arch: Architecture, s: Settings) -> float:
    """What `accelerate estimate-memory` reports: for full training the largest of model / gradients /
    optimizer / step (4x the fp32 size in float32, 2x in mixed precision); for LoRA it has only the model's
    load size in the chosen dtype (int4 = fp32 / 8, no quantization constants). Never activations."""
    fp32 = arch.total * 4
    if s.method == "full":
        return fp32 * 4 if s.precision == "fp32" and s.weights_dtype == "f32" else fp32 * 2
    if s.method == "qlora":
        return fp32 / 8
    return arch.total * DTYPE_BYTES[s.weights_dtype]


def _fits(points: list, resident: int, step: int, s: Settings, b: int) -> list[dict]:
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


def _notes(arch: Architecture, s: Settings, seq_len: int) -> list[str]:
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
    if s.lora.use_dora:
        notes.append("DoRA: its magnitude vectors are counted; its extra activations (the weight norm) are not")
    if s.method == "qlora" and s.kbit_prepare:
        notes.append("prepare_model_for_kbit_training keeps embeddings, norms and heads in fp32")
    if s.method in ("lora", "qlora", "head-only") and s.device == "cuda" and s.weights_dtype == "f32":
        notes.append("the frozen base is stored in fp32: loading it in bf16 would halve it")
    return notes
