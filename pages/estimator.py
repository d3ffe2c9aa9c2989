"""Estimator: training memory term by term, what fits on which GPU, LoRA's parameter math, and how the
estimate compared with the measured peak of every finished run."""
import json

import pandas as pd
import streamlit as st

from lora_ui import charts, engine
from lora_ui import compare as cmp
from lora_ui.common import error_text, fmt_bytes, fmt_count, runs_dir

S = st.session_state
OTHER = "Other: config.json, model dir, hub id or a parameter count…"
METHODS = {"full": "full fine-tuning, fp32", "full-bf16": "full, bf16 mixed precision",
           "full-fp16": "full, fp16 mixed precision", "lora": "LoRA", "qlora": "QLoRA (4-bit base)",
           "head-only": "head only (frozen backbone)"}

st.title("Memory estimator")
st.caption("Before you rent a GPU: every term of training memory, from the model's real architecture "
           "(built on the meta device), beside the tutorial's rule of thumb.")

try:
    presets = engine.model_presets()
except Exception as exc:  # noqa: BLE001 - the estimator module may be missing in a broken install
    st.error(f"The estimator is unavailable: {error_text(exc)}")
    st.stop()

c1, c2 = st.columns([1, 2])
with c1:
    default_model = "llama-2-7b" if "llama-2-7b" in presets else (presets[0] if presets else OTHER)
    choice = st.selectbox("Model", presets + [OTHER], index=(presets + [OTHER]).index(default_model),
                          key="est_model")
with c2:
    custom = ""
    if choice == OTHER:
        custom = st.text_input("Model", key="est_custom", placeholder="e.g. 7e9, ./my-model, gpt2-large")
model = custom.strip() if choice == OTHER else choice
model_error = st.empty()

c = st.columns(4)
method = c[0].selectbox("Method", list(METHODS), index=list(METHODS).index("qlora"), format_func=METHODS.get,
                        key="est_method")
batch = c[1].number_input("Batch size", min_value=1, max_value=4096, value=1, step=1, key="est_batch")
seq = c[2].number_input("Sequence length", min_value=1, max_value=131072, value=512, step=64, key="est_seq")
optimizer = c[3].selectbox("Optimizer", ["adamw", "adamw_8bit", "sgd"], key="est_opt",
                           help="AdamW keeps two fp32 states per trainable param; 8-bit AdamW two bytes; SGD none")
c = st.columns(4)
ckpt = c[0].toggle("Gradient checkpointing", key="est_ckpt")
attention = c[1].selectbox("Attention", ["sdpa", "eager"], key="est_attn",
                           help="eager materializes the b·h·s² attention scores; SDPA/flash does not")
device = c[2].selectbox("Device", ["cuda", "cpu"], key="est_device")
knobs = {"train.optimizer": optimizer, "train.gradient_checkpointing": ckpt, "attention": attention,
         "device": device}
if method in ("lora", "qlora"):
    rank = c[3].number_input("LoRA rank", min_value=1, max_value=1024, value=8, step=1, key="est_rank")
    c = st.columns(4)
    targets = c[0].selectbox("Targets", ["qv", "attention", "all-linear"], key="est_targets",
                             help="Which layers get adapters (architecture presets)")
    knobs.update({"lora.r": int(rank), "lora.target_modules": "all-linear" if targets == "all-linear"
                  else f"preset:{targets}"})
    if method == "qlora":
        knobs["quant.quant_type"] = c[1].selectbox("4-bit type", ["nf4", "fp4"], key="est_qtype")
        knobs["quant.double_quant"] = c[2].toggle("Double quantization", value=True, key="est_dq")

est = None
if model:
    try:
        est = engine.estimate(model, method, int(batch), int(seq), json.dumps(knobs, sort_keys=True))
    except Exception as exc:  # noqa: BLE001 - an unknown model or a bad knob names itself
        model_error.error(error_text(exc), icon="🚫")
else:
    model_error.info("Enter a model to estimate.")

