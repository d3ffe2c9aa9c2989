"""The one door from the dashboard to the engine.

Pages and the rest of lora_ui call these functions and never lora_core (besides lora_core.config and
lora_core.errors). Three kinds of call:

- cached reads of things that only change with their inputs (a model's layers, parameter counts, estimates,
  data previews): `st.cache_data`, keyed by plain arguments; an engine error is raised, never cached;
- live reads of the run registry (statuses, metrics, results, logs), never cached;
- run actions (launch, sweep, recipe, stop, cancel, move, resume, delete, merge, push): each first passes `_who_acts`, the one
  place that knows who is acting (and where role checks go), then returns an `ActionResult` or raises the
  engine's `LoraLabError`.

The engine's run manager (`lora_core.runs.Runs`) is held here once per runs directory (`_runs()`).
"""
from __future__ import annotations

import functools
import io
import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from lora_core import checks, data, diagnose, hub, inference, memory, merge, models, qlora, recipes
from lora_core.config import ExperimentConfig
from lora_core.errors import ConfigProblems, LoraLabError, RunError
from lora_core.paths import dir_bytes
from lora_core.runs import Runs, RunStatus, default_runs_dir, ray_jobs

__all__ = ["LoraLabError", "RunError", "RunStatus"]  # what pages may name besides the functions below


# -- the engine's run manager --------------------------------------------------------------------------------------

def runs_dir() -> Path:
    """$LORA_LAB_RUNS_DIR or ./runs, read on every call (tests point it elsewhere per test)."""
    return default_runs_dir()


@functools.lru_cache(maxsize=8)
def _manager(path: str) -> Runs:
    return Runs(path)


def _runs() -> Runs:
    return _manager(str(runs_dir()))


def plan_sweep(cfg: ExperimentConfig, vary: dict[str, list]) -> list[ExperimentConfig]:
    """The configs a sweep would launch, validated, launching nothing (ConfigError names a bad field)."""
    return _runs().plan_sweep(cfg, vary)


# -- live reads of the registry ----------------------------------------------------------------------------------

def list_runs(status: str | list[str] | None = None, **filters: Any) -> list:
    """Runs, newest first, after one reconcile (a dead worker never shows as RUNNING; queued runs start)."""
    return _runs().list(status=status, **filters)


def live_runs() -> tuple[list, list]:
    """(RUNNING runs, QUEUED runs in the order they start), after one reconcile."""
    manager = _runs()
    return manager.list(status=RunStatus.RUNNING), manager.queue()


def has_live_runs() -> bool:
    """True while any run is queued or running (after reconciling dead workers): pages refresh only then."""
    running, queued = live_runs()
    return bool(running or queued)


def registry_notices() -> list[str]:
    """One line for each repair or failure of the run registry seen by this dashboard (a rebuild, a full disk)."""
    return _runs().notices()


def get_run(run_id: str):
    """A run's record (RunError for an unknown id)."""
    return _runs().get(run_id, reconcile=False)


def find_run(run_id: str):
    """A run's record, or None when there is no such run (deleted meanwhile)."""
    try:
        return get_run(run_id)
    except RunError:
        return None


def metrics(run_id: str) -> list[dict]:
    return _runs().metrics(run_id)


def results(run_id: str) -> dict | None:
    return _runs().results(run_id)


def run_config(run_id: str) -> ExperimentConfig:
    return _runs().config(run_id)


def log_tail(run_id: str, n: int = 50) -> str:
    return _runs().log_tail(run_id, n)


def resume_blocker(run_id: str) -> str | None:
    """Why Resume cannot work for this run (None when it has a complete checkpoint to continue from: its own, or
    the one it was resumed from)."""
    if _runs().resume_point(run_id) is not None:
        return None
    return ("Nothing to resume from: this run ended before its first complete checkpoint (one is saved every "
            "train.save_steps steps, or at each evaluation). Launch its config again instead.")


