"""Config builder: pick a model, layers, LoRA knobs, data and training settings; see counts and memory live;
export as YAML / JSON / PEFT code / CLI; load a saved config.

Every widget writes "cfg_<dotted field>" in session state (kept across pages with persist_state); the
validated config is stored as "cfg_current" for the Train page. Validation is ExperimentConfig's own:
its ConfigError names a field and the page shows the message under that field.
"""
import json

import pandas as pd
import streamlit as st

from lora_core.config import (BUNDLED_MODELS, SAMPLE_DATASETS, ConfigError, ExperimentConfig, field_choices,
                              field_help)
from lora_ui import engine
from lora_ui.common import FieldSlots, current_config, error_text, fmt_bytes, fmt_count, set_current_config
from lora_ui.config_form import (OTHER_DATA, OTHER_MODEL, P, SPLIT_OFF, TARGET_MODES, cli_command,
                                 config_dict_from_state, config_filename, field_meta, peft_snippet,
                                 resolve_targets, state_from_config)

S = st.session_state
slots = FieldSlots()


def apply_config(cfg: ExperimentConfig) -> None:
    """Put a config into the widgets (only safe before they are drawn, or from a callback)."""
    for key, value in state_from_config(cfg).items():
        S[key] = value
    set_current_config(cfg)


def reset_to_defaults() -> None:
    from lora_ui.common import default_config

    apply_config(default_config())


def field(kind: str, dotted: str, label: str, **kw):
    """One widget for one config field: tooltip from field_help, limits from the field's metadata."""
    kw.setdefault("help", field_help(dotted))
    if kind in ("selectbox", "radio") and "options" not in kw:
        kw["options"] = list(field_choices(dotted) or [])
    if kind == "number_input":
        meta = field_meta(dotted)
        if "min" in meta:
            kw.setdefault("min_value", meta["min"])
        if "max" in meta:
            kw.setdefault("max_value", meta["max"])
    value = getattr(st, kind)(label, key=P + dotted, persist_state="session", **kw)
    slots.add(dotted)
    return value


# -- state: defaults, loading a saved config ---------------------------------------------------------------

if P + "name" not in S:
    for k, v in state_from_config(current_config()).items():
        S.setdefault(k, v)

st.title("Config builder")
st.caption("Everything a run needs, in one validated config. The Train page launches what you build here.")

with st.expander("Load a saved config (YAML or JSON)", expanded=False, icon=":material/upload_file:"):
    upload = st.file_uploader("Config file", type=["yaml", "yml", "json"], key="cfg_upload",
                              help="A file exported from this page or written by hand; unknown keys are refused.")
    if upload is not None and S.get("cfg_loaded_file") != upload.file_id:
        S["cfg_loaded_file"] = upload.file_id
        try:
            text = upload.getvalue().decode("utf-8")
            fmt = "json" if upload.name.lower().endswith(".json") else "yaml"
            loaded = ExperimentConfig.from_text(text, fmt=fmt, source=upload.name)
            apply_config(loaded)
            S["cfg_load_message"] = ("ok", f"Loaded {upload.name}: {loaded.name}")
        except (ConfigError, UnicodeDecodeError, ValueError) as exc:
            S["cfg_load_message"] = ("error", f"{upload.name}: {error_text(exc)}")
    if upload is None:  # the file was removed: forget its message
        S.pop("cfg_load_message", None)
        S.pop("cfg_loaded_file", None)
    message = S.get("cfg_load_message")
    if message:
        (st.success if message[0] == "ok" else st.error)(message[1])
    st.button("Reset to the offline defaults", on_click=reset_to_defaults, key="cfg_reset")

summary = st.container(border=True)  # filled at the end, once the config is validated

tab_model, tab_lora, tab_data, tab_train, tab_export = st.tabs(
    ["Model & method", "LoRA layers & knobs", "Data", "Training", "Export"])

# -- model & method ----------------------------------------------------------------------------------------
with tab_model:
    c1, c2, c3 = st.columns([2, 1, 1])
    with c1:
        field("text_input", "name", "Run name")
    with c2:
        field("selectbox", "task", "Task")
    with c3:
        field("selectbox", "method", "Method")
    c1, c2 = st.columns([1, 2])
    with c1:
        model_choice = st.selectbox("Model", list(BUNDLED_MODELS) + [OTHER_MODEL], key=P + "model_choice",
                                    persist_state="session", help=field_help("model.source"))
    with c2:
        if model_choice == OTHER_MODEL:
            st.text_input("Hub id or local directory", key=P + "model_custom", persist_state="session",
                          placeholder="e.g. distilbert-base-uncased or /models/my-bert")
    slots.add("model.source")
    with st.expander("Advanced model options"):
        field("text_input", "model.revision", "Revision")
        field("checkbox", "model.trust_remote_code", "Trust remote code")
    st.caption("**full** trains every weight · **lora** trains small B·A adapters beside frozen weights · "
               "**qlora** does the same on a 4-bit quantized base · **head-only** trains only the classifier.")

