"""Activations: a symbolic forward pass that records which tensors autograd saves for backward.

`ForwardSim` walks the layers of the model's family (BERT-like, DistilBERT, GPT-2, Llama-like) op by op and
follows PyTorch's saving rules: a Linear saves its input only if its weight trains, a dropout saves its mask only
if its input needs a gradient (so the first layer of a LoRA model saves less), autocast saves 16-bit copies of
inputs and weights, CPU dropout masks have the input's dtype while CUDA's are 1-byte, SDPA keeps q/k/v/out + a
logsumexp while eager attention (and CPU SDPA with dropout) keeps b·a·s² probabilities. The logits and loss
follow transformers' ForCausalLMLoss (fp32 upcast, log-softmax kept; transformers #30860).

Sizes are per sample (batch 1): everything an activation holds scales linearly with the batch. Weight copies and
dequantized weights do not ("const"). Each SimOp remembers what it saved and what it holds briefly, so
timeline.py can replay forward and backward.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .architecture import Architecture
from .parameters import LinearPlan, ParamPlan
from .settings import DTYPE_BYTES, Settings


@dataclass
class SimTensor:
    numel: int             # elements (per sample unless const)
    dtype: str             # a settings.DTYPE_BYTES code
    needs_grad: bool       # requires grad
    const: bool = False
    id: int = 0
    base: "SimTensor | None" = None  # a view shares its base's storage: keeping the view keeps all of it


@dataclass
class SimOp:
    saved: list = field(default_factory=list)   # tensors first saved for backward by this op
    fwd: tuple = (0, 0)    # (per-sample, const) bytes held briefly while it runs forward (its output, temporaries)
    keep: tuple = (0, 0)   # bytes it creates that stay until the forward returns (the KV cache), unless saved
    bwd: tuple = (0, 0)    # (per-sample, const) bytes held while its backward runs (gradients in flight)
    wgrad: int = 0         # parameter-gradient bytes its backward allocates (stay until the optimizer step)
    label: str = ""


def nbytes(t: SimTensor) -> tuple[int, int]:
    size = t.numel * DTYPE_BYTES[t.dtype]
    return (0, size) if t.const else (size, 0)


def promote(a: str, b: str) -> str:
    return "f32" if "f32" in (a, b) else a


class ForwardSim:
    """Replays the forward of one model family op by op with PyTorch's saving rules (see module docstring)."""

    def __init__(self, arch: Architecture, s: Settings, params: ParamPlan, seq: int):
        self.arch, self.s, self.params, self.seq = arch, s, params, seq
        self.ops: list[SimOp] = []
        self._ids = 0
        self._saved: set[int] = set()
        self._cache: set[str] = set()   # autocast's per-forward cache of trainable weights' 16-bit copies
        self._held: list[SimTensor] = []       # tensors a Python variable keeps alive for a while (see hold())
        self._kept: list = []           # (op index, tensor) of KV-cache copies
        self.ac = s.autocast
        self.cuda = s.device == "cuda"

    # tensors and bookkeeping
    def new(self, numel: int, dtype: str, needs_grad: bool, const: bool = False) -> SimTensor:
        self._ids += 1
        return SimTensor(int(numel), dtype, needs_grad, const, self._ids)

    def op(self, label: str, saved=(), out: SimTensor | None = None, inp: SimTensor | None = None, fwd_extra=(0, 0),
           bwd_extra=(0, 0), wgrad: int = 0) -> None:
        first = []
        for t in saved:
            t = t.base if (t is not None and t.base is not None) else t
            if t is not None and t.id not in self._saved:
                self._saved.add(t.id)
                first.append(t)
        o = nbytes(out) if out is not None else (0, 0)
        i = nbytes(inp) if inp is not None else (0, 0)
        gi = i if (inp is not None and inp.needs_grad) else (0, 0)
        on_path = out is not None and out.needs_grad
        bwd = (o[0] + gi[0] + bwd_extra[0], o[1] + gi[1] + bwd_extra[1]) if on_path else (0, 0)
        # forward: the input (unless it is kept anyway), the output and any temporaries are alive at once
        held = (0, 0) if inp is None or inp.id in self._saved else i
        for t in self._held:
            if t.id not in self._saved and t is not inp and t is not out:
                held = (held[0] + nbytes(t)[0], held[1] + nbytes(t)[1])
        fwd = (o[0] + held[0] + fwd_extra[0], o[1] + held[1] + fwd_extra[1])
        self.ops.append(SimOp(saved=first, fwd=fwd, bwd=bwd, wgrad=wgrad, label=label))

    def view(self, base: SimTensor, n: int) -> SimTensor:
        t = self.new(n, base.dtype, base.needs_grad)
        t.base = base
        return t

    def cache(self, t: SimTensor) -> SimTensor:
        """transformers builds a KV cache even in training (use_cache defaults to True; gradient checkpointing
        turns it off): DynamicCache.update concatenates a copy of k / v that lives until the forward returns."""
        if self.s.checkpointing:
            return t
        copy = self.new(t.numel, t.dtype, t.needs_grad)
        self.op("kv_cache", (), copy, None)
        self._kept.append((len(self.ops) - 1, copy))
        return copy

    def finish(self) -> None:
        """Cache copies that no op saved are extra memory until the forward returns."""
        for index, t in self._kept:
            if t.id not in self._saved:
                op = self.ops[index]
                b = nbytes(t)
                op.keep = (op.keep[0] + b[0], op.keep[1] + b[1])

    def hold(self, t: SimTensor) -> None:
        """arch tensor still referenced by a Python variable (e.g. BERT's intermediate output until its layer
        returns) stays alive in the forward even when autograd does not keep it."""
        self._held.append(t)

    def release(self, t: SimTensor) -> None:
        self._held = [x for x in self._held if x is not t]

    def cast(self, t: SimTensor, dt: str) -> SimTensor:
        return t if t.dtype == dt else self.new(t.numel, dt, t.needs_grad, t.const)

    def lower(self, t: SimTensor) -> SimTensor:
        """Autocast's input cast for matmul-like ops (a new tensor when the dtype changes)."""
        return self.cast(t, self.ac) if self.ac else t

    # layers
    def linear(self, x: SimTensor, d_in: int, d_out: int, plan: LinearPlan, key: str,
               label: str = "linear") -> SimTensor:
        tokens = x.numel // d_in
        w_numel = d_in * d_out
        out_rg = x.needs_grad or plan.trainable or plan.bias_trainable or plan.lora
        if plan.quant:  # bitsandbytes Linear4bit: dequantize, matmul, keep only the packed weight for backward
            cd = self.s.compute_dtype  # bnb casts the input to its compute dtype and the output back
            xc = self.cast(x, cd)
            saved = [xc] if (self.s.bnb_saves_input and x.needs_grad) else []
            tmp = (nbytes(xc)[0] if xc is not x and not saved else 0, w_numel * DTYPE_BYTES[cd])
            out = self.new(tokens * d_out, x.dtype, out_rg)
            self.op(label, saved, out, x, fwd_extra=tmp,
                    bwd_extra=(0, w_numel * DTYPE_BYTES[cd]) if x.needs_grad else (0, 0))
        else:
            xin = self.lower(x)
            saved = [xin] if plan.trainable else []
            if x.needs_grad and self.ac and plan.dtype != self.ac:  # the 16-bit weight copy is kept for grad_input
                if not (plan.trainable and key in self._cache):
                    saved.append(self.new(w_numel, self.ac, False, const=True))
                if plan.trainable:
                    self._cache.add(key)
            out = self.new(tokens * d_out, self.ac or x.dtype, out_rg)
            wgrad = w_numel * DTYPE_BYTES[plan.dtype] if plan.trainable else 0
            self.op(label, saved, out, x, wgrad=wgrad)
        if plan.lora:
            out = self.lora(x, d_in, d_out, out, plan)
        return out

    def lora(self, x: SimTensor, d_in: int, d_out: int, base_out: SimTensor, plan: LinearPlan) -> SimTensor:
        s, tokens = self.s, x.numel // d_in
        if not (plan.quant and self.ac):  # PEFT casts the input to the adapter dtype (4-bit layers skip it
            x = self.cast(x, "f32")         # under autocast)
        xd = self.dropout(x, s.lora.dropout)
        a_plan = LinearPlan(trainable=True, dtype="f32")
        a = self.linear(xd, d_in, s.lora.r, a_plan, key=f"arch{self._ids}", label="lora_A")
        self.linear(a, s.lora.r, d_out, a_plan, key=f"B{self._ids}", label="lora_B")
        out = self.new(tokens * d_out, base_out.dtype, True)  # base + B(arch(x)) * scaling
        self.op("lora_add", (), out, None)
        return out

    def dropout(self, x: SimTensor, p: float) -> SimTensor:
        if p <= 0:
            return x
        mask = self.new(x.numel, "bool" if self.cuda else x.dtype, False)  # CPU dropout multiplies by a float noise
        out = self.new(x.numel, x.dtype, x.needs_grad)
        self.op("dropout", [mask] if x.needs_grad else [], out, x,
                fwd_extra=nbytes(mask) if not x.needs_grad else (0, 0))
        return out

    def layer_norm(self, x: SimTensor, width: int, trainable: bool) -> SimTensor:
        xin = self.cast(x, "f32") if self.ac else x
        rg = x.needs_grad or trainable
        saved = [xin, self.new(2 * (x.numel // width), "f32", False)] if rg else []  # input, mean and rstd
        out = self.new(x.numel, xin.dtype, rg)
        self.op("layer_norm", saved, out, x, wgrad=2 * width * DTYPE_BYTES[self.s.weights_dtype] if trainable else 0)
        return out

    def rms_norm(self, x: SimTensor, width: int, trainable: bool) -> SimTensor:
        """transformers' LlamaRMSNorm: upcast to fp32, x * rsqrt(mean(x²)+eps), back to the input dtype, * weight."""
        x32 = self.cast(x, "f32")
        saved = [x32, self.new(x.numel // width, "f32", False)] if x.needs_grad else []
        h = self.new(x.numel, "f32", x.needs_grad)
        self.op("rms_norm", saved, h, x)
        h = self.cast(h, x.dtype)
        dtype = self.params.unquantized_dtype
        out = self.new(x.numel, promote(dtype, h.dtype), x.needs_grad or trainable)
        self.op("rms_weight", [h] if trainable else [], out, h, wgrad=width * DTYPE_BYTES[dtype] if trainable else 0)
        return out

    def act(self, x: SimTensor, fn: str) -> SimTensor:
        fn = fn.lower()
        if fn in ("gelu_new", "gelu_fast", "gelu_python_tanh"):  # python tanh-GELU: x, tanh, 0.5x, 1+tanh saved
            hi = "f32" if (self.ac and self.cuda) else x.dtype    # CUDA autocast runs pow (and what follows) in fp32
            th = self.new(x.numel, hi, x.needs_grad)
            half = self.new(x.numel, x.dtype, x.needs_grad)
            one_th = self.new(x.numel, hi, x.needs_grad)
            out = self.new(x.numel, promote(hi, x.dtype), x.needs_grad)
            self.op(fn, [x, th, half, one_th] if x.needs_grad else [], out, x,
                    fwd_extra=(3 * x.numel * DTYPE_BYTES[hi], 0))
            return out
        out = self.new(x.numel, x.dtype, x.needs_grad)
        keep = out if fn in ("relu", "tanh", "sigmoid") else x  # these keep their output, gelu/silu their input
        self.op(fn, [keep] if x.needs_grad else [], out, x)
        return out

    def add(self, a: SimTensor, b: SimTensor) -> SimTensor:
        out = self.new(max(a.numel, b.numel), promote(a.dtype, b.dtype), a.needs_grad or b.needs_grad)
        self.op("add", (), out, None)
        return out

    def mul(self, a: SimTensor, b: SimTensor) -> SimTensor:
        out = self.new(a.numel, promote(a.dtype, b.dtype), a.needs_grad or b.needs_grad)
        self.op("mul", ([a] if b.needs_grad else []) + ([b] if a.needs_grad else []), out, None,
                bwd_extra=(nbytes(a)[0] + nbytes(b)[0], 0))
        return out

    def attention(self, q: SimTensor, k: SimTensor, v: SimTensor, heads: int, kv_heads: int, p: float,
                  family: str) -> SimTensor:
        """Self-attention core. q: b·s·(heads·d); k, v: b·s·(kv_heads·d). Returns b·s·(heads·d)."""
        s, seq = self.s, self.seq
        rg = q.needs_grad or k.needs_grad or v.needs_grad
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
            out = self.new(q.numel, qs.dtype, rg)
            lse = self.new(heads * seq, "f32", False)
            inputs = 0 if rg else (q.numel + k.numel + v.numel) * DTYPE_BYTES[qs.dtype]
            self.op("sdpa", [qs, ks, vs, out, lse] if rg else [], out, None, fwd_extra=(inputs, 0),
                    bwd_extra=(2 * (q.numel + k.numel) * DTYPE_BYTES[qs.dtype], 0))
            return out
        if kernel == "math":  # at::_scaled_dot_product_attention_math; CPU upcasts 16-bit inputs to fp32
            dt = "f32" if not self.cuda else (self.ac or q.dtype)
            rep = heads // kv_heads
            qs = self.new(q.numel, dt, rg)
            ks = self.new(k.numel * rep, dt, rg)
            vs = self.new(v.numel * rep, dt, rg)
            attn = self.new(probs, dt, rg)
            noise = self.new(probs, "bool" if self.cuda else dt, False) if p > 0 else None
            dropped = self.new(probs, dt, rg) if p > 0 else attn
            out = self.new(q.numel, dt, rg)
            saved = self._attention_saves(q, k, v, qs, ks, vs, attn, attn, noise, dropped)
            inputs = (q.numel + k.numel + v.numel) * DTYPE_BYTES[q.dtype]
            # forward: the inputs, then the scores (until softmax); unsaved, the scaled q/k and the
            # probabilities, noise and dropped probabilities are temporaries too
            # (the output only appears once the scores are gone)
            tmp = probs * DTYPE_BYTES[dt] if rg else \
                k.numel * DTYPE_BYTES[dt] + (3 if p > 0 else 1) * probs * DTYPE_BYTES[dt]
            self.op("sdpa_math", saved, out, None, fwd_extra=(inputs + tmp, 0),
                    bwd_extra=(3 * probs * DTYPE_BYTES[dt], 0))
            ctx = self.new(q.numel, q.dtype if not self.ac else self.ac, rg)  # back to the input dtype, heads merged
            self.op("merge_heads", (), ctx, None)
            return ctx
        # eager: matmul(q, kᵀ) -> (scale, mask) -> softmax -> dropout -> matmul(·, v) -> merge heads
        qs, ks, vs = self.lower(q), self.lower(k), self.lower(v)
        rep = heads // kv_heads
        if rep > 1:  # repeat_kv copies k and v to every query head
            ks = self.new(ks.numel * rep, ks.dtype, ks.needs_grad)
            vs = self.new(vs.numel * rep, vs.dtype, vs.needs_grad)
        sdt = "f32" if (family == "llama" or (self.ac and self.cuda)) else qs.dtype  # llama: softmax in fp32
        soft = self.new(probs, sdt, rg)
        attn = self.cast(soft, qs.dtype) if family == "llama" else soft
        noise, dropped = None, attn
        if p > 0:
            noise = self.new(probs, "bool" if self.cuda else attn.dtype, False)
            dropped = self.new(probs, attn.dtype, rg)
        mm_in = self.lower(dropped)
        saved = self._attention_saves(q, k, v, qs, ks, vs, soft, attn, noise, mm_in)
        out = self.new(q.numel, mm_in.dtype, rg)
        inputs = (q.numel + k.numel + v.numel) * DTYPE_BYTES[q.dtype]
        tmp = probs * DTYPE_BYTES[sdt] if rg else (3 if p > 0 else 2) * probs * DTYPE_BYTES[sdt]
        self.op("eager_attention", saved, out, None, fwd_extra=(inputs + tmp, 0),
                bwd_extra=(3 * probs * DTYPE_BYTES[sdt], 0))
        ctx = self.new(q.numel, out.dtype, rg)  # transpose(1, 2).contiguous()
        self.op("merge_heads", (), ctx, None)
        return ctx

    @staticmethod
    def _attention_saves(q, k, v, qs, ks, vs, soft, attn, noise, mm_in) -> list:
        """What matmul(q, kᵀ) -> softmax -> dropout -> matmul(·, v) keeps: each operand only for the other's
        gradient (in a LoRA model's first layer a frozen k needs no gradient, so q is not kept)."""
        qk = q.needs_grad or k.needs_grad
        saved = ([qs] if k.needs_grad else []) + ([ks] if q.needs_grad else [])
        if qk:
            saved += [soft] + ([noise] if noise is not None else []) + [vs]
        if v.needs_grad:
            saved.append(mm_in)
        return saved


# Where each family keeps its layers' linears (names inside one transformer layer).
ROLES = {
    "bert": {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "o": "attention.output.dense", "up": "intermediate.dense", "down": "output.dense"},
    "distilbert": {"q": "attention.q_lin", "k": "attention.k_lin", "v": "attention.v_lin", "o": "attention.out_lin",
                   "up": "ffn.lin1", "down": "ffn.lin2"},
    "gpt2": {"qkv": "attn.c_attn", "o": "attn.c_proj", "up": "mlp.c_fc", "down": "mlp.c_proj"},
    "llama": {"q": "self_attn.q_proj", "k": "self_attn.k_proj", "v": "self_attn.v_proj", "o": "self_attn.o_proj",
              "gate": "mlp.gate_proj", "up": "mlp.up_proj", "down": "mlp.down_proj"},
}
ROLE_LEAVES = {"q": ("q_proj", "query", "q_lin", "wq", "q"), "k": ("k_proj", "key", "k_lin", "wk", "k"),
                "v": ("v_proj", "value", "v_lin", "wv", "v"), "o": ("o_proj", "out_proj", "out_lin", "dense", "wo"),
                "qkv": ("c_attn", "qkv_proj", "query_key_value", "Wqkv"), "gate": ("gate_proj", "w1"),
                "up": ("up_proj", "c_fc", "fc1", "lin1", "w3", "dense_h_to_4h"),
                "down": ("down_proj", "fc2", "lin2", "w2", "dense_4h_to_h")}


class LayerLinears:
    """The linears of transformer layer i: role -> (d_in, d_out, plan, key)."""

    def __init__(self, arch: Architecture, params: ParamPlan, index: int):
        self.arch, self.params, self.index = arch, params, index
        self.by_rel = {x.rel: x for x in arch.linears if x.layer == index and x.rel}

    def get(self, role: str, d_in: int, d_out: int):
        rel = ROLES.get(self.arch.family, {}).get(role)
        lin = self.by_rel.get(rel) if rel else None
        if lin is None:  # an architecture outside the presets: find the layer by its usual leaf names
            for cand in self.by_rel.values():
                if cand.leaf in ROLE_LEAVES.get(role, ()) and (cand.d_in, cand.d_out) == (d_in, d_out):
                    lin = cand
                    break
        if lin is None:
            plan = LinearPlan(trainable=self.params.norm_trainable, bias_trainable=self.params.norm_trainable,
                            dtype=self.params.unquantized_dtype)
            return d_in, d_out, plan, f"{self.index}.{role}"
        return lin.d_in, lin.d_out, self.params.linears[lin.name], lin.name


def layer_llama(sim: ForwardSim, lay: LayerLinears, x: SimTensor, rope_dt: str) -> SimTensor:
    arch = sim.arch
    trainable_norm = sim.params.norm_trainable
    h = sim.rms_norm(x, arch.hidden, trainable_norm)
    sim.hold(h)  # the attention block's `hidden_states` argument lives until the block returns
    q = sim.linear(h, *lay.get("q", arch.hidden, arch.heads * arch.head_dim))
    k = sim.linear(h, *lay.get("k", arch.hidden, arch.kv_heads * arch.head_dim))
    v = sim.linear(h, *lay.get("v", arch.hidden, arch.kv_heads * arch.head_dim))
    # rotary embeddings: q*cos + rotate_half(q)*sin keeps only cos/sin (shared); the result takes cos' dtype
    q = sim.new(q.numel, promote(q.dtype, rope_dt), q.needs_grad)
    k = sim.new(k.numel, promote(k.dtype, rope_dt), k.needs_grad)
    sim.op("rope", (), None, None, fwd_extra=(nbytes(q)[0] + nbytes(k)[0], 0))
    k, v = sim.cache(k), sim.cache(v)
    o = sim.attention(q, k, v, arch.heads, arch.kv_heads, arch.p_attn, "llama")
    o = sim.linear(o, *lay.get("o", arch.heads * arch.head_dim, arch.hidden))
    sim.release(h)
    x = sim.add(x, o)
    h = sim.rms_norm(x, arch.hidden, trainable_norm)
    sim.hold(h)  # ... and the MLP's input: down_proj(act(gate_proj(x)) * up_proj(x)) uses x twice
    g = sim.linear(h, *lay.get("gate", arch.hidden, arch.mlp))
    u = sim.linear(h, *lay.get("up", arch.hidden, arch.mlp))
    g = sim.act(g, arch.act)
    m = sim.mul(g, u)
    d = sim.linear(m, *lay.get("down", arch.mlp, arch.hidden))
    sim.release(h)
    return sim.add(x, d)


def layer_gpt2(sim: ForwardSim, lay: LayerLinears, x: SimTensor) -> SimTensor:
    arch = sim.arch
    h = sim.layer_norm(x, arch.hidden, sim.params.norm_trainable)
    sim.hold(h)  # GPT2Block's `hidden_states` keeps the normed input until the attention returns
    qkv = sim.linear(h, *lay.get("qkv", arch.hidden, 3 * arch.hidden))
    third = qkv.numel // 3
    q, k, v = (sim.view(qkv, third) for _ in range(3))  # split: views of one qkv tensor
    k, v = sim.cache(k), sim.cache(v)
    o = sim.attention(q, k, v, arch.heads, arch.heads, arch.p_attn, "gpt2")
    o = sim.linear(o, *lay.get("o", arch.hidden, arch.hidden))
    o = sim.dropout(o, arch.p_hidden)
    sim.release(h)
    x = sim.add(x, o)
    h = sim.layer_norm(x, arch.hidden, sim.params.norm_trainable)
    sim.hold(h)  # ... and likewise around the MLP
    u = sim.linear(h, *lay.get("up", arch.hidden, arch.mlp))
    u = sim.act(u, arch.act)
    d = sim.linear(u, *lay.get("down", arch.mlp, arch.hidden))
    d = sim.dropout(d, arch.p_hidden)
    sim.release(h)
    return sim.add(x, d)


def layer_bert(sim: ForwardSim, lay: LayerLinears, x: SimTensor, distil: bool) -> SimTensor:
    arch = sim.arch
    layer_input = x  # the encoder loop's variable keeps it until the layer returns (held once x moves on)
    q = sim.linear(x, *lay.get("q", arch.hidden, arch.hidden))
    k = sim.linear(x, *lay.get("k", arch.hidden, arch.hidden))
    v = sim.linear(x, *lay.get("v", arch.hidden, arch.hidden))
    ctx = sim.attention(q, k, v, arch.heads, arch.heads, arch.p_attn, "bert")
    sim.hold(ctx)  # BertAttention keeps the attention output in a variable until its output block returns
    o = sim.linear(ctx, *lay.get("o", arch.hidden, arch.hidden))
    if not distil:  # DistilBERT has no dropout after the attention output
        o = sim.dropout(o, arch.p_hidden)
    x = sim.layer_norm(sim.add(o, x), arch.hidden, sim.params.norm_trainable)
    sim.release(ctx)
    sim.hold(layer_input)
    u = sim.linear(x, *lay.get("up", arch.hidden, arch.mlp))
    u = sim.act(u, arch.act)
    sim.hold(u)  # ... and the intermediate activation until the layer returns
    d = sim.linear(u, *lay.get("down", arch.mlp, arch.hidden))
    d = sim.dropout(d, arch.p_hidden)
    sim.hold(d)
    out = sim.layer_norm(sim.add(d, x), arch.hidden, sim.params.norm_trainable)
    for t in (u, d, layer_input):
        sim.release(t)
    return out


def layer(sim: ForwardSim, index: int, x: SimTensor, rope_dt: str) -> SimTensor:
    lay = LayerLinears(sim.arch, sim.params, index)
    family = sim.arch.family
    if family == "llama":
        return layer_llama(sim, lay, x, rope_dt)
    if family == "gpt2":
        return layer_gpt2(sim, lay, x)
    return layer_bert(sim, lay, x, distil=family == "distilbert")


def embeddings(sim: ForwardSim) -> SimTensor:
    """Token (+ position, + token type) embeddings -> (LayerNorm) -> dropout. The output needs a gradient when the
    embeddings train, or with gradient checkpointing (transformers then calls enable_input_require_grads)."""
    arch, params, s = sim.arch, sim.params, sim.s
    trainable = params.emb_trainable
    dt = params.unquantized_dtype
    ids = sim.new(sim.seq, "i64", False)
    x = sim.new(sim.seq * arch.hidden, dt, trainable or s.checkpointing)
    emb = sum(num * dim for _, num, dim in arch.embeddings) * DTYPE_BYTES[dt] if trainable else 0
    tied = arch.vocab * arch.hidden * DTYPE_BYTES[dt] if (trainable and arch.tied) else 0
    # Untied embeddings allocate their gradient here. A tied one already has it (from lm_head): its dense
    # gradient and the out-of-place sum with the existing one are two temporaries of its size (measured on CPU).
    sim.op("embedding", [ids] if trainable else [], x, None, bwd_extra=(0, 2 * tied), wgrad=emb - tied)
    if arch.family in ("bert", "distilbert"):
        if arch.family == "bert" and arch.type_vocab and trainable:
            sim.op("token_type_ids", [sim.new(sim.seq, "i64", False)], None, None)
        x = sim.layer_norm(x, arch.hidden, trainable)
        return sim.dropout(x, arch.p_hidden)
    if arch.family == "gpt2":
        return sim.dropout(x, arch.p_emb)
    return x


def head(sim: ForwardSim, x: SimTensor) -> None:
    """Final norm, the task head and the loss."""
    arch, params = sim.arch, sim.params
    heads = [lin for lin in arch.linears if lin.head]
    if arch.task == "causal-lm":
        if arch.family == "llama":
            x = sim.rms_norm(x, arch.hidden, params.norm_trainable)
        else:
            x = sim.layer_norm(x, arch.hidden, params.norm_trainable)
        lm = next((lin for lin in heads if lin.d_out == arch.vocab), None)
        plan = params.linears[lm.name] if lm else \
            LinearPlan(trainable=params.norm_trainable, dtype=params.unquantized_dtype)
        if arch.tied and lm is not None and params.emb_trainable:
            plan = LinearPlan(trainable=True, dtype=plan.dtype)
        logits = sim.linear(x, arch.hidden, arch.vocab, plan, key="lm_head", label="lm_head")
        causal_loss(sim, logits, arch.vocab)
        return
    if arch.family in ("gpt2", "llama"):  # decoder classifier: score on every token, pick the last one
        x = sim.rms_norm(x, arch.hidden, params.norm_trainable) if arch.family != "gpt2" else \
            sim.layer_norm(x, arch.hidden, params.norm_trainable)
        for lin in heads:
            x = sim.linear(x, lin.d_in, lin.d_out, params.linears[lin.name], key=lin.name, label="score")
        return
    # encoder classifier: the first token through pooler / classifier linears
    cls = sim.new(arch.hidden, x.dtype, x.needs_grad)
    sim.op("select_cls", (), cls, None)
    pooler = [lin for lin in arch.linears if not lin.head and lin.layer is None and "pool" in lin.name]
    for lin in pooler + heads:
        cls = sim.linear(cls, lin.d_in, lin.d_out, params.linears[lin.name], key=lin.name, label="classifier")
        if lin is not heads[-1]:
            cls = sim.act(cls, "tanh" if arch.family == "bert" else "relu")
            cls = sim.dropout(cls, arch.p_hidden)


def causal_loss(sim: ForwardSim, logits: SimTensor, V: int) -> None:
    """transformers' ForCausalLMLoss: logits.float(), log_softmax (kept for backward), nll. In backward the
    log-probs' gradient and the logits' gradient exist at the same time."""
    seq = sim.seq
    l32 = sim.cast(logits, "f32")
    if l32 is not logits:  # in backward: the fp32 gradient and its 16-bit copy
        sim.op("to_fp32", (), sim.new(1, "f32", logits.needs_grad), None,
               bwd_extra=(seq * V * 4 + nbytes(logits)[0], 0))
    logp = sim.new(seq * V, "f32", logits.needs_grad)
    targets = sim.new(seq, "i64", False)
    extra = (nbytes(logits)[0] + (nbytes(l32)[0] if l32 is not logits else 0), 0)  # logits live till forward ends
    sim.op("log_softmax", [logp, targets] if logits.needs_grad else [], sim.new(1, "f32", logits.needs_grad), None,
           fwd_extra=extra, bwd_extra=(2 * seq * V * 4, 0))