def artifact_files(run_id: str) -> tuple[Path, list[tuple[str, int]]]:
    """(the run's artifacts folder, [(path inside it, bytes)] for every file in it)."""
    root = _runs().dir(run_id).artifacts.path
    files = sorted(p for p in root.rglob("*") if p.is_file()) if root.is_dir() else []
    return root, [(str(p.relative_to(root)), p.stat().st_size) for p in files]


@dataclass(frozen=True)
class SavedWeights:
    """What a finished run saved, for Merge & export."""
    kind: str          # the engine's name for it (the folder's name)
    folder: Path
    mergeable: bool    # a LoRA/QLoRA adapter, which merges into its base
    merged: Path       # where the merged model goes (exists only after a merge)


def saved_weights(run_id: str) -> SavedWeights:
    """The run's saved weights (ModelError when it saved none yet) and where its merged model goes."""
    cfg = run_config(run_id)
    artifacts = _runs().dir(run_id).artifacts
    folder = inference.saved_weights(cfg, artifacts)
    return SavedWeights(folder.name, folder, cfg.uses_lora, artifacts.merged)


def folder_bytes(path: Path) -> int:
    return dir_bytes(path)


def zip_folder(path: Path) -> bytes:
    """The folder as a zip (paths inside start with the folder's name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(path.parent))
    return buf.getvalue()


# -- clusters (the Ray backend) ------------------------------------------------------------------------------------

def ray_installed() -> bool:
    """Whether the Ray backend can be used from here (requirements-cluster.txt is installed)."""
    try:
        ray_jobs.require_ray()
    except LoraLabError:
        return False
    return True


def ray_missing_message() -> str:
    return ray_jobs.RAY_MISSING


def default_ray_address() -> str:
    """$LORA_LAB_RAY_ADDRESS, the address a ray run uses when its config gives none ("" when unset)."""
    return os.environ.get(ray_jobs.ADDRESS_ENV, "")


def cluster_status(address: str | None = None) -> dict:
    """A Ray cluster's nodes (CPUs/GPUs total and in use) and our queued and running runs on it (live, never
    cached; RunError when it cannot be reached, ConfigError without an address or without Ray)."""
    return _runs().cluster(address or None)


# -- cached reads: models, counts, estimates, data -----------------------------------------------------------------

def _key(cfg: ExperimentConfig) -> str:
    """A config as a cache key (st.cache_data hashes plain strings cheaply)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


@st.cache_data(show_spinner="Reading the model's layers…", max_entries=32)
def model_layers(source: str, trust_remote_code: bool = False, revision: str | None = None) -> list[dict]:
    """{name, leaf, type, in_features, out_features, params, head} for every adaptable layer."""
    return models.list_targets(source, trust_remote_code=trust_remote_code, revision=revision)


@st.cache_data(show_spinner=False, max_entries=32)
def target_presets(source: str, trust_remote_code: bool = False, revision: str | None = None) -> dict[str, list[str]]:
    return models.target_presets(source, trust_remote_code=trust_remote_code, revision=revision)


@st.cache_data(show_spinner=False, max_entries=32)
def resolved_source(source: str) -> str:
    """Where the model really is: a local folder for the bundled models, else the hub id or path as given."""
    return str(models.resolve_source(source))


@st.cache_data(show_spinner="Counting parameters…", max_entries=128)
def _count_params(cfg_key: str, num_labels: int) -> dict:
    return models.count_params(ExperimentConfig.from_dict(json.loads(cfg_key)), num_labels=num_labels)