source = (S.get(P + "model_custom") or "").strip() if model_choice == OTHER_MODEL else model_choice
layer_rows: list[dict] = []
layer_error = None
preset_map: dict = {}
if source:
    try:
        trust, revision = bool(S.get(P + "model.trust_remote_code")), (S.get(P + "model.revision") or "").strip()
        layer_rows = engine.targets(source, trust, revision or None)
        preset_map = engine.presets(source, trust, revision or None)
    except Exception as exc:  # noqa: BLE001 - a bad model id is user input: show it, don't crash
        layer_error = exc
if layer_error is not None:
    with tab_model:
        slots.show(ConfigError("model.source", error_text(layer_error)))

# -- LoRA --------------------------------------------------------------------------------------------------
with tab_lora:
    method = S.get(P + "method", "lora")
    if method not in ("lora", "qlora"):
        st.info(f"Method **{method}** does not use LoRA adapters; these settings apply to lora and qlora runs.")
    st.markdown("LoRA keeps each chosen weight **W** (d_out × d_in) frozen and learns a low-rank update:")
    st.latex(r"W' = W + \frac{\alpha}{r}\,B A,\qquad B\in\mathbb{R}^{d_\text{out}\times r},\;"
             r"A\in\mathbb{R}^{r\times d_\text{in}}")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        r = field("number_input", "lora.r", "Rank r", step=1)
    with c2:
        alpha = field("number_input", "lora.alpha", "Alpha α", step=1.0)
    with c3:
        field("number_input", "lora.dropout", "Dropout", step=0.05, format="%.2f")
    with c4:
        field("selectbox", "lora.bias", "Bias")
    c1, c2, c3 = st.columns(3)
    with c1:
        rslora = field("checkbox", "lora.use_rslora", "rsLoRA (α/√r)")
    with c2:
        field("checkbox", "lora.use_dora", "DoRA")
    with c3:
        field("text_input", "lora.modules_to_save", "Also train in full (comma-separated)")
    if r and alpha:
        scale = alpha / (r ** 0.5 if rslora else r)
        st.caption(f"Scaling of the update: α/{'√r' if rslora else 'r'} = {alpha:g}/"
                   f"{f'√{r}' if rslora else r} = **{scale:.3g}**. Doubling r with α fixed halves the scale, "
                   "which is why α is usually raised with r.")

    st.subheader("Layers to adapt")
    mode = st.radio("Target modules", list(TARGET_MODES), format_func=TARGET_MODES.get, horizontal=True,
                    key=P + "targets_mode", persist_state="session", help=field_help("lora.target_modules"))
    body_rows = [row for row in layer_rows if not row.get("head")]
    head_leaves = sorted({row["leaf"] for row in layer_rows if row.get("head")})
    leaves = list(dict.fromkeys(row["leaf"] for row in body_rows))
    if mode == "custom":
        chosen = [x for x in S.get(P + "targets_custom", []) if x in leaves or not leaves]
        S[P + "targets_custom"] = chosen
        st.multiselect("Layers (by leaf name; every layer with that name is adapted)", leaves or chosen,
                       key=P + "targets_custom", persist_state="session",
                       placeholder="choose layers from the table below")
    slots.add("lora.target_modules")
    if mode != "custom" and preset_map:
        st.caption(f"{mode} → {', '.join(preset_map.get(mode[7:], [])) or '(none)'}")
    if body_rows:
        if mode == "custom":
            selected = set(S.get(P + "targets_custom") or [])
        else:
            selected = set(preset_map.get(mode[7:], [])) if preset_map else set()
        rank = int(r or 0)
        table = {}
        for row in body_rows:
            t = table.setdefault(row["leaf"], {"adapt": row["leaf"] in selected, "layer": row["leaf"],
                                               "type": row["type"], "shape (in → out)": set(), "count": 0,
                                               "weight params": 0, "LoRA params at r": 0})
            t["shape (in → out)"].add(f"{row['in_features']} → {row['out_features']}")
            t["count"] += 1
            t["weight params"] += int(row.get("params") or row["in_features"] * row["out_features"])
            t["LoRA params at r"] += rank * (row["in_features"] + row["out_features"])
        frame = pd.DataFrame(table.values())
        frame["shape (in → out)"] = frame["shape (in → out)"].map(lambda s: ", ".join(sorted(s)))
        st.dataframe(frame, hide_index=True, width="stretch",
                     column_config={"adapt": st.column_config.CheckboxColumn("adapt", width="small")})
        st.caption(f"{len(body_rows)} adaptable layers in {len(table)} groups. LoRA adds r·(d_in + d_out) "
                   "parameters per layer."
                   + (f" The head ({', '.join(head_leaves)}) is not a LoRA target: for seq-cls it is trained in "
                      "full and saved with the adapter." if head_leaves else ""))

    if method == "qlora":
        st.subheader("4-bit quantization")
        c1, c2, c3 = st.columns(3)
        with c1:
            field("selectbox", "quant.quant_type", "Quant type")
        with c2:
            field("selectbox", "quant.compute_dtype", "Compute dtype")
        with c3:
            field("checkbox", "quant.double_quant", "Double quantization")

