"""Cached calls into lora_core for the pages.

Each wrapper imports its engine module inside the function (torch/transformers load only when a page
really needs a model), and caches plain, picklable results with st.cache_data so a rerun of the page does
not redo meta-device model construction or dataset reads. Errors are not cached: they propagate to the
page, which shows them next to the field.
"""
from __future__ import annotations

import json

import streamlit as st

from lora_core.config import ExperimentConfig


@st.cache_data(show_spinner="Reading the model's layers…", max_entries=32)
def targets(source: str, trust_remote_code: bool = False, revision: str | None = None) -> list[dict]:
    from lora_core.models import list_targets

    return list_targets(source, trust_remote_code=trust_remote_code, revision=revision)


@st.cache_data(show_spinner=False, max_entries=32)
def presets(source: str, trust_remote_code: bool = False, revision: str | None = None) -> dict[str, list[str]]:
    from lora_core.models import target_presets

    return target_presets(source, trust_remote_code=trust_remote_code, revision=revision)


@st.cache_data(show_spinner=False, max_entries=32)
def resolved_source(source: str) -> str:
    from lora_core.models import resolve_source

    return str(resolve_source(source))


@st.cache_data(show_spinner="Counting parameters…", max_entries=128)
def _count_params(cfg_json: str, num_labels: int) -> dict:
    from lora_core.models import count_params

    return count_params(ExperimentConfig.from_dict(json.loads(cfg_json)), num_labels=num_labels)


def count_params(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    return _count_params(json.dumps(cfg.to_dict(), sort_keys=True), int(num_labels))


@st.cache_data(show_spinner=False, max_entries=128)
def _estimate_for_experiment(cfg_json: str, num_labels: int) -> dict:
    from lora_core.memory import estimate_for_experiment

    return estimate_for_experiment(ExperimentConfig.from_dict(json.loads(cfg_json)), num_labels=num_labels)


def estimate_for_experiment(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    return _estimate_for_experiment(json.dumps(cfg.to_dict(), sort_keys=True), int(num_labels))


@st.cache_data(show_spinner="Estimating memory…", max_entries=256)
def estimate(model: str, method: str, batch_size: int, seq_len: int, knobs_json: str) -> dict:
    from lora_core.memory import estimate as _estimate

    return _estimate(model=model, method=method, batch_size=batch_size, seq_len=seq_len,
                     **json.loads(knobs_json)).to_dict()


@st.cache_data(show_spinner=False)
def model_presets() -> list[str]:
    from lora_core.memory import MODEL_PRESETS

    return list(MODEL_PRESETS)


@st.cache_data(show_spinner=False, max_entries=64)
def lora_param_table(d_in: int, d_out: int, ranks: tuple[int, ...]) -> list[dict]:
    from lora_core.memory import lora_param_table as _table

    return _table(d_in, d_out, ranks=ranks)


@st.cache_data(show_spinner="Reading the data…", max_entries=64, ttl=60)
def data_preview(spec_json: str, n: int = 5):
    """(first rows as a DataFrame, label counts as a dict or None) of a config's training data."""
    from lora_core import data

    cfg = ExperimentConfig.from_dict(json.loads(spec_json))
    where = {"subset": cfg.data.subset, "split": cfg.data.train_split}
    if cfg.task == "seq-cls":
        frame = data.preview(cfg.data.train, n=n, text_column=cfg.data.text_column,
                             label_column=cfg.data.label_column, **where)
        counts = data.label_counts(cfg.data.train, cfg.data.label_column, **where)
    else:
        frame = data.preview(cfg.data.train, n=n, prompt_column=cfg.data.prompt_column,
                             response_column=cfg.data.response_column, **where)
        counts = None
    return frame, counts


def preview(cfg: ExperimentConfig, n: int = 5):
    return data_preview(json.dumps(cfg.to_dict(), sort_keys=True), n)
