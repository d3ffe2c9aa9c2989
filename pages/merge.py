"""Merge & export: fold a run's LoRA adapter into its base, verify the merged model is plain and equivalent,
and download the adapter or the merged model."""
import io
import zipfile
from pathlib import Path

import streamlit as st

from lora_core.config import LORA_METHODS
from lora_ui.common import RunStatus, dir_bytes, error_text, fmt_bytes, pick_run, runs

S = st.session_state

st.title("Merge & export")
st.markdown("Merging computes **W' = W + (α/r)·B·A** once and stores W' in place of W: the result is a plain "
            "model with no PEFT dependency and no extra latency. We then reload it with `AutoModel…"
            "from_pretrained`, check that no `lora_` parameter is left, and compare its outputs with the adapter "
            "model's.")


def zip_dir(path: Path) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(path.parent))
    return buf.getvalue()


rec = pick_run(RunStatus.SUCCEEDED, "merge_run", "No finished runs yet. Train one on the Train page first.")
artifacts = runs().dir(rec.id).artifacts
adapter = artifacts.adapter
merged = artifacts.merged  # like `python -m lora_core merge RUN` without --out

if rec.method not in LORA_METHODS:
    st.info(f"This is a **{rec.method}** run: it saved its weights directly (no adapter to merge). "
            "You can download them as they are.")
    saved = artifacts.weights(rec.method)
    if saved.is_dir():
        st.metric("Saved weights", fmt_bytes(dir_bytes(saved)))
        st.download_button(f"Download {saved.name}/ (zip)", lambda: zip_dir(saved),
                           file_name=f"{rec.id}-{saved.name}.zip", mime="application/zip", key="merge_dl_saved")
    st.stop()

if not adapter.is_dir():
    st.error(f"Run {rec.id} has no adapter folder at {adapter}.")
    st.stop()

c1, c2, c3 = st.columns(3)
c1.metric("Adapter on disk", fmt_bytes(dir_bytes(adapter)))
c2.metric("Merged model", fmt_bytes(dir_bytes(merged)) if merged.is_dir() else "not merged yet")
c3.metric("Trainable params", f"{(rec.results or {}).get('trainable_params') or 0:,}")
st.download_button("Download adapter (zip)", lambda: zip_dir(adapter), file_name=f"{rec.id}-adapter.zip",
                   mime="application/zip", key="merge_dl_adapter",
                   help="adapter_config.json + adapter_model.safetensors: load with PeftModel.from_pretrained")

if rec.method == "qlora":
    st.caption("QLoRA: 4-bit weights cannot absorb the update, so the base is reloaded in full precision and "
               "the adapter merged there; the report also shows the gap to the 4-bit model used in training.")

again = merged.is_dir() and any(merged.iterdir())
label = "🔁 Merge again (replaces the merged folder)" if again else "🧬 Merge and verify"
if st.button(label, type="primary", key="merge_go"):
    try:
        from lora_core.merge import merge_adapter

        with st.spinner("Merging, saving, reloading as a plain model, comparing outputs…"):
            # overwrite: the engine replaces the old merged folder only once the new model is saved
            S[f"merge_report_{rec.id}"] = merge_adapter(runs().config(rec.id), adapter, merged, overwrite=again)
    except Exception as exc:  # noqa: BLE001 - ModelError and friends: say what is wrong
        st.error(f"Merge failed: {error_text(exc)}")

report = S.get(f"merge_report_{rec.id}")
if report:
    ok = report.get("ok")
    (st.success if ok else st.error)(
        f"{'✅ Verified' if ok else '❌ Not equivalent'}: the merged model loads as a plain "
        f"`{report.get('merged_class')}` with {report.get('lora_params_left')} LoRA parameters left; "
        f"max |logit difference| = {report.get('max_abs_diff'):.2e} (tolerance {report.get('tolerance', 1e-4):g}).")
    c = st.columns(3)
    c[0].metric("Max abs diff", f"{report.get('max_abs_diff'):.2e}")
    c[1].metric("Merged weights", fmt_bytes(report.get("merged_bytes")))
    c[2].metric("Adapter weights", fmt_bytes(report.get("adapter_bytes")))
    if report.get("quantization_gap") is not None:
        st.caption(f"Gap to the 4-bit adapter model: {report['quantization_gap']:.3e}")
    st.caption(report.get("note", ""))
    with st.expander("Full report"):
        st.json(report)

if merged.is_dir() and any(merged.iterdir()):
    st.download_button("Download merged model (zip)", lambda: zip_dir(merged),
                       file_name=f"{rec.id}-merged.zip", mime="application/zip", key="merge_dl_merged")
    auto = "AutoModelForSequenceClassification" if rec.task == "seq-cls" else "AutoModelForCausalLM"
    st.code(f"from transformers import {auto}\nmodel = {auto}.from_pretrained({str(merged)!r})  # no peft needed",
            language="python")
