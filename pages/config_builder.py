"""Config builder: pick a model, layers, LoRA knobs, data and training settings; see counts and memory live;
export as YAML / JSON / PEFT code / CLI; load a saved config.

Every widget writes "cfg_<dotted field>" in session state (kept across pages and closed tabs with persist_state).
Each run of the page validates that state first (ExperimentConfig's own validation: a ConfigError names the field,
and the message lands in the summary and under the field when its tab is open), then runs the open tab's function
only, reading every derived number — the α/r scale, LoRA parameters per layer, trainable counts, the number of
labels — from the validated config and the engine. The valid config becomes the current config the Train page
launches.
"""
import json

import pandas as pd
import streamlit as st

from lora_core.config import (BUNDLED_MODELS, DEFAULT_LEARNING_RATES, SAMPLE_DATASETS, SAMPLE_FOR_TASK,
                              ConfigError, ExperimentConfig, field_choices, field_help)
from lora_ui import charts, service
from lora_ui.config_form import (OTHER_DATA, OTHER_MODEL, SPLIT_OFF, TARGET_MODES, apply_config, cli_command,
                                 config_dict_from_state, config_filename, field_meta, form_config, layer_groups,
                                 peft_snippet, resolve_targets, state_from_config)
from lora_ui.format import code, error_text, fmt_bytes, fmt_count, md, message_markdown
from lora_ui.state import BUILDER, current_config, default_config, set_current_config
from lora_ui.widgets import FieldSlots, attempt, choice_or_other, show_message

S = BUILDER
slots = FieldSlots()
# the fields (or whole config sections) each tab draws; a more specific name wins
TABS = {"Model & method": "name task method model", "LoRA layers & knobs": "lora quant", "Data": "data",
        "Training": "train generate resources data.seed", "Export": ""}
TAB_OF = {name: tab for tab, names in TABS.items() for name in names.split()}


def tab_hint(dotted: str) -> str:
    """' (Data tab)' for a field drawn on another tab than the open one, so an error names where to go ('' for
    a field no tab draws, or one on the open tab)."""
    key = (dotted or "").split("[")[0]
    while key and key not in TAB_OF:  # "data.seed" is Training's, "data.train" the Data section's
        key = key.rpartition(".")[0]
    tab = TAB_OF.get(key)
    return "" if tab is None or S.get("tab", next(iter(TABS))) == tab else f" ({tab} tab)"


def field(kind: str, dotted: str, label: str, **kw):
    """One widget for one config field: tooltip from field_help, choices and limits from the field itself."""
    kw.setdefault("help", field_help(dotted))
    if kind in ("selectbox", "radio") and "options" not in kw:
        kw["options"] = list(field_choices(dotted) or [])
    if kind == "number_input":
        meta = field_meta(dotted)
        if "min" in meta:
            kw.setdefault("min_value", meta["min"])
        if "max" in meta:
            kw.setdefault("max_value", meta["max"])
    value = getattr(st, kind)(label, key=S.key(dotted), persist_state="session", **kw)
    slots.add(dotted)
    return value


def columns_of_fields(specs: list[tuple]) -> None:
    """A row of fields: [(kind, dotted, label, {widget kwargs}), ...], one column each."""
    for col, (kind, dotted, label, kw) in zip(st.columns(len(specs)), specs):
        with col:
            field(kind, dotted, label, **kw)


# -- loading a saved config ----------------------------------------------------------------------------------------

