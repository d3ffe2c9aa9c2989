"""Estimator: training memory term by term, what fits on which GPU, LoRA's parameter math, and how the
estimate compared with the measured peak of every finished run."""
import pandas as pd
import streamlit as st

from lora_ui import charts, service
from lora_ui import compare as cmp
from lora_ui.format import fmt_bytes, fmt_count
from lora_ui.service import RunStatus
from lora_ui.state import ESTIMATOR
from lora_ui.widgets import choice_or_other, show_error

S = ESTIMATOR
OTHER = "Other: config.json, model dir, hub id or a parameter count…"
METHODS = {"full": "full fine-tuning, fp32", "full-bf16": "full, bf16 mixed precision",
           "full-fp16": "full, fp16 mixed precision", "lora": "LoRA", "qlora": "QLoRA (4-bit base)",
           "head-only": "head only (frozen backbone)"}
RANKS = (1, 2, 4, 8, 16, 32, 64)


def settings(presets: list[str]) -> tuple[str, str, int, int, dict]:
    """The model, method, batch size, sequence length and knobs the user chose."""
    model = choice_or_other("Model", presets, OTHER, key=S.key("model"), custom_key=S.key("custom"),
                            custom_label="Model", placeholder="e.g. 7e9, ./my-model, gpt2-large",
                            index=presets.index("llama-2-7b") if "llama-2-7b" in presets else 0)
    c = st.columns(4)
    method = c[0].selectbox("Method", list(METHODS), index=list(METHODS).index("qlora"), format_func=METHODS.get,
                            key=S.key("method"))
    batch = c[1].number_input("Batch size", min_value=1, max_value=4096, value=1, step=1, key=S.key("batch"))
    seq = c[2].number_input("Sequence length", min_value=1, max_value=131072, value=512, step=64, key=S.key("seq"))
    optimizer = c[3].selectbox("Optimizer", ["adamw", "adamw_8bit", "sgd"], key=S.key("opt"),
                               help="AdamW keeps two fp32 states per trainable param; 8-bit AdamW two bytes; "
                                    "SGD none")
    c = st.columns(4)
    knobs = {"train.optimizer": optimizer,
             "train.gradient_checkpointing": c[0].toggle("Gradient checkpointing", key=S.key("ckpt")),
             "attention": c[1].selectbox("Attention", ["sdpa", "eager"], key=S.key("attn"),
                                         help="eager materializes the b·h·s² attention scores; SDPA/flash does not"),
             "device": c[2].selectbox("Device", ["cuda", "cpu"], key=S.key("device"))}
    if method in ("lora", "qlora"):
        knobs["lora.r"] = int(c[3].number_input("LoRA rank", min_value=1, max_value=1024, value=8, step=1,
                                                key=S.key("rank")))
        c = st.columns(4)
        targets = c[0].selectbox("Targets", ["qv", "attention", "all-linear"], key=S.key("targets"),
                                 help="Which layers get adapters (architecture presets)")
        knobs["lora.target_modules"] = "all-linear" if targets == "all-linear" else f"preset:{targets}"
        if method == "qlora":
            knobs["quant.quant_type"] = c[1].selectbox("4-bit type", ["nf4", "fp4"], key=S.key("qtype"))
            knobs["quant.double_quant"] = c[2].toggle("Double quantization", value=True, key=S.key("dq"))
    return model, method, int(batch), int(seq), knobs