# -- data --------------------------------------------------------------------------------------------------
with tab_data:
    task = S.get(P + "task", "seq-cls")
    c1, c2 = st.columns([1, 2])
    with c1:
        train_choice = st.selectbox("Training data", list(SAMPLE_DATASETS) + [OTHER_DATA], key=P + "train_choice",
                                    persist_state="session", help=field_help("data.train"))
    with c2:
        if train_choice == OTHER_DATA:
            st.text_input("File path or hub dataset id", key=P + "train_custom", persist_state="session",
                          placeholder="e.g. data/train.csv or glue")
    slots.add("data.train")
    c1, c2 = st.columns([1, 2])
    with c1:
        eval_choice = st.selectbox("Evaluation data", [SPLIT_OFF] + list(SAMPLE_DATASETS) + [OTHER_DATA],
                                   key=P + "eval_choice", persist_state="session", help=field_help("data.eval"))
    with c2:
        if eval_choice == OTHER_DATA:
            st.text_input("Eval file path or hub dataset id", key=P + "eval_custom", persist_state="session")
        elif eval_choice == SPLIT_OFF:
            field("number_input", "data.eval_fraction", "Eval fraction", step=0.05, format="%.2f")
    slots.add("data.eval")
    c1, c2, c3, c4 = st.columns(4)
    if task == "seq-cls":
        with c1:
            field("text_input", "data.text_column", "Text column")
        with c2:
            field("text_input", "data.label_column", "Label column")
    else:
        with c1:
            field("text_input", "data.prompt_column", "Prompt column")
        with c2:
            field("text_input", "data.response_column", "Response column")
    with c3:
        field("number_input", "data.max_length", "Max tokens", step=16)
    with c4:
        field("number_input", "data.max_train_samples", "Max train rows", step=100, placeholder="all")
    with st.expander("Hub dataset options and limits"):
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            field("text_input", "data.subset", "Subset (config name)")
        with c2:
            field("text_input", "data.train_split", "Train split")
        with c3:
            field("text_input", "data.eval_split", "Eval split")
        with c4:
            field("number_input", "data.max_eval_samples", "Max eval rows", step=100, placeholder="all")
        if task == "causal-lm":
            field("checkbox", "data.mask_prompt", "Loss on response tokens only")
    preview_slot = st.container()

# -- training ----------------------------------------------------------------------------------------------
with tab_train:
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        field("number_input", "train.epochs", "Epochs", step=0.5)
    with c2:
        field("number_input", "train.max_steps", "Max steps", step=1, placeholder="from epochs")
    with c3:
        field("number_input", "train.batch_size", "Batch size", step=1)
    with c4:
        field("text_input", "train.learning_rate", "Learning rate", placeholder="auto (1e-3 LoRA, 5e-5 full)")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        field("selectbox", "train.optimizer", "Optimizer")
    with c2:
        field("selectbox", "train.scheduler", "LR schedule")
    with c3:
        field("number_input", "train.warmup_ratio", "Warmup ratio", step=0.05, format="%.2f")
    with c4:
        field("selectbox", "train.precision", "Precision")
    c1, c2, c3, c4 = st.columns(4)
    with c1:
        field("number_input", "train.seed", "Seed", step=1)
    with c2:
        field("number_input", "train.logging_steps", "Log every N steps", step=1)
    with c3:
        field("number_input", "train.eval_steps", "Eval every N steps", step=1, placeholder="each epoch")
    with c4:
        field("checkbox", "train.gradient_checkpointing", "Gradient checkpointing")
    with st.expander("More optimization settings"):
        c1, c2, c3, c4 = st.columns(4)
        with c1:
            field("number_input", "train.gradient_accumulation_steps", "Grad accumulation", step=1)
        with c2:
            field("number_input", "train.weight_decay", "Weight decay", step=0.01, format="%.3f")
        with c3:
            field("number_input", "train.max_grad_norm", "Max grad norm", step=0.5)
        with c4:
            field("number_input", "train.eval_batch_size", "Eval batch size", step=1, placeholder="= batch size")
        c1, c2, c3 = st.columns(3)
        with c1:
            field("number_input", "train.save_steps", "Checkpoint every N steps", step=1, placeholder="each eval")
        with c2:
            field("number_input", "train.early_stopping_patience", "Early-stopping patience", step=1,
                  placeholder="off")
        with c3:
            field("number_input", "generate.max_new_tokens", "Generated tokens (causal-lm)", step=8)
        field("text_area", "generate.prompts", "Prompts generated before and after training (causal-lm, one a line)")