def load_section() -> None:
    with st.expander("Load a saved config (YAML or JSON)", expanded=False, icon=":material/upload_file:"):
        upload = st.file_uploader("Config file", type=["yaml", "yml", "json"], key=S.key("upload"),
                                  help="A file exported from this page or written by hand; unknown keys are refused.")
        if upload is not None and S.get("loaded_file") != upload.file_id:
            S["loaded_file"] = upload.file_id
            try:  # checked exactly as `python -m lora_core train FILE` checks it: every problem at once
                fmt = "json" if upload.name.lower().endswith(".json") else "yaml"
                loaded = service.load_config_file(upload.getvalue(), fmt, upload.name)
                apply_config(loaded)  # the widgets are drawn below, so their state may still change
                S.post("success", md(f"Loaded {upload.name}: {loaded.name}"))
            except ConfigError as exc:  # the form keeps what it showed: nothing is lost
                S.post("error", message_markdown(f"{upload.name} was not loaded (the form is unchanged): "
                                                 f"{error_text(exc)}", escape=True))
        if upload is None and S.pop("loaded_file") is not None:  # the file was removed: forget its message
            S.dismiss()
        show_message(S)
        st.button("Reset to the offline defaults", on_click=apply_config, args=(default_config(),),
                  key=S.key("reset"))


# -- the tabs --------------------------------------------------------------------------------------------------------

def sample_for_task() -> None:
    """The task changed: a bundled sample made for the other task follows it (a file or hub id is kept)."""
    task, choice = S.get("task"), S.get("train_choice")
    if choice in SAMPLE_DATASETS and choice != SAMPLE_FOR_TASK.get(task, choice):
        S["train_choice"] = SAMPLE_FOR_TASK[task]


def model_tab() -> None:
    columns_of_fields([("text_input", "name", "Run name", {}),
                       ("selectbox", "task", "Task", {"on_change": sample_for_task}),
                       ("selectbox", "method", "Method", {})])
    choice_or_other("Model", BUNDLED_MODELS, OTHER_MODEL, key=S.key("model_choice"),
                    custom_key=S.key("model_custom"), custom_label="Hub id or local directory",
                    placeholder="e.g. distilbert-base-uncased or /models/my-bert", help=field_help("model.source"),
                    persist="session")
    slots.add("model.source")
    with st.expander("Advanced model options", expanded=bool(S.get("model.trust_remote_code"))):
        field("text_input", "model.revision", "Revision")
        if field("checkbox", "model.trust_remote_code", "Trust remote code"):
            remote_code_check(config_dict_from_state(st.session_state)["model"]["source"])
    st.caption("**full** trains every weight · **lora** trains small B·A adapters beside frozen weights · "
               "**qlora** does the same on a 4-bit quantized base · **head-only** trains only the classifier.")


def remote_code_check(source: str) -> None:
    """A model's own code runs only in the training worker, and only once confirmed (local mode: type its id)
    or allowlisted by an admin (a shared server). Pages never run it."""
    if service.remote_code_allowed(source):
        st.success(f"Training may run the code shipped with {code(source)} (in its worker process only; this "
                   "page never runs it).", icon=":material/verified_user:")
        return
    if service.mode() != service.LOCAL:
        st.warning(f"This server runs a model's own code only for models an admin has allowlisted; "
                   f"{code(source)} is not one, so a launch with this box ticked is refused.", icon="🔒")
        return
    st.warning("Trusting remote code lets this model's Python files run on this machine with your rights, in "
               "the training worker. Type the model's id to confirm you trust it.", icon="⚠️")
    typed = st.text_input("Model id, to confirm", key=S.key("trust_confirm"), placeholder=source)
    if typed.strip() and typed.strip() == source:
        service.confirm_remote_code(source)
        st.rerun()
    elif typed.strip():
        st.error("That is not the model id above.")