def estimate_section(est: dict, batch: int) -> None:
    terms = est.get("terms") or {}
    peak, naive, accel = est.get("peak_bytes"), est.get("naive_bytes"), est.get("accelerate_bytes")
    params = est.get("params") or {}
    m = st.columns(4)
    m[0].metric("Estimated peak", fmt_bytes(peak))
    m[1].metric("Tutorial rule (weights × 6)", fmt_bytes(naive),
                delta=f"{(naive / peak - 1) * 100:+.0f}% vs ours" if naive and peak else None, delta_color="off")
    m[2].metric("accelerate-style", fmt_bytes(accel), help="weights only: no activations, no batch size")
    m[3].metric("Trainable / total params", f"{fmt_count(params.get('trainable'))} / {fmt_count(params.get('total'))}")
    left, right = st.columns([3, 2])
    left.plotly_chart(charts.memory_terms_figure(terms, naive, accel, peak), key=S.key("terms_chart"),
                      width="stretch")
    with right:
        st.markdown("**Terms**")
        st.dataframe(pd.DataFrame([{"term": k.replace("_", " "), "GB": v / 1e9} for k, v in terms.items()]),
                     hide_index=True, width="stretch",
                     column_config={"GB": st.column_config.NumberColumn(format="%.3f")})
        notes = est.get("notes") or []
        for note in notes if isinstance(notes, list) else [notes]:
            st.caption(str(note))
    fits = est.get("fits") or []
    if fits:
        st.markdown("**Does it fit?** Largest batch size at this sequence length per GPU")
        st.dataframe(pd.DataFrame([{"GPU": f.get("gpu"), "memory (GB)": f.get("memory_gb"),
                                    f"fits at batch {batch}": "✅" if f.get("fits") else "❌",
                                    "largest batch": f.get("max_batch") or 0} for f in fits]),
                     hide_index=True, width="stretch")


def rank_section() -> None:
    st.subheader("LoRA parameters by rank")
    st.markdown("A d_out × d_in layer has d_in·d_out weights; its LoRA update B·A has r·(d_in + d_out).")
    c = st.columns(3)
    d_in = c[0].number_input("d_in", min_value=1, value=4096, step=256, key=S.key("din"))
    d_out = c[1].number_input("d_out", min_value=1, value=4096, step=256, key=S.key("dout"))
    try:
        st.dataframe(pd.DataFrame(service.lora_param_table(int(d_in), int(d_out), RANKS)), hide_index=True,
                     width="stretch")
    except Exception as exc:  # noqa: BLE001 - EstimateError names the bad input
        show_error(exc)


def measured_section() -> None:
    st.subheader("Estimate vs measured, for finished runs")
    try:
        rows = cmp.estimate_rows(service.list_runs(RunStatus.SUCCEEDED))
    except Exception as exc:  # noqa: BLE001 - an unreadable runs dir is reported, not raised
        show_error(exc)
        return
    if not rows:
        st.caption("No finished runs yet: every run records its measured peak beside the estimate for its config.")
        return
    st.plotly_chart(charts.estimate_vs_measured_figure(rows[:30]), key=S.key("vs_measured"), width="stretch")
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch", column_config={
        "estimate_gb": st.column_config.NumberColumn("estimate (GB)", format="%.3f"),
        "tensor_gb": st.column_config.NumberColumn("tensor peak (GB)", format="%.3f"),
        "error vs tensors %": st.column_config.NumberColumn(format="%+.1f%%"),
        "measured_gb": st.column_config.NumberColumn("measured (GB)", format="%.3f"),
        "error %": st.column_config.NumberColumn(format="%+.1f%%")})
    st.caption("Tensor peak: live tensor bytes at the run's largest steps (weights, gradients, optimizer states, "
               "activations), the figure the estimate models. Measured: on CPU the growth of the process's peak "
               "RSS, which adds the allocator's cached pages, Python objects, tokenizer, datasets and library "
               "code; on a GPU torch.cuda.max_memory_allocated.")


def main() -> None:
    st.title("Memory estimator")
    st.caption("Before you rent a GPU: every term of training memory, from the model's real architecture "
               "(built on the meta device), beside the tutorial's rule of thumb.")
    model, method, batch, seq, knobs = settings(service.model_presets())
    if not model:
        st.info("Enter a model to estimate.")
    else:
        try:
            estimate_section(service.estimate(model, method, batch, seq, knobs), batch)
        except Exception as exc:  # noqa: BLE001 - an unknown model or a bad knob names itself
            show_error(exc)
    st.divider()
    rank_section()
    st.divider()
    measured_section()


main()
