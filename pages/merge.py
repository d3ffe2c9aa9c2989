"""Merge & export: fold a run's LoRA adapter into its base, verify the merged model is plain and equivalent,
and download the adapter or the merged model."""
import streamlit as st

from lora_ui import service
from lora_ui.format import fmt_bytes
from lora_ui.service import RunStatus
from lora_ui.state import MERGE
from lora_ui.widgets import attempt, pick_run, show_error, show_message

S = MERGE


def download(label: str, rec, file_name: str, key: str, merged: bool = False, **kw) -> None:
    """A zip of the run's weights (or merged model), built when clicked, for whoever may export this run."""
    if service.can("export", rec):
        st.download_button(label, lambda: service.export_zip(rec.id, merged=merged), file_name=file_name,
                           mime="application/zip", key=S.key(key), **kw)


def plain_weights(rec, saved) -> None:
    """A full or head-only run: nothing to merge, its weights download as they are."""
    st.info(f"This is a **{rec.method}** run: it saved its weights directly (no adapter to merge). "
            "You can download them as they are.")
    st.metric("Saved weights", fmt_bytes(service.folder_bytes(saved.folder)))
    download(f"Download {saved.kind}/ (zip)", rec, f"{rec.id}-{saved.kind}.zip", "dl_saved")


def report_section(report: dict) -> None:
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


def adapter_section(rec, saved) -> None:
    merged = saved.merged.is_dir() and any(saved.merged.iterdir())
    c1, c2, c3 = st.columns(3)
    c1.metric("Adapter on disk", fmt_bytes(service.folder_bytes(saved.folder)))
    c2.metric("Merged model", fmt_bytes(service.folder_bytes(saved.merged)) if merged else "not merged yet")
    c3.metric("Trainable params", f"{(rec.results or {}).get('trainable_params') or 0:,}")
    download("Download adapter (zip)", rec, f"{rec.id}-{saved.kind}.zip", "dl_adapter",
             help="adapter_config.json + adapter_model.safetensors: load with PeftModel.from_pretrained")
    if rec.method == "qlora":
        st.caption("QLoRA: 4-bit weights cannot absorb the update, so the base is reloaded in full precision and "
                   "the adapter merged there; the report also shows the gap to the 4-bit model used in training.")
    label = "🔁 Merge again (replaces the merged folder)" if merged else "🧬 Merge and verify"
    if service.can("merge", rec) and st.button(label, type="primary", key=S.key("go")):
        result = attempt(S, "Merge failed", service.merge_run, rec.id,
                         spinner="Merging, saving, reloading as a plain model, comparing outputs…")
        if result is not None:
            S[f"report_{rec.id}"] = result.detail
            S.post("success", result.message)
        st.rerun()  # redraw the sizes above from disk
    report = S.get(f"report_{rec.id}")
    if report:
        report_section(report)
    if merged:
        download("Download merged model (zip)", rec, f"{rec.id}-{saved.merged.name}.zip", "dl_merged", merged=True)
        auto = "AutoModelForSequenceClassification" if rec.task == "seq-cls" else "AutoModelForCausalLM"
        st.code(f"from transformers import {auto}\nmodel = {auto}.from_pretrained({str(saved.merged)!r})  "
                "# no peft needed", language="python")


def push_section(rec, merged: bool) -> None:
    """Upload to the Hugging Face Hub with a model card generated from the run (needs the Hub and a token)."""
    st.subheader("Push to the Hugging Face Hub")
    c1, c2, c3 = st.columns([3, 1, 1])
    repo = c1.text_input("Repository id", placeholder="your-name/my-adapter", key=S.key("repo"))
    private = c2.checkbox("Private", value=True, key=S.key("private"))
    which = c3.radio("Upload", ["LoRA adapter", "merged model"] if merged else ["saved weights"], key=S.key("which"))
    with st.expander("Model card (README.md of the repository)"):
        st.markdown(service.model_card(rec.id, which == "merged model"))
    if st.button("⬆️ Push", disabled=not repo.strip(), key=S.key("push"),
                 help="Uses $HF_TOKEN or your `hf auth login`; fails with the reason when offline"):
        result = attempt(S, "Push failed", service.push_run, rec.id, repo, private, which == "merged model",
                         spinner=f"Uploading to {repo}…")
        if result is not None:
            S.post("success", result.message)
        st.rerun()


def main() -> None:
    st.title("Merge & export")
    st.markdown("Merging computes **W' = W + (α/r)·B·A** once and stores W' in place of W: the result is a plain "
                "model with no PEFT dependency and no extra latency. We then reload it with `AutoModel…"
                "from_pretrained`, check that no `lora_` parameter is left, and compare its outputs with the "
                "adapter model's.")
    show_message(S)
    rec = pick_run(service.list_runs(RunStatus.SUCCEEDED), S.key("run"),
                   "No finished runs yet. Train one on the Train page first.")
    if rec is None:
        return
    try:
        saved = service.saved_weights(rec.id)
    except Exception as exc:  # noqa: BLE001 - ModelError: the run saved no weights
        show_error(exc)
        return
    if saved.mergeable:
        adapter_section(rec, saved)
    else:
        plain_weights(rec, saved)
    push_section(rec, saved.mergeable and saved.merged.is_dir() and any(saved.merged.iterdir()))


main()