def count_params(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    """{trainable, total, percent, adapter_bytes, by_module} for the config (ModelError for bad targets)."""
    return _count_params(_key(cfg), int(num_labels))


@st.cache_data(show_spinner=False, max_entries=128)
def _estimate_for_experiment(cfg_key: str, num_labels: int) -> dict:
    return memory.estimate_for_experiment(ExperimentConfig.from_dict(json.loads(cfg_key)), num_labels=num_labels)


def estimate_for_experiment(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    """The memory estimate a run of this config records (Estimate.to_dict())."""
    return _estimate_for_experiment(_key(cfg), int(num_labels))


@st.cache_data(show_spinner="Estimating memory…", max_entries=256)
def _estimate(model: str, method: str, batch_size: int, seq_len: int, knobs_key: str) -> dict:
    return memory.estimate(model=model, method=method, batch_size=batch_size, seq_len=seq_len,
                           **json.loads(knobs_key)).to_dict()


def estimate(model: str, method: str, batch_size: int, seq_len: int, knobs: dict) -> dict:
    """The Estimator page's estimate (EstimateError names a bad model or knob)."""
    return _estimate(model, method, int(batch_size), int(seq_len), json.dumps(knobs, sort_keys=True))


@st.cache_data(show_spinner=False)
def model_presets() -> list[str]:
    return list(memory.MODEL_PRESETS)


@st.cache_data(show_spinner=False, max_entries=256)
def lora_param_table(d_in: int, d_out: int, ranks: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)) -> list[dict]:
    """LoRA on one d_in × d_out layer, per rank: {rank, lora_params, full_params, percent_of_full, reduction}."""
    return memory.lora_param_table(int(d_in), int(d_out), ranks=tuple(ranks))


def lora_params(d_in: int, d_out: int, r: int) -> int:
    """The parameters LoRA of rank r trains on one d_in × d_out layer."""
    return lora_param_table(d_in, d_out, (int(r),))[0]["lora_params"]


@st.cache_data(show_spinner="Reading the data…", max_entries=64, ttl=60)
def _preview(cfg_key: str, n: int):
    cfg = ExperimentConfig.from_dict(json.loads(cfg_key))
    where = {"subset": cfg.data.subset, "split": cfg.data.train_split}
    if cfg.task == "seq-cls":
        frame = data.preview(cfg.data.train, n=n, text_column=cfg.data.text_column,
                             label_column=cfg.data.label_column, **where)
        return frame, data.label_counts(cfg.data.train, cfg.data.label_column, **where)
    frame = data.preview(cfg.data.train, n=n, prompt_column=cfg.data.prompt_column,
                         response_column=cfg.data.response_column, **where)
    return frame, None


def data_preview(cfg: ExperimentConfig, n: int = 5):
    """(first rows as a DataFrame, rows per label or None) of the config's training data (DataError if bad)."""
    return _preview(_key(cfg), int(n))


@st.cache_data(show_spinner="Checking the config…", max_entries=64, ttl=60)
def _check(cfg_key: str) -> list[LoraLabError]:
    return checks.check(json.loads(cfg_key))


def check_config(cfg: ExperimentConfig | dict) -> list[LoraLabError]:
    """Every problem with the config, as the CLI finds them ([] when it can launch); each names its field."""
    return list(_check(json.dumps(cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg, sort_keys=True)))


def load_config_file(raw: bytes, fmt: str, source: str) -> ExperimentConfig:
    """A config file's bytes checked like `python -m lora_core train FILE`: the config, or ConfigProblems listing
    every problem (a parse error keeps the parser's lines)."""
    return checks.load_bytes(raw, fmt, source)


def field_of(exc: BaseException, default: str = "") -> str:
    """The config field an engine error is about (for placing it under its widget)."""
    return checks.field_of(exc, default)


def num_labels(cfg: ExperimentConfig) -> int:
    """The class count a seq-cls run of this config trains (from its data; at least 2)."""
    counts = data_preview(cfg)[1] if cfg.task == "seq-cls" else None
    return max(2, len(counts)) if counts else 2


# -- models loaded in this process (QLoRA loader, Playground) --------------------------------------------------------

def load_quantized(source: str, quant_type: str, double_quant: bool, compute_dtype: str,
                   measure_before: bool) -> qlora.QuantizedLoad:
    return qlora.load_quantized(source, quant_type=quant_type, double_quant=double_quant,
                                compute_dtype=compute_dtype, measure_before=measure_before)


def attach_lora(loaded: qlora.QuantizedLoad, r: int, alpha: float, dropout: float,
                target_modules: str) -> dict:
    """Add LoRA to a 4-bit model in place (its settings are checked like a config: errors name lora.r)."""
    return qlora.attach_lora(loaded, {"r": int(r), "alpha": float(alpha), "dropout": float(dropout),
                                      "target_modules": target_modules})


def compare_perplexity(source: str, texts: list[str], quant_type: str, double_quant: bool,
                       compute_dtype: str) -> dict:
    return qlora.compare_perplexity(source, texts, quant_type=quant_type, double_quant=double_quant,
                                    compute_dtype=compute_dtype)


def default_prompts() -> list[str]:
    """The prompts a causal-LM run answers before and after training by default (held out of the sample)."""
    return list(ExperimentConfig().generate.prompts)


def generation_change(generations: list[dict]) -> dict:
    """What changed between a run's before / after answers: {prompts, before, after, summary}."""
    return recipes.format_change(generations)


def diagnosis(records) -> diagnose.Diagnosis:
    """Why a comparison does (not) show "LoRA close to full, frozen backbone clearly worse", in sentences."""
    return diagnose.diagnose([diagnose.RunSummary.from_results(r.name, r.results or {}, r.lora_r) for r in records])


def recipe_list() -> list[recipes.Recipe]:
    """The tutorial's challenges as one-click recipes (title, lesson, what they launch)."""
    return list(recipes.RECIPES.values())


def load_run_models(run_id: str) -> inference.RunModels:
    """A finished run's tuned model beside its base, loaded once (keep it in session state)."""
    return inference.load_run(run_config(run_id), _runs().dir(run_id).artifacts)


# -- run actions ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActionResult:
    """What a run action did, in one line for the user, and who did it."""
    action: str                    # launch, sweep, recipe, stop, cancel, move, resume, delete, merge
    actor: str                     # who acted (see acting_user)
    message: str
    run_id: str | None = None      # the run acted on
    new_runs: tuple[str, ...] = ()  # runs the action created
    detail: Any = None             # e.g. the sweep id, the merge report


def acting_user() -> str:
    """Who is acting: the signed-in user (st.login) when there is one, else "local" (a single-user dashboard)."""
    user = st.user
    if user.get("is_logged_in"):
        return str(user.get("email") or user.get("name") or "signed-in user")
    return "local"


def _who_acts(action: str, run_id: str | None = None) -> str:
    """The one place every action passes before it touches the engine; returns the actor. Role checks (viewer /
    operator / admin) belong here, so a request forged past the widgets meets the same check as a click."""
    return acting_user()


def launch(cfg: ExperimentConfig) -> ActionResult:
    """Launch through the engine, whose one pre-launch check (data, model, memory; shared with the CLI) refuses
    what a worker would fail on with an error naming the field, file, column and row."""
    actor = _who_acts("launch")
    run_id = _runs().launch(cfg)
    return ActionResult("launch", actor, f"Launched **{run_id}** — it trains in its own process; closing the tab "
                                         "does not stop it.", run_id, (run_id,))


def sweep(cfg: ExperimentConfig, vary: dict[str, list]) -> ActionResult:
    actor = _who_acts("sweep")
    sweep_id, run_ids = _runs().sweep(cfg, vary)
    return ActionResult("sweep", actor, f"Sweep **{sweep_id}**: {len(run_ids)} runs queued. They start by "
                                        "themselves as slots free up; see them below and on Compare.",
                        None, tuple(run_ids), sweep_id)


def launch_recipe(key: str, max_steps: int | None = None) -> ActionResult:
    """Launch one of the tutorial's recipes (a sweep, or one run); `max_steps` caps every run for a quick look."""
    actor = _who_acts("recipe")
    recipe = recipes.get(key)
    overrides = {"train.max_steps": int(max_steps)} if max_steps else None
    sweep_id, run_ids = recipes.launch(key, _runs(), overrides)
    quick = f", at most {max_steps} steps each" if max_steps else ""
    return ActionResult("recipe", actor, f"{recipe.title}: {len(run_ids)} run{'s' if len(run_ids) > 1 else ''} "
                                         f"launched{quick}" + (f" as sweep **{sweep_id}**." if sweep_id else "."),
                        None, tuple(run_ids), sweep_id)


def stop(run_id: str) -> ActionResult:
    """Ask for a graceful stop and return at once: the worker finishes the current step and saves the adapter
    and a checkpoint; past the timeout a later reconcile kills its process group."""
    actor = _who_acts("stop", run_id)
    _runs().stop(run_id, wait=False)
    return ActionResult("stop", actor, f"Stopping {run_id}: it finishes the current step and saves the adapter "
                                       "and a checkpoint.", run_id)


def cancel(run_id: str) -> ActionResult:
    actor = _who_acts("cancel", run_id)
    _runs().cancel(run_id)
    return ActionResult("cancel", actor, f"Cancelled {run_id}.", run_id)


def move(run_id: str, position: int) -> ActionResult:
    """Put a queued run at `position` (0 starts next)."""
    actor = _who_acts("move", run_id)
    _runs().move(run_id, position)
    return ActionResult("move", actor, f"Moved {run_id} to place {position + 1} in the queue.", run_id)


def resume(run_id: str) -> ActionResult:
    actor = _who_acts("resume", run_id)
    new_id = _runs().resume(run_id)
    return ActionResult("resume", actor, f"Resumed {run_id} as the new linked run {new_id}.", run_id, (new_id,))


def delete(run_id: str) -> ActionResult:
    actor = _who_acts("delete", run_id)
    _runs().delete(run_id)
    return ActionResult("delete", actor, f"Deleted {run_id}.", run_id)


def merge_run(run_id: str) -> ActionResult:
    """Merge a run's adapter into its base, replacing an earlier merge; the report says whether it verified."""
    actor = _who_acts("merge", run_id)
    saved = saved_weights(run_id)
    report = merge.merge_adapter(run_config(run_id), saved.folder, saved.merged, overwrite=True)
    return ActionResult("merge", actor, f"Merged {run_id} into {saved.merged}.", run_id, (), report)


def model_card(run_id: str, merged: bool = False) -> str:
    """The model card a push of this run would upload."""
    what = "merged model" if merged else ("LoRA adapter" if run_config(run_id).uses_lora else "model")
    return hub.model_card(run_config(run_id), results(run_id) or {}, run_id, what)


def push_run(run_id: str, repo_id: str, private: bool = False, merged: bool = False) -> ActionResult:
    """Upload the run's adapter (or merged model) with its model card to the Hugging Face Hub."""
    actor = _who_acts("push", run_id)
    url = hub.push(_runs(), run_id, repo_id.strip(), private=private, merged=merged)
    return ActionResult("push", actor, f"Pushed {run_id} to {url}.", run_id, (), url)


@st.cache_data(show_spinner=False, max_entries=16)
def _lr_find(cfg_key: str, steps: int) -> dict:
    from lora_core.lr_find import lr_find as find

    return find(ExperimentConfig.from_dict(json.loads(cfg_key)), steps=steps)


def lr_find(cfg: ExperimentConfig, steps: int = 60) -> dict:
    """The learning-rate range test of this config on its training rows (lora_core.lr_find): loss per rate and
    the suggested rate. Trains for `steps` optimizer steps, so the page runs it on a click."""
    return _lr_find(_key(cfg), int(steps))