def lora_tab(cfg: ExperimentConfig | None, layers: list[dict], presets: dict) -> None:
    if cfg is not None and not cfg.uses_lora:
        st.info(f"Method **{cfg.method}** does not use LoRA adapters; these settings apply to lora and qlora runs.")
    st.markdown("LoRA keeps each chosen weight **W** (d_out × d_in) frozen and learns a low-rank update:")
    st.latex(r"W' = W + \frac{\alpha}{r}\,B A,\qquad B\in\mathbb{R}^{d_\text{out}\times r},\;"
             r"A\in\mathbb{R}^{r\times d_\text{in}}")
    columns_of_fields([("number_input", "lora.r", "Rank r", {"step": 1}),
                       ("number_input", "lora.alpha", "Alpha α", {"step": 1.0}),
                       ("number_input", "lora.dropout", "Dropout", {"step": 0.05, "format": "%.2f"}),
                       ("selectbox", "lora.bias", "Bias", {})])
    columns_of_fields([("checkbox", "lora.use_rslora", "rsLoRA (α/√r)", {}), ("checkbox", "lora.use_dora", "DoRA", {}),
                       ("text_input", "lora.modules_to_save", "Also train in full (comma-separated)", {})])
    if cfg is not None:
        lora = cfg.lora
        divisor = f"√{lora.r}" if lora.use_rslora else str(lora.r)
        st.caption(f"Scaling of the update: α/{'√r' if lora.use_rslora else 'r'} = {lora.alpha:g}/{divisor} = "
                   f"**{cfg.lora_scaling:.3g}**. Doubling r with α fixed halves the scale, which is why α is "
                   "usually raised with r.")
    targets_section(cfg, layers, presets)
    if cfg is not None and cfg.method == "qlora":
        st.subheader("4-bit quantization")
        columns_of_fields([("selectbox", "quant.quant_type", "Quant type", {}),
                           ("selectbox", "quant.compute_dtype", "Compute dtype", {}),
                           ("checkbox", "quant.double_quant", "Double quantization", {})])


def targets_section(cfg: ExperimentConfig | None, layers: list[dict], presets: dict) -> None:
    """Which layers get adapters, and the model's adaptable layers with what LoRA would train on each."""
    st.subheader("Layers to adapt")
    mode = st.radio("Target modules", list(TARGET_MODES), format_func=TARGET_MODES.get, horizontal=True,
                    key=S.key("targets_mode"), persist_state="session", help=field_help("lora.target_modules"))
    leaves = list(dict.fromkeys(row["leaf"] for row in layers if not row.get("head")))
    if mode == "custom":
        # names the model lacks stay listed (and are reported below), never silently dropped
        chosen = list(S.get("targets_custom") or [])
        st.multiselect("Layers (by leaf name; every layer with that name is adapted)",
                       list(dict.fromkeys(leaves + chosen)), key=S.key("targets_custom"), persist_state="session",
                       placeholder="choose layers from the table below")
    slots.add("lora.target_modules")
    if mode != "custom" and presets:
        st.caption(f"{mode} → {', '.join(presets.get(mode[7:], [])) or '(none)'}")
    if not leaves:
        return
    targets = resolve_targets(cfg, presets) if cfg is not None else []
    selected = set(leaves) if targets == "all-linear" else set(targets if isinstance(targets, list) else [])
    rank = cfg.lora.r if cfg is not None else None
    st.dataframe(pd.DataFrame(layer_groups(layers, selected, rank)), hide_index=True, width="stretch",
                 column_config={"adapt": st.column_config.CheckboxColumn("adapt", width="small")})
    heads = sorted({row["leaf"] for row in layers if row.get("head")})
    st.caption(f"{sum(not row.get('head') for row in layers)} adaptable layers in {len(leaves)} groups. LoRA adds "
               "r·(d_in + d_out) parameters per layer."
               + (f" The head ({', '.join(heads)}) is not a LoRA target: for seq-cls it is trained in full and "
                  "saved with the adapter." if heads else ""))


