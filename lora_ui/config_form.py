"""The Config builder's form state: widget keys <-> ExperimentConfig, the layer table, and the exports (PEFT
snippet, CLI).

Widget keys are the builder's prefix "cfg_" + the dotted config field ("cfg_lora.r"), plus a few composite
choices (model and dataset pickers, the target-module mode). The functions here are what the tests check; the
page only lays out widgets.
"""
from __future__ import annotations

import dataclasses
import shlex
import typing
from typing import Any

import streamlit as st

from lora_core.config import (BUNDLED_MODELS, SAMPLE_DATASETS, ConfigError, ExperimentConfig, get_dotted,
                              set_dotted)
from lora_ui import service
from lora_ui.state import BUILDER, set_current_config

P = BUILDER.prefix
OTHER_MODEL = "Hub id or local directory…"
OTHER_DATA = "Local file or hub dataset…"
SPLIT_OFF = "Split off part of train"
TARGET_MODES = {
    "preset:qv": "Q+V (minimal, the LoRA paper's choice)",
    "preset:attention": "All attention projections",
    "preset:all-linear": "All linear layers (the QLoRA paper's choice)",
    "custom": "Pick layers by name",
}

# Plain fields: one widget each, key P + dotted. Composite fields (model.source, data.train, data.eval,
# lora.target_modules, train.learning_rate, lora.modules_to_save, generate.prompts) are handled below.
PLAIN_FIELDS = [
    "name", "task", "method",
    "model.revision", "model.trust_remote_code",
    "lora.r", "lora.alpha", "lora.dropout", "lora.bias", "lora.use_rslora", "lora.use_dora",
    "quant.quant_type", "quant.double_quant", "quant.compute_dtype",
    "data.subset", "data.train_split", "data.eval_split", "data.eval_fraction", "data.text_column",
    "data.label_column", "data.prompt_column", "data.response_column", "data.mask_prompt", "data.max_length",
    "data.max_train_samples", "data.max_eval_samples", "data.seed",
    "train.epochs", "train.max_steps", "train.batch_size", "train.eval_batch_size",
    "train.gradient_accumulation_steps", "train.optimizer", "train.weight_decay", "train.scheduler",
    "train.warmup_ratio", "train.max_grad_norm", "train.gradient_checkpointing", "train.precision", "train.seed",
    "train.logging_steps", "train.eval_steps", "train.save_steps", "train.early_stopping_patience",
    "train.early_stopping_metric", "train.max_restarts", "generate.max_new_tokens",
    "resources.backend", "resources.num_workers", "resources.cpus_per_worker", "resources.gpus_per_worker",
    "resources.ray_address",
]
# Optional text fields: an empty box means None.
OPTIONAL_TEXT = {"model.revision", "data.subset", "data.eval_split", "resources.ray_address"}


def field_meta(dotted: str) -> dict:
    """The dataclass metadata of a field (help, min, max, min_excl, max_excl)."""
    cls: Any = ExperimentConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = typing.get_type_hints(cls)[part]
    return dict({f.name: f for f in dataclasses.fields(cls)}[parts[-1]].metadata)


def state_from_config(cfg: ExperimentConfig) -> dict[str, Any]:
    """Widget values that show `cfg` (used for the defaults and when a saved config is loaded)."""
    d = cfg.to_dict()
    state: dict[str, Any] = {}
    for dotted in PLAIN_FIELDS:
        value = get_dotted(d, dotted)
        if dotted in OPTIONAL_TEXT:
            value = value or ""
        state[P + dotted] = value
    source = cfg.model.source
    state[P + "model_choice"] = source if source in BUNDLED_MODELS else OTHER_MODEL
    state[P + "model_custom"] = "" if source in BUNDLED_MODELS else source
    train = cfg.data.train
    state[P + "train_choice"] = train if train in SAMPLE_DATASETS else OTHER_DATA
    state[P + "train_custom"] = "" if train in SAMPLE_DATASETS else train
    ev = cfg.data.eval
    state[P + "eval_choice"] = SPLIT_OFF if not ev else (ev if ev in SAMPLE_DATASETS else OTHER_DATA)
    state[P + "eval_custom"] = ev if ev and ev not in SAMPLE_DATASETS else ""
    targets = cfg.lora.target_modules
    if targets is None:
        state[P + "targets_mode"], state[P + "targets_custom"] = "preset:qv", []
    elif isinstance(targets, str) and targets.startswith("preset:"):
        state[P + "targets_mode"], state[P + "targets_custom"] = targets, []
    elif targets == "all-linear":
        state[P + "targets_mode"], state[P + "targets_custom"] = "preset:all-linear", []
    else:
        state[P + "targets_mode"], state[P + "targets_custom"] = "custom", list(targets)
    lr = cfg.train.learning_rate
    state[P + "train.learning_rate"] = "" if lr is None else f"{lr:g}"
    state[P + "lora.modules_to_save"] = ", ".join(cfg.lora.modules_to_save or [])
    state[P + "generate.prompts"] = "\n".join(cfg.generate.prompts)
    return state


