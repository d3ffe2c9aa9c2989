"""The step's timeline: forward then backward replayed op by op, and the peak over it.

Activations are saved and freed, parameter gradients appear as backward runs, transients come and go; gradient
checkpointing keeps one input per layer and recomputes one layer during backward. Memory at each point is
const + batch x per-sample, so only the points on the upper envelope can be the peak for some batch size.
"""
from __future__ import annotations

from dataclasses import dataclass

from .activations import ForwardSim, SimOp, SimTensor, embeddings, head, layer, nbytes
from .architecture import Architecture
from .parameters import ParamPlan
from .settings import DTYPE_BYTES, Settings


@dataclass
class Segment:
    kind: str              # pre | layer | head
    ops: list
    x: SimTensor | None = None    # a layer's input (what gradient checkpointing keeps)
    repeat: int = 1


@dataclass
class Timeline:
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


def saved_of(op: SimOp, skip: int = -1) -> tuple[int, int]:
    p = c = 0
    for t in op.saved:
        if t.id == skip:
            continue
        bp, bc = nbytes(t)
        p += bp
        c += bc
    return p, c


def sum_saved(ops, skip: int = -1) -> tuple[int, int]:
    p = c = 0
    for op in ops:
        bp, bc = saved_of(op, skip)
        p += bp
        c += bc
    return p, c


def replay(segments: list[Segment], ckpt: bool, resid: int, g0: int) -> list:
    """Forward then backward, op by op: activations saved and freed, gradients appearing, transients."""
    points = []
    act_p = act_c = 0
    keep_p = keep_c = 0  # the KV cache: alive until the forward returns
    grad = g0
    for seg in segments:
        for _ in range(seg.repeat):
            if ckpt and seg.kind == "layer":
                for op in seg.ops:  # checkpointed: everything is transient, only the layer input stays
                    sp, sc = saved_of(op, seg.x.id)
                    points.append((act_p + sp, act_c + sc, grad, op.fwd[0] + resid, op.fwd[1]))
                xp, xc = nbytes(seg.x)
                act_p, act_c = act_p + xp, act_c + xc
                continue
            in_layer = resid if seg.kind == "layer" else 0  # the residual stream lives through the layer
            for op in seg.ops:
                sp, sc = saved_of(op)
                act_p, act_c = act_p + sp, act_c + sc
                keep_p, keep_c = keep_p + op.keep[0], keep_c + op.keep[1]
                points.append((act_p, act_c, grad, op.fwd[0] + in_layer + keep_p, op.fwd[1] + keep_c))
    for seg in reversed(segments):
        for _ in range(seg.repeat):
            in_layer = resid if seg.kind == "layer" else 0
            if ckpt and seg.kind == "layer":  # recompute this layer's forward: its saves plus its transients
                lp, lc = sum_saved(seg.ops, seg.x.id)
                act_p, act_c = act_p + lp, act_c + lc
                worst = max(seg.ops, key=lambda op: op.fwd[0])
                points.append((act_p, act_c, grad, worst.fwd[0] + resid, worst.fwd[1]))
            for op in reversed(seg.ops):
                skip = seg.x.id if (ckpt and seg.kind == "layer") else -1
                points.append((act_p, act_c, grad + op.wgrad, op.bwd[0] + in_layer, op.bwd[1]))
                grad += op.wgrad
                sp, sc = saved_of(op, skip)
                act_p, act_c = act_p - sp, act_c - sc
            if ckpt and seg.kind == "layer":
                xp, xc = nbytes(seg.x)
                act_p, act_c = act_p - xp, act_c - xc
    return points


def simulate(arch: Architecture, s: Settings, params: ParamPlan, seq: int) -> Timeline:
    sim = ForwardSim(arch, s, params, seq)
    pre_start = len(sim.ops)
    x = embeddings(sim)
    pre = Segment("pre", sim.ops[pre_start:])
    rope_dt = params.unquantized_dtype  # cos/sin take the embeddings' dtype
    segments = [pre]
    layer_saved = []
    for index in range(min(arch.layers, 2)):
        start = len(sim.ops)
        x_in = x
        x = layer(sim, index, x, rope_dt)
        seg = Segment("layer", sim.ops[start:], x_in, repeat=1 if index == 0 else arch.layers - 1)
        segments.append(seg)
        layer_saved.append(sum_saved(seg.ops))
    if arch.layers == 1:
        layer_saved.append((0, 0))
    start = len(sim.ops)
    head(sim, x)
    sim.finish()
    tail = Segment("head", sim.ops[start:])
    segments.append(tail)
    stream = DTYPE_BYTES[x.dtype] if x.dtype in DTYPE_BYTES else 4
    resid = seq * arch.hidden * stream
    points = envelope(replay(segments, s.checkpointing, resid, params.grads if s.grad_accum > 1 else 0))
    head_saved = sum_saved(tail.ops)
    loss_ops = [op for op in tail.ops if op.label in ("log_softmax", "to_fp32")]
    loss_saved = sum_saved(loss_ops)[0]
    loss_peak = loss_saved + max([max(op.fwd[0], op.bwd[0]) for op in loss_ops] + [0])
    pre_saved = sum_saved(pre.ops)
    if s.checkpointing:
        per_layer = nbytes(segments[1].x)
        total_p = pre_saved[0] + per_layer[0] * arch.layers + head_saved[0]
        total_c = pre_saved[1] + head_saved[1]
    else:
        first, rest = layer_saved[0], layer_saved[1]
        total_p = pre_saved[0] + first[0] + rest[0] * (arch.layers - 1) + head_saved[0]
        total_c = pre_saved[1] + first[1] + rest[1] * (arch.layers - 1) + head_saved[1]
    return Timeline(points, total_p, total_c, layer_saved[0], layer_saved[1], pre_saved, head_saved, loss_saved,
                     loss_peak, nbytes(segments[1].x)[0])


def envelope(points: list) -> list:
    """The points that can be the peak for some batch size: memory is const + batch x per-sample, so only those
    not beaten by another with at least as much of both matter (a few out of thousands)."""
    keyed = sorted(((pt[0] + pt[3], pt[1] + pt[2] + pt[4], pt) for pt in points), key=lambda x: (-x[0], -x[1]))
    out, best_const = [], -1
    for _, const, pt in keyed:
        if const > best_const:
            out.append(pt)
            best_const = const
    return out


def peak_at(points: list, b: int) -> tuple[int, tuple]:
    best, arg = -1, None
    for pt in points:
        v = pt[1] + pt[2] + pt[4] + b * (pt[0] + pt[3])
        if v > best:
            best, arg = v, pt
    return best, arg