if est:
    terms = est.get("terms") or {}
    peak, naive, accel = est.get("peak_bytes"), est.get("naive_bytes"), est.get("accelerate_bytes")
    params = est.get("params") or {}
    m = st.columns(4)
    m[0].metric("Estimated peak", fmt_bytes(peak))
    m[1].metric("Tutorial rule (weights × 6)", fmt_bytes(naive),
                delta=f"{(naive / peak - 1) * 100:+.0f}% vs ours" if naive and peak else None, delta_color="off")
    m[2].metric("accelerate-style", fmt_bytes(accel), help="weights only: no activations, no batch size")
    trainable, total = params.get("trainable"), params.get("total")
    m[3].metric("Trainable / total params", f"{fmt_count(trainable)} / {fmt_count(total)}")
    left, right = st.columns([3, 2])
    with left:
        st.plotly_chart(charts.memory_terms_figure(terms, naive, accel, peak), key="est_terms_chart",
                        width="stretch")
    with right:
        st.markdown("**Terms**")
        st.dataframe(pd.DataFrame([{"term": k.replace("_", " "), "GB": v / 1e9} for k, v in terms.items()]),
                     hide_index=True, width="stretch",
                     column_config={"GB": st.column_config.NumberColumn(format="%.3f")})
        if est.get("notes"):
            for note in est["notes"] if isinstance(est["notes"], list) else [est["notes"]]:
                st.caption(str(note))
    fits = est.get("fits") or []
    if fits:
        st.markdown("**Does it fit?** Largest batch size at this sequence length per GPU")
        st.dataframe(pd.DataFrame([{"GPU": f.get("gpu"), "memory (GB)": f.get("memory_gb"),
                                    f"fits at batch {batch}": "✅" if f.get("fits") else "❌",
                                    "largest batch": f.get("max_batch") or 0} for f in fits]),
                     hide_index=True, width="stretch")

st.divider()
st.subheader("LoRA parameters by rank")
st.markdown("A d_out × d_in layer has d_in·d_out weights; its LoRA update B·A has r·(d_in + d_out).")
c = st.columns(3)
d_in = c[0].number_input("d_in", min_value=1, value=4096, step=256, key="est_din")
d_out = c[1].number_input("d_out", min_value=1, value=4096, step=256, key="est_dout")
try:
    table = engine.lora_param_table(int(d_in), int(d_out), (1, 2, 4, 8, 16, 32, 64))
    st.dataframe(pd.DataFrame(table), hide_index=True, width="stretch")
except Exception as exc:  # noqa: BLE001
    st.error(error_text(exc))

st.divider()
st.subheader("Estimate vs measured, for finished runs")
try:
    from lora_core import storage

    done = [r for r in storage.list_runs(runs_dir=runs_dir(), status="SUCCEEDED")
            if (r.results or {}).get("peak_mem_bytes")]
    rows = []
    for rec, label in zip(done, cmp.labels_for(done)):
        est_b = cmp.estimate_bytes(rec.results)
        measured, tensors = rec.results["peak_mem_bytes"], rec.results.get("peak_tensor_bytes")
        rows.append({"label": f"{label} · {rec.name}"[:60], "model": rec.model, "estimate_gb": est_b / 1e9
                     if est_b else None, "tensor_gb": tensors / 1e9 if tensors else None,
                     "error vs tensors %": (est_b / tensors - 1) * 100 if est_b and tensors else None,
                     "measured_gb": measured / 1e9, "error %": (est_b / measured - 1) * 100 if est_b else None,
                     "how measured": rec.results.get("peak_mem_method", ""), "id": rec.id})
    if rows:
        st.plotly_chart(charts.estimate_vs_measured_figure(rows[:30]), key="est_vs_measured", width="stretch")
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
            "estimate_gb": st.column_config.NumberColumn("estimate (GB)", format="%.3f"),
            "tensor_gb": st.column_config.NumberColumn("tensor peak (GB)", format="%.3f"),
            "error vs tensors %": st.column_config.NumberColumn(format="%+.1f%%"),
            "measured_gb": st.column_config.NumberColumn("measured (GB)", format="%.3f"),
            "error %": st.column_config.NumberColumn(format="%+.1f%%")})
        st.caption("Tensor peak: live tensor bytes at the run's largest steps (weights, gradients, optimizer "
                   "states, activations), the figure the estimate models. Measured: on CPU the growth of the "
                   "process's peak RSS, which adds the allocator's cached pages, Python objects, tokenizer, "
                   "datasets and library code; on a GPU torch.cuda.max_memory_allocated.")
    else:
        st.caption("No finished runs yet: every run records its measured peak beside the estimate for its config.")
except Exception as exc:  # noqa: BLE001
    st.error(error_text(exc))