def config_dict_from_state(state: dict[str, Any]) -> dict:
    """The raw config dict the widgets describe (not validated: ExperimentConfig.from_dict does that)."""
    d = ExperimentConfig().to_dict()
    for dotted in PLAIN_FIELDS:
        if P + dotted not in state:
            continue
        value = state[P + dotted]
        if dotted in OPTIONAL_TEXT:
            value = (value or "").strip() or None
        set_dotted(d, dotted, value)
    choice = state.get(P + "model_choice", "minilm")
    d["model"]["source"] = (state.get(P + "model_custom") or "").strip() if choice == OTHER_MODEL else choice
    choice = state.get(P + "train_choice", SAMPLE_DATASETS[0])
    d["data"]["train"] = (state.get(P + "train_custom") or "").strip() if choice == OTHER_DATA else choice
    choice = state.get(P + "eval_choice", SPLIT_OFF)
    if choice == SPLIT_OFF:
        d["data"]["eval"] = None
    elif choice == OTHER_DATA:
        d["data"]["eval"] = (state.get(P + "eval_custom") or "").strip() or None
    else:
        d["data"]["eval"] = choice
    mode = state.get(P + "targets_mode", "preset:qv")
    d["lora"]["target_modules"] = list(state.get(P + "targets_custom") or []) if mode == "custom" else mode
    lr = str(state.get(P + "train.learning_rate") or "").strip()
    d["train"]["learning_rate"] = lr or None  # the config parses "1e-3" and names the field when it cannot
    keep = [m.strip() for m in str(state.get(P + "lora.modules_to_save") or "").split(",") if m.strip()]
    d["lora"]["modules_to_save"] = keep or None
    if P + "generate.prompts" in state:
        d["generate"]["prompts"] = [p for p in str(state[P + "generate.prompts"]).splitlines() if p.strip()]
    return d


def form_config(state) -> tuple[ExperimentConfig | None, ConfigError | None]:
    """(the validated config the widgets describe, None) or (None, the first ConfigError)."""
    try:
        return ExperimentConfig.from_dict(config_dict_from_state(state)), None
    except ConfigError as exc:
        return None, exc


def apply_config(cfg: ExperimentConfig) -> None:
    """Show `cfg` in the builder's widgets and make it the current config (safe before the widgets are drawn,
    or from a callback)."""
    for key, value in state_from_config(cfg).items():
        st.session_state[key] = value
    set_current_config(cfg)


def layer_groups(layers: list[dict], selected: set[str], r: int | None) -> list[dict]:
    """The model's adaptable body layers grouped by leaf name: type, shapes, count, weight parameters and what
    LoRA of rank r would train on them (from the engine's r·(d_in + d_out))."""
    groups: dict[str, dict] = {}
    for row in layers:
        if row.get("head"):
            continue
        group = groups.setdefault(row["leaf"], {"adapt": row["leaf"] in selected, "layer": row["leaf"],
                                                "type": row["type"], "shape (in → out)": [], "count": 0,
                                                "weight params": 0, "LoRA params at r": 0 if r else None})
        shape = f"{row['in_features']} → {row['out_features']}"
        if shape not in group["shape (in → out)"]:
            group["shape (in → out)"].append(shape)
        group["count"] += 1
        group["weight params"] += int(row["params"])
        if r:
            group["LoRA params at r"] += service.lora_params(row["in_features"], row["out_features"], r)
    for group in groups.values():
        group["shape (in → out)"] = ", ".join(group["shape (in → out)"])
    return list(groups.values())


def resolve_targets(cfg: ExperimentConfig, presets: dict[str, list[str]] | None) -> list[str] | str:
    """The leaf names (or PEFT's "all-linear") a config adapts, with presets expanded."""
    targets = cfg.lora.target_modules
    if targets is None:
        targets = "preset:qv"
    if isinstance(targets, str) and targets.startswith("preset:"):
        if presets and targets[7:] in presets:
            return list(presets[targets[7:]])
        return targets
    return targets