def upload_section(cfg: ExperimentConfig | None) -> None:
    """Upload a data file (checked against the chosen task and columns before it is kept), or reuse one."""
    if not service.can("upload"):
        return
    with st.expander("Upload a data file, or use an earlier upload", icon=":material/upload:"):
        limit = service.max_upload_bytes()
        upload = st.file_uploader(f"CSV, TSV, JSON, JSONL or Parquet (at most {limit / 1e6:g} MB)",
                                  type=["csv", "tsv", "json", "jsonl", "parquet"], key=S.key("data_upload"),
                                  help="Checked like a training file with the columns chosen below; a file that "
                                       "fails is not kept. The same file uploaded twice is stored once.")
        if upload is not None and S.get("uploaded_file") != upload.file_id:
            S["uploaded_file"] = upload.file_id
            try:
                if cfg is None:
                    raise ConfigError("", "fix the problem named above first: the file is checked against the "
                                          "task and columns chosen here")
                use_data(service.upload_dataset(upload.name, upload.getvalue(), cfg).detail)
                S.post("success", f"Uploaded {md(upload.name)}: it is the training data now.")
            except Exception as exc:  # noqa: BLE001 - DataError says what is wrong with the file
                S.post("error", md(f"{upload.name}: {error_text(exc)}"))
            st.rerun()
        earlier = service.uploaded_datasets()
        if earlier:
            by_path = {str(u.path): u for u in earlier}
            chosen = st.selectbox("Earlier uploads", list(by_path), key=S.key("upload_pick"),
                                  format_func=lambda p: f"{by_path[p].name} · {by_path[p].size:,} bytes · "
                                                        f"{by_path[p].uploaded_by or '?'}")
            st.button("Use as training data", key=S.key("upload_use"), on_click=use_data, args=(chosen,))


def use_data(path: str) -> None:
    """Make a stored file the training data (from a callback or before the data widgets are drawn)."""
    st.session_state[S.key("train_choice")] = OTHER_DATA
    st.session_state[S.key("train_custom")] = path


def data_tab(task: str, cfg: ExperimentConfig | None = None) -> None:
    upload_section(cfg)
    choice_or_other("Training data", SAMPLE_DATASETS, OTHER_DATA, key=S.key("train_choice"),
                    custom_key=S.key("train_custom"), custom_label="File path or hub dataset id",
                    placeholder="e.g. data/train.csv or glue", help=field_help("data.train"), persist="session")
    slots.add("data.train")

    def eval_fraction(choice: str) -> None:
        if choice == SPLIT_OFF:
            field("number_input", "data.eval_fraction", "Eval fraction", step=0.05, format="%.2f")

    choice_or_other("Evaluation data", [SPLIT_OFF, *SAMPLE_DATASETS], OTHER_DATA, key=S.key("eval_choice"),
                    custom_key=S.key("eval_custom"), custom_label="Eval file path or hub dataset id",
                    help=field_help("data.eval"), persist="session", beside=eval_fraction)
    slots.add("data.eval")
    columns = ([("text_input", "data.text_column", "Text column", {}),
                ("text_input", "data.label_column", "Label column", {})] if task == "seq-cls" else
               [("text_input", "data.prompt_column", "Prompt column", {}),
                ("text_input", "data.response_column", "Response column", {})])
    columns_of_fields(columns + [("number_input", "data.max_length", "Max tokens", {"step": 16}),
                                 ("number_input", "data.max_train_samples", "Max train rows",
                                  {"step": 100, "placeholder": "all"})])
    with st.expander("Hub dataset options and limits"):
        columns_of_fields([("text_input", "data.subset", "Subset (config name)", {}),
                           ("text_input", "data.train_split", "Train split", {}),
                           ("text_input", "data.eval_split", "Eval split", {}),
                           ("number_input", "data.max_eval_samples", "Max eval rows", {"step": 100,
                                                                                       "placeholder": "all"})])
        if task == "causal-lm":
            field("checkbox", "data.mask_prompt", "Loss on response tokens only")


LR_FIND_STEPS = 30  # enough points for a curve; a click should not train for long


def apply_lr(value: float) -> None:
    st.session_state[S.key("train.learning_rate")] = f"{value:.3g}"


