"""The second half of the door from the dashboard to the engine (lora_ui.service is the first): what Compare,
Inspect and the Playground read or do with finished runs beyond their results: seed groups and config diffs,
Playground preferences, several adapters on one base, what training changed in a run's answers, and the adapter
inspector.

The same rules as in service.py hold here: reads that only change with their inputs are `st.cache_data` (keyed by
the runs dir, the run id and, for an adapter, its file's stamp), every action first passes service's `_who_acts`
(the one place that knows who is acting), and files a page reads for a user are checked against their data roots
before any cache is consulted.
"""
from __future__ import annotations

import streamlit as st

from lora_core import adapters, inference, recipes
from lora_core.config import ExperimentConfig
from lora_core.runs import compare as run_compare
from lora_core.runs.layout import adapter_weights
from lora_core.team import policy
from lora_ui import service
from lora_ui.service import ActionResult

MAX_ADAPTERS = inference.MAX_ADAPTERS
SIMILARITY_BASES = adapters.BASES


# -- run configs, seed groups, config diffs (Compare) ----------------------------------------------------------

@st.cache_data(show_spinner=False, max_entries=1024)
def _config_dict(root: str, run_id: str) -> dict:
    return service._manager(root).config(run_id).to_dict()  # config.yaml is written once: safe to keep


def run_configs(run_ids: list[str]) -> dict[str, ExperimentConfig]:
    """{run id: its config} (each file is read once per server)."""
    root = str(service.runs_dir())
    return {i: ExperimentConfig.from_dict(_config_dict(root, i)) for i in run_ids}


def seed_groups(records: list) -> list:
    """The runs grouped by setting (runs that differ only in train.seed together), labelled by what differs."""
    return run_compare.group_by_setting(records, run_configs([r.id for r in records]))


def group_rows(groups: list) -> list[dict]:
    """One row per setting with each metric's mean and std across seeds (the `compare` CLI's table)."""
    return run_compare.group_rows(groups)


def config_diff(run_ids: list[str], ignore_seed: bool = False) -> dict[str, dict]:
    """{dotted field: {run id: value}} for the config fields that differ between these runs."""
    ignore = run_compare.LABEL_FIELDS + ((run_compare.SEED_FIELD,) if ignore_seed else ())
    return run_compare.config_diff(run_configs(run_ids), ignore=ignore)


# -- Playground: several adapters, preferences -----------------------------------------------------------------

def load_playground(run_ids: list[str]) -> inference.RunModels | inference.AdapterSet:
    """The Playground's models, loaded once (keep them in session state): one finished run of any method beside
    its base (answers under "base" and "tuned"), or 2-4 LoRA/QLoRA runs of one base, the base loaded once
    (answers under "base" and each run id)."""
    if len(run_ids) == 1:
        return service.load_run_models(run_ids[0])
    actor, manager = service._who_acts("load-model"), service.runs_manager()
    configs = run_configs(run_ids)
    for cfg in configs.values():  # as for one run: a model's own code loads only where a launch would be admitted
        policy.check_remote_code(cfg, actor, manager.team_settings())
    return inference.load_adapter_set([(i, configs[i], manager.dir(i).artifacts.path) for i in run_ids])


def vote(winner: str | None, run_ids: list[str], prompt: str) -> ActionResult:
    """Record which run answered `prompt` best in the Playground (None: no difference)."""
    actor = service._who_acts("vote")
    service.runs_manager().record_vote(winner, run_ids, prompt, actor=actor)  # the engine checks the role again
    return ActionResult("vote", actor.name, f"Recorded: {winner or 'no difference'}.", winner)


def generation_change(generations: list[dict]) -> dict:
    """What changed between a run's before / after answers: {prompts, before, after, summary}."""
    return recipes.format_change(generations)


def votes(run_id: str) -> dict:
    """{wins, comparisons, ties}: the Playground choices that involved this run."""
    return service.runs_manager().votes(run_id)


# -- adapter analysis (numpy on the saved files; no model is loaded) -------------------------------------------

def _adapter_stamp(run_id: str) -> int:
    """Changes when the run's adapter file is written again (a cache key part)."""
    path = adapter_weights(service.runs_manager().dir(run_id).artifacts.adapter)
    return path.stat().st_mtime_ns if path.is_file() else 0


@st.cache_data(show_spinner="Reading the adapter…", max_entries=16)
def _adapter_report(root: str, run_id: str, stamp: int) -> adapters.AdapterReport:
    return adapters.inspect_run(service._manager(root), run_id)


def inspect_run(run_id: str) -> adapters.AdapterReport:
    """What a finished LoRA/QLoRA run's adapter learned, module by module (ModelError for other runs). The base
    model's weights are read too: its source is checked for this user first (data roots, hub allowlists)."""
    service._check_source(service.run_config(run_id).model.source)
    return _adapter_report(str(service.runs_dir()), run_id, _adapter_stamp(run_id))


def rank_advice(report: adapters.AdapterReport) -> adapters.Advice:
    return adapters.rank_advice(report)


@st.cache_data(show_spinner="Comparing the adapters…", max_entries=16)
def _similarity(root: str, first: str, second: str, basis: str, stamps: tuple) -> list:
    return adapters.similarity(_adapter_report(root, first, stamps[0]), _adapter_report(root, second, stamps[1]),
                               basis=basis)


def adapter_similarity(first: str, second: str, basis: str = "A") -> list:
    """Per common module, the LoRA paper's subspace similarity φ(i, j) between two runs' adapters."""
    for run_id in (first, second):
        service._check_source(service.run_config(run_id).model.source)
    return _similarity(str(service.runs_dir()), first, second, basis, (_adapter_stamp(first), _adapter_stamp(second)))