def peft_snippet(cfg: ExperimentConfig, model_path: str, targets: list[str] | str, num_labels: int = 2) -> str:
    """Plain transformers + peft code that builds the same model as this config (no LoRA Lab needed)."""
    seq = cfg.task == "seq-cls"
    auto = "AutoModelForSequenceClassification" if seq else "AutoModelForCausalLM"
    load_kw = f", num_labels={num_labels}" if seq else ""
    lines = ["import torch", f"from transformers import {auto}, AutoTokenizer"
             + (", BitsAndBytesConfig" if cfg.method == "qlora" else "")]
    if cfg.uses_lora:
        extra = ", prepare_model_for_kbit_training" if cfg.method == "qlora" else ""
        lines.append(f"from peft import LoraConfig, TaskType, get_peft_model{extra}")
    lines += ["", f"model_path = {model_path!r}"]
    if cfg.model.revision:
        load_kw += f", revision={cfg.model.revision!r}"
    if cfg.model.trust_remote_code:
        load_kw += ", trust_remote_code=True"
    if cfg.method == "qlora":
        q = cfg.quant
        lines += ["bnb = BitsAndBytesConfig(",
                  "    load_in_4bit=True,",
                  f"    bnb_4bit_quant_type={q.quant_type!r},",
                  f"    bnb_4bit_use_double_quant={q.double_quant},",
                  f"    bnb_4bit_compute_dtype=torch.{q.compute_dtype},",
                  ")",
                  f"model = {auto}.from_pretrained(model_path{load_kw}, quantization_config=bnb)",
                  f"model = prepare_model_for_kbit_training(model, "
                  f"use_gradient_checkpointing={cfg.train.gradient_checkpointing})"]
    else:
        lines.append(f"model = {auto}.from_pretrained(model_path{load_kw})")
    lines.append("tokenizer = AutoTokenizer.from_pretrained(model_path)")
    if cfg.uses_lora:
        r = cfg.lora
        lines += ["", "# W' = W + (lora_alpha / r) · B·A  — only A (r×d_in) and B (d_out×r) are trained",
                  "config = LoraConfig(",
                  f"    task_type=TaskType.{'SEQ_CLS' if seq else 'CAUSAL_LM'},",
                  f"    r={r.r},",
                  f"    lora_alpha={r.alpha:g},",
                  f"    lora_dropout={r.dropout:g},",
                  f"    target_modules={targets!r},",
                  f"    bias={r.bias!r},"]
        if r.use_rslora:
            lines.append("    use_rslora=True,")
        if r.use_dora:
            lines.append("    use_dora=True,")
        if r.modules_to_save:
            lines.append(f"    modules_to_save={r.modules_to_save!r},")
        lines += [")", "model = get_peft_model(model, config)", "model.print_trainable_parameters()"]
    elif cfg.method == "head-only":
        lines += ["", "# Freeze the backbone; only the classification head learns",
                  "for name, p in model.named_parameters():",
                  "    p.requires_grad = any(h in name for h in ('classifier', 'score', 'pre_classifier'))"]
    lines += ["", f"# train with lr={cfg.learning_rate:g}, batch_size={cfg.train.batch_size}, "
                  f"epochs={cfg.train.epochs:g}" + (f", max_steps={cfg.train.max_steps}" if cfg.train.max_steps
                                                    else "")]
    return "\n".join(lines) + "\n"


def config_filename(cfg: ExperimentConfig, suffix: str = "yaml") -> str:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in cfg.name).strip("-.") or "experiment"
    return f"{safe[:80]}.{suffix}"


def cli_command(cfg: ExperimentConfig, vary: dict[str, list] | None = None, seeds: int = 1) -> str:
    """The terminal equivalent: save the YAML, then train (or sweep) it with `python -m lora_core`."""
    path = shlex.quote(config_filename(cfg))
    if not vary and seeds == 1:
        return f"python -m lora_core train {path} --wait"
    flags = " ".join(f"--vary {shlex.quote(k + '=' + ','.join(str(v) for v in vals))}" for k, vals in vary.items())
    flags += f" --seeds {seeds}" if seeds > 1 else ""
    return f"python -m lora_core sweep {path} {flags.strip()}"