# -- validate, then fill the summary and the exports ----------------------------------------------------------
cfg = None
try:
    cfg = ExperimentConfig.from_dict(config_dict_from_state(S))
except ConfigError as exc:
    slots.show(exc, fallback=summary)
    with summary:
        st.error(f"Fix **{exc.field or 'config'}**: {exc.message}", icon="✋")

if cfg is not None and layer_error is None:
    set_current_config(cfg)
    num_labels = 3 if cfg.data.train == "sample:sentiment-3" else 2
    with preview_slot:
        st.markdown("**Preview** — first rows as the engine reads them")
        try:
            frame, counts = engine.preview(cfg)
            st.dataframe(frame, hide_index=True, width="stretch")
            if counts:
                num_labels = max(2, len(counts))
                st.bar_chart(pd.Series(counts, name="rows"), height=180, horizontal=True)
                st.caption("Label counts: " + ", ".join(f"{k}: {v}" for k, v in counts.items()))
        except Exception as exc:  # noqa: BLE001 - DataError names file, column and row
            slots.show(ConfigError("data.train", error_text(exc)))
    with summary:
        c = st.columns(5)
        try:
            counts_ = engine.count_params(cfg, num_labels=num_labels)
            c[0].metric("Trainable params", fmt_count(counts_["trainable"]),
                        help=f"{counts_['trainable']:,} of {counts_['total']:,}")
            c[1].metric("% of the model", f"{counts_['percent']:.3f}%")
            c[2].metric("Adapter size" if cfg.uses_lora else "Saved weights", fmt_bytes(counts_["adapter_bytes"]))
        except Exception as exc:  # noqa: BLE001 - e.g. a target name that does not exist (ModelError)
            slots.show(ConfigError("lora.target_modules", error_text(exc)), fallback=summary)
            c[0].metric("Trainable params", "—")
        est = None
        try:
            est = engine.estimate_for_experiment(cfg, num_labels=num_labels)
            c[3].metric("Est. training memory", fmt_bytes(est.get("peak_bytes")),
                        help=f"Estimated peak on {est.get('settings', {}).get('device', 'this device')} at batch "
                             f"{cfg.train.batch_size} × {cfg.data.max_length} tokens (see the Estimator page)")
        except Exception as exc:  # noqa: BLE001
            c[3].metric("Est. training memory", "—", help=error_text(exc))
        c[4].metric("Scale α/r", f"{cfg.lora_scaling:.3g}" if cfg.uses_lora else "—")
        if est and est.get("terms"):
            with st.expander("Memory estimate by term"):
                st.dataframe(pd.DataFrame([{"term": k.replace("_", " "), "bytes": fmt_bytes(v)}
                                           for k, v in est["terms"].items() if v]), hide_index=True,
                             width="stretch")
                st.caption(f"The tutorial's rule (weights × 6) would say {fmt_bytes(est.get('naive_bytes'))}.")
        st.caption(f"✅ Valid config · {cfg.method} on `{cfg.model.source}` · data `{cfg.data.train}` · "
                   f"lr {cfg.learning_rate:g}. Launch it from the Train page.")
        st.page_link("pages/train.py", label="Go to Train", icon=":material/rocket_launch:")

with tab_export:
    if cfg is None:
        st.warning("Fix the highlighted field to export this config.")
    else:
        c1, c2 = st.columns(2)
        c1.download_button("YAML", cfg.to_yaml(), file_name=config_filename(cfg, "yaml"),
                           mime="application/x-yaml", key="cfg_dl_yaml")
        c2.download_button("JSON", cfg.to_json(), file_name=config_filename(cfg, "json"),
                           mime="application/json", key="cfg_dl_json")
        st.code(cfg.to_yaml(), language="yaml")
        st.markdown("**Command line** — save the YAML above, then:")
        st.code(cli_command(cfg), language="bash")
        st.markdown("**The same model in plain transformers + peft**")
        try:
            path = engine.resolved_source(cfg.model.source)
        except Exception:  # noqa: BLE001 - the snippet still helps with the raw id
            path = cfg.model.source
        st.code(peft_snippet(cfg, path, resolve_targets(cfg, preset_map), num_labels=3
                             if cfg.data.train == "sample:sentiment-3" else 2), language="python")
        S["cfg_export_json"] = json.dumps(cfg.to_dict())
