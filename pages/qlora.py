"""QLoRA loader: load a model in 4-bit, see what quantization saved and which layers it changed, attach LoRA,
check the 4-bit model's quality against full precision, and generate with the base and a trained adapter.

Nothing loads until a button is pressed; models load in this process (inference only, no training) and
the loaded 4-bit model is kept in this browser session only.
"""
import pandas as pd
import streamlit as st

from lora_core.config import BUNDLED_MODELS, LORA_METHODS, field_help
from lora_ui.common import RunStatus, error_text, fmt_bytes, fmt_count, runs

S = st.session_state
OTHER = "Hub id or local directory…"

st.title("QLoRA loader")
st.markdown("QLoRA stores the frozen base in **4 bits** (NF4: a normal-float code book fitted to weights "
            "that are roughly Gaussian) with one scale per block of 64 weights — and, with *double "
            "quantization*, quantizes those scales too. LoRA adapters (B·A, in higher precision) train on top; "
            "the 4-bit weights are de-quantized block by block inside each matmul, in the compute dtype.")

c = st.columns([1, 2])
default = BUNDLED_MODELS.index("tiny-random-llama")
choice = c[0].selectbox("Model", list(BUNDLED_MODELS) + [OTHER], index=default, key="qlora_model",
                        help=field_help("model.source"))
custom = c[1].text_input("Hub id or local directory", key="qlora_custom") if choice == OTHER else ""
source = custom.strip() if choice == OTHER else choice
c = st.columns(4)
quant_type = c[0].selectbox("4-bit type", ["nf4", "fp4"], key="qlora_qtype", help=field_help("quant.quant_type"))
compute = c[1].selectbox("Compute dtype", ["bfloat16", "float16", "float32"], key="qlora_compute",
                         help=field_help("quant.compute_dtype"))
double = c[2].toggle("Double quantization", value=True, key="qlora_double", help=field_help("quant.double_quant"))
before = c[3].toggle("Measure fp32 first", value=True, key="qlora_before",
                     help="Also load the model in fp32 to show memory before quantization (loads it twice)")

if st.button("Load in 4-bit", icon=":material/compress:", type="primary", key="qlora_load", disabled=not source):
    try:
        from lora_core.qlora import load_quantized

        with st.spinner(f"Loading {source} in 4-bit…"):
            S["qlora_loaded"] = load_quantized(source, quant_type=quant_type, double_quant=double,
                                               compute_dtype=compute, measure_before=before)
        S.pop("qlora_lora_error", None)
    except Exception as exc:  # noqa: BLE001 - ModelError: bad id or path, names what exists
        S.pop("qlora_loaded", None)
        st.error(error_text(exc), icon="🚫")

loaded = S.get("qlora_loaded")
if loaded is not None:
    q = loaded.quant
    st.success(f"Loaded **{loaded.source}** ({loaded.task}) in 4-bit {q.quant_type.upper()}"
               f"{' + double quant' if q.double_quant else ''}, compute {q.compute_dtype}, "
               f"in {loaded.load_s:.1f} s.")
    m = st.columns(4)
    if loaded.before:
        m[0].metric("fp32 weights", fmt_bytes(loaded.before["exact_bytes"]))
    m[1].metric("4-bit weights + constants", fmt_bytes(loaded.after["exact_bytes"]),
                delta=f"-{loaded.saving * 100:.1f}%" if loaded.saving is not None else None, delta_color="inverse")
    m[2].metric("Quantization constants", fmt_bytes(loaded.after["quant_state_bytes"]),
                help="absmax per block, the code book and (double quant) their own constants")
    m[3].metric("transformers footprint", fmt_bytes(loaded.after["footprint_bytes"]),
                help="get_memory_footprint(): parameters and buffers, without the quantization constants")
    layers = pd.DataFrame(loaded.layers)
    counts = layers.groupby(["class", "dtype"]).agg(layers=("name", "count"), bytes=("bytes", "sum")).reset_index()
    c1, c2 = st.columns([1, 2])
    with c1:
        st.markdown("**Layer types after loading**")
        st.dataframe(counts, hide_index=True, width="stretch")
        st.caption("Linear4bit layers hold packed uint8 weights; embeddings, norms and the output head "
                   "stay in higher precision.")
    with c2:
        st.markdown("**Every layer**")
        st.dataframe(layers, hide_index=True, width="stretch", height=300)

    st.subheader("Attach LoRA")
    if loaded.lora is None:
        c = st.columns(4)
        r = c[0].number_input("Rank r", min_value=1, max_value=1024, value=8, key="qlora_r")
        alpha = c[1].number_input("Alpha", min_value=0.1, value=16.0, key="qlora_alpha")
        dropout = c[2].number_input("Dropout", min_value=0.0, max_value=0.9, value=0.05, key="qlora_dropout")
        preset = c[3].selectbox("Targets", ["preset:qv", "preset:attention", "preset:all-linear"],
                                index=2, key="qlora_targets")
        if st.button("Attach LoRA to the 4-bit model", key="qlora_attach"):
            try:
                from lora_core.qlora import attach_lora

                with st.spinner("prepare_model_for_kbit_training + get_peft_model…"):
                    attach_lora(loaded, {"r": int(r), "alpha": float(alpha), "dropout": float(dropout),
                                         "target_modules": preset})
                st.rerun()
            except Exception as exc:  # noqa: BLE001
                st.error(error_text(exc), icon="🚫")
    else:
        lora = loaded.lora
        m = st.columns(4)
        m[0].metric("Trainable params", fmt_count(lora["trainable"]), help=f"{lora['trainable']:,}")
        m[1].metric("% of the model", f"{lora['percent']:.3f}%")
        m[2].metric("4-bit layers with adapters", lora["adapted_4bit_layers"])
        m[3].metric("Adapter size", fmt_bytes(lora.get("adapter_bytes")))
        st.caption("Targets: " + ", ".join(lora.get("targets") or []) + ". Load again to try other settings.")