def lr_find_section(cfg: ExperimentConfig | None) -> None:
    """The learning-rate range test on this config's training rows; its suggestion goes into the field on click."""
    with st.expander("Find a learning rate (range test on the training rows)"):
        st.caption(f"Trains {LR_FIND_STEPS} steps while the rate grows from 1e-6 to 1 and suggests the rate where "
                   "the loss falls fastest. Only training rows are read, never the eval split.")
        if st.button("📉 Run the range test", disabled=cfg is None, key=S.key("lr_find")):
            S["lr_result"] = attempt(S, "Range test failed", service.lr_find, cfg, LR_FIND_STEPS,
                                     spinner="Running the range test…")
            st.rerun()
        result = S.get("lr_result")
        if result:
            st.plotly_chart(charts.lr_find_figure(result), key=S.key("lr_find_chart"))
            st.caption(result["why"])
            st.button(f"Use {result['suggestion']:.3g} as the learning rate", key=S.key("lr_apply"),
                      on_click=apply_lr, args=(result["suggestion"],))


def train_tab(cfg: ExperimentConfig | None = None) -> None:
    columns_of_fields([("number_input", "train.epochs", "Epochs", {"step": 0.5}),
                       ("number_input", "train.max_steps", "Max steps", {"step": 1, "placeholder": "from epochs"}),
                       ("number_input", "train.batch_size", "Batch size", {"step": 1}),
                       ("text_input", "train.learning_rate", "Learning rate",
                        {"placeholder": "auto (" + ", ".join(f"{lr:g} {method}" for method, lr
                                                             in DEFAULT_LEARNING_RATES.items()) + ")"})])
    columns_of_fields([("selectbox", "train.optimizer", "Optimizer", {}),
                       ("selectbox", "train.scheduler", "LR schedule", {}),
                       ("number_input", "train.warmup_ratio", "Warmup ratio", {"step": 0.05, "format": "%.2f"}),
                       ("selectbox", "train.precision", "Precision", {})])
    columns_of_fields([("number_input", "train.seed", "Seed", {"step": 1}),
                       ("number_input", "train.logging_steps", "Log every N steps", {"step": 1}),
                       ("number_input", "train.eval_steps", "Eval every N steps", {"step": 1,
                                                                                  "placeholder": "each epoch"}),
                       ("checkbox", "train.gradient_checkpointing", "Gradient checkpointing", {})])
    with st.expander("More optimization settings"):
        columns_of_fields([
            ("number_input", "train.gradient_accumulation_steps", "Grad accumulation", {"step": 1}),
            ("number_input", "train.weight_decay", "Weight decay", {"step": 0.01, "format": "%.3f"}),
            ("number_input", "train.max_grad_norm", "Max grad norm", {"step": 0.5}),
            ("number_input", "train.eval_batch_size", "Eval batch size", {"step": 1, "placeholder": "= batch size"})])
        columns_of_fields([
            ("number_input", "train.save_steps", "Checkpoint every N steps", {"step": 1, "placeholder": "each eval"}),
            ("number_input", "train.early_stopping_patience", "Early-stopping patience", {"step": 1,
                                                                                         "placeholder": "off"}),
            ("selectbox", "train.early_stopping_metric", "Early-stopping metric",
             {"options": [None, *field_choices("train.early_stopping_metric")], "format_func": lambda v: v or "auto"})])
        columns_of_fields([
            ("number_input", "train.max_restarts", "Restarts after a crash", {"step": 1}),
            ("number_input", "data.seed", "Data seed", {"step": 1, "placeholder": "= seed"})])
    if S.get("task") == "causal-lm":  # what the run answers before and after training: in sight, not tucked away
        st.markdown("**Generations before / after training**")
        field("number_input", "generate.max_new_tokens", "Generated tokens", step=8)
        field("text_area", "generate.prompts", "Prompts (one a line; keep them out of the training data)")
    st.markdown("**Resources** — where the run trains and on how many processes")
    columns_of_fields([
        ("selectbox", "resources.backend", "Backend", {}),
        ("number_input", "resources.num_workers", "Workers", {"step": 1}),
        ("number_input", "resources.cpus_per_worker", "CPUs per worker", {"step": 1, "placeholder": "auto"}),
        ("number_input", "resources.gpus_per_worker", "GPUs per worker", {"step": 1.0, "format": "%g"}),
        ("text_input", "resources.ray_address", "Ray cluster address", {"placeholder": "$LORA_LAB_RAY_ADDRESS"})])
    lr_find_section(cfg)