st.divider()
st.subheader("Quality check: 4-bit vs full precision")
st.caption("Perplexity of the same causal LM on the same texts, loaded in fp32 and in 4-bit with the settings "
           "above. A ratio near 1.0 means quantization costs little quality. (Tiny random models have huge "
           "perplexities; the ratio is what matters.)")
texts = st.text_area("Sample texts (one a line)", key="qlora_texts",
                     value="The movie was a quiet, moving story about two brothers.\n"
                           "Low-rank adapters train a small number of parameters.\n"
                           "The weather today is cold and rainy, so stay inside.")
if st.button("Compare perplexity", key="qlora_ppl", disabled=not source):
    try:
        from lora_core.qlora import compare_perplexity

        with st.spinner("Loading fp32 and 4-bit, scoring the texts…"):
            S["qlora_ppl_result"] = compare_perplexity(
                source, [t for t in texts.splitlines() if t.strip()], quant_type=quant_type,
                double_quant=double, compute_dtype=compute)
    except Exception as exc:  # noqa: BLE001 - e.g. an encoder model (no perplexity)
        S.pop("qlora_ppl_result", None)
        st.error(error_text(exc), icon="🚫")
result = S.get("qlora_ppl_result")
if result:
    m = st.columns(3)
    m[0].metric("fp32 perplexity", f"{result['fp32']['perplexity']:.4g}")
    m[1].metric("4-bit perplexity", f"{result['4bit']['perplexity']:.4g}")
    m[2].metric("ratio 4-bit / fp32", f"{result['ratio']:.4f}")
    st.caption(f"{result['texts']} texts, {result['fp32']['tokens']} predicted tokens.")

st.divider()
st.subheader("Generate: base vs trained adapter")
try:
    gen_runs = [r for r in runs().list(status=RunStatus.SUCCEEDED)
                if r.task == "causal-lm" and r.method in LORA_METHODS]
except Exception as exc:  # noqa: BLE001
    gen_runs = []
    st.error(error_text(exc))
if not gen_runs:
    st.caption("Train a causal-lm LoRA or QLoRA run (e.g. tiny-random-llama on sample:instructions) to "
               "compare its generations with the base model's here.")
else:
    by_id = {r.id: r for r in gen_runs}
    run_id = st.selectbox("Run", list(by_id), key="qlora_gen_run",
                          format_func=lambda i: f"{by_id[i].name} · {by_id[i].method} r={by_id[i].lora_r} · {i}")
    prompts = st.text_area("Prompts (one a line)", value="Write a short greeting:\nThe movie was",
                           key="qlora_prompts")
    tokens = st.number_input("New tokens", min_value=1, max_value=256, value=24, key="qlora_tokens")
    if st.button("Generate side by side", key="qlora_generate"):
        try:
            from lora_core import inference

            with st.spinner("Loading the base and the adapter, generating greedily…"):
                models = inference.load_run(runs().config(run_id), runs().dir(run_id).artifacts)
                S["qlora_gen_result"] = models.generate([p for p in prompts.splitlines() if p.strip()],
                                                        max_new_tokens=int(tokens))
        except Exception as exc:  # noqa: BLE001
            S.pop("qlora_gen_result", None)
            st.error(error_text(exc), icon="🚫")
    out = S.get("qlora_gen_result")
    if out:
        st.dataframe(pd.DataFrame(out), hide_index=True, width="stretch",
                     column_config={"base": "base model", "tuned": "with the adapter"})