def export_tab(cfg: ExperimentConfig | None, presets: dict, labels: int) -> None:
    if cfg is None:
        st.warning("Fix the problem named above the tabs to export this config.")
        return
    c1, c2 = st.columns(2)
    c1.download_button("YAML", cfg.to_yaml(), file_name=config_filename(cfg, "yaml"), mime="application/x-yaml",
                       key=S.key("dl_yaml"))
    c2.download_button("JSON", cfg.to_json(), file_name=config_filename(cfg, "json"), mime="application/json",
                       key=S.key("dl_json"))
    st.code(cfg.to_yaml(), language="yaml")
    st.markdown("**Command line** — save the YAML above, then:")
    st.code(cli_command(cfg), language="bash")
    st.markdown("**The same model in plain transformers + peft**")
    try:
        path = service.resolved_source(cfg.model.source)
    except Exception:  # noqa: BLE001 - the snippet still helps with the raw id
        path = cfg.model.source
    st.code(peft_snippet(cfg, path, resolve_targets(cfg, presets), num_labels=labels), language="python")
    S["export_json"] = json.dumps(cfg.to_dict())


# -- derived numbers -------------------------------------------------------------------------------------------------

def model_structure(model: dict) -> tuple[list[dict], dict, Exception | None]:
    """(the model's adaptable layers, its target presets, None), or empty ones and the error to show under
    model.source."""
    if not model.get("source"):
        return [], {}, None
    where = (model["source"], model.get("revision") or None)
    try:
        return service.model_layers(*where), service.target_presets(*where), None
    except Exception as exc:  # noqa: BLE001 - a bad model id is user input: show it, don't crash
        return [], {}, exc


def preview(cfg: ExperimentConfig, slot) -> None:
    """The data preview and label counts (on the Data tab)."""
    with slot:
        st.markdown("**Preview** — first rows as the engine reads them")
        try:
            frame, counts = service.data_preview(cfg)
        except Exception as exc:  # noqa: BLE001 - DataError names file, column and row
            slots.show(exc, field="data.train")
            return
        st.dataframe(frame, hide_index=True, width="stretch")
        if counts:
            # a table with bars, not st.bar_chart: that one imports Altair, about half a second of a first visit
            st.dataframe(pd.DataFrame({"label": [str(k) for k in counts], "rows": list(counts.values())}),
                         hide_index=True, column_config={"rows": st.column_config.ProgressColumn(
                             "rows", format="%d", min_value=0, max_value=max(counts.values()))})


def label_count(cfg: ExperimentConfig) -> int:
    """The number of labels the run will train (2 if the data is unreadable: the preview and the summary's check
    say why)."""
    try:
        return service.num_labels(cfg)
    except Exception:  # noqa: BLE001 - DataError, or a path the server refuses: reported by problems_section
        return 2


def problems_section(cfg: ExperimentConfig) -> bool:
    """The whole config checked as the CLI checks it (target names against the model, paths, data columns):
    every problem listed here, and under its field when that field's tab is open. True when there is none."""
    problems = service.check_config(cfg)
    fields = [service.field_of(problem) for problem in problems]
    for problem, field_name in zip(problems, fields):  # the list below has them all
        slots.show_if_drawn(problem, field=field_name)
    if problems:
        st.error(f"{len(problems)} problem{'s' if len(problems) > 1 else ''} to fix before this config can "
                 "launch:\n" + "\n".join(f"- {error_text(p)}{tab_hint(f)}" for p, f in zip(problems, fields)),
                 icon="✋")
    return not problems


def summary_section(cfg: ExperimentConfig, labels: int) -> None:
    if not problems_section(cfg):
        return
    c = st.columns(5)
    try:
        counts = service.count_params(cfg, num_labels=labels)
        c[0].metric("Trainable params", fmt_count(counts["trainable"]),
                    help=f"{counts['trainable']:,} of {counts['total']:,}")
        c[1].metric("% of the model", f"{counts['percent']:.3f}%")
        c[2].metric("Adapter size" if cfg.uses_lora else "Saved weights", fmt_bytes(counts["adapter_bytes"]))
    except Exception as exc:  # noqa: BLE001 - e.g. a target name that does not exist (ModelError)
        if not service.ships_code(exc):  # that notice is already under model.source
            slots.show(exc, field="lora.target_modules")
        c[0].metric("Trainable params", "—")
    est = None
    try:
        est = service.estimate_for_experiment(cfg, num_labels=labels)
        c[3].metric("Est. training memory", fmt_bytes(est.get("peak_bytes")),
                    help=f"Estimated peak on {est.get('settings', {}).get('device', 'this device')} at batch "
                         f"{cfg.train.batch_size} × {cfg.data.max_length} tokens (see the Estimator page)")
    except Exception as exc:  # noqa: BLE001 - EstimateError says what it cannot estimate
        c[3].metric("Est. training memory", "—", help=error_text(exc))
    c[4].metric("Scale α/r", f"{cfg.lora_scaling:.3g}" if cfg.uses_lora else "—")
    if est and est.get("terms"):
        with st.expander("Memory estimate by term"):
            # a Markdown table: a grid here would load the grid's script on every first visit
            st.markdown("| term | bytes |\n|---|---:|\n" + "\n".join(
                f"| {k.replace('_', ' ')} | {fmt_bytes(v)} |" for k, v in est["terms"].items() if v))
            st.caption(f"The tutorial's rule (weights × 6) would say {fmt_bytes(est.get('naive_bytes'))}.")
    st.caption(f"✅ Valid config · {cfg.method} on {code(cfg.model.source)} · data {code(cfg.data.train)} · "
               f"lr {cfg.learning_rate:g}. Launch it from the Train page.")
    st.page_link("pages/train.py", label="Go to Train", icon=":material/rocket_launch:")


# -- the page --------------------------------------------------------------------------------------------------------

def main() -> None:
    if "name" not in S:  # first visit in this session: show the current config
        for key, value in state_from_config(current_config()).items():
            st.session_state.setdefault(key, value)
    st.title("Config builder")
    st.caption("Everything a run needs, in one validated config. The Train page launches what you build here.")
    load_section()
    cfg, error = form_config(st.session_state)  # validate first; every tab reads the validated config
    layers, presets, model_error = model_structure(config_dict_from_state(st.session_state)["model"])
    summary = st.container(border=True)  # filled once the open tab (and its error slots) exists
    # only the open tab runs (a click on another reruns the page): a first visit draws one tab, not five, and
    # the fields of the others keep their values (persist_state)
    model, lora, data, training, export = st.tabs(list(TABS), key=S.key("tab"), on_change="rerun")
    if model.open:
        with model:
            model_tab()
    if lora.open:
        with lora:
            lora_tab(cfg, layers, presets)
    if data.open:
        with data:
            data_tab(cfg.task if cfg is not None else S.get("task", "seq-cls"), cfg)
            preview_slot = st.container()
    if training.open:
        with training:
            train_tab(cfg)
    labels = 2
    if model_error is not None and service.ships_code(model_error):  # a notice: the worker may still run it
        slots.info(model_error, field="model.source", fallback=summary)
        model_error = None
    if model_error is not None:
        slots.show(model_error, field="model.source", fallback=summary)
    if error is not None:
        slots.show_if_drawn(error)  # the summary says it either way
        summary.error(f"Fix **{error.field or 'config'}**{tab_hint(error.field)}: {md(error.message)}", icon="✋")
    elif model_error is None:
        set_current_config(cfg)
        if data.open:
            preview(cfg, preview_slot)
        labels = label_count(cfg)
        with summary:
            summary_section(cfg, labels)
    if export.open:
        with export:
            export_tab(cfg, presets, labels)


main()
