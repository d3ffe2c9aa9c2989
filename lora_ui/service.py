"""The one door from the dashboard to the engine.

Pages and the rest of lora_ui call these functions and never lora_core (besides lora_core.config and
lora_core.errors). Three kinds of call:

- cached reads of things that only change with their inputs (a model's layers, parameter counts, estimates,
  data previews): `st.cache_data`, keyed by plain arguments; an engine error is raised, never cached;
- live reads of the run registry (statuses, metrics, results, logs), never cached;
- run actions (launch, sweep, recipe, stop, cancel, move, resume, delete, merge, push, export, upload; vote in
  insight.py): each first passes `_who_acts`, the one place that knows who is acting and checks their role
  (lora_core.team.access), then hands the actor to the engine, which checks again and writes the audit log;
  returns an `ActionResult` or raises the engine's `LoraLabError` (an `AccessError` when the role forbids it).

Who is acting (`identify`) is read from the browser session on every action: a signed-in OpenID Connect user
(st.user), a local account's session cookie, or, without sign-in, the local user (local mode) or "anonymous"
(open mode). On a shared server, every file or model a page is about to read for a user is first checked
against the data roots and allowlists (lora_core.team.policy), outside the caches, so a cached answer is never
handed to someone who may not read it; and no page ever imports a model's own code (auto_map).

The engine's run manager (`lora_core.runs.Runs`) is held here once per runs directory (`runs_manager()`).
lora_ui/insight.py is the door's second half (seed groups, votes, several adapters, the adapter inspector).
"""
from __future__ import annotations

import functools
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import streamlit as st

from lora_core import checks, data, diagnose, hub, inference, memory, models, qlora, recipes, uploads
from lora_core.config import ExperimentConfig
from lora_core.errors import LoraLabError, RunError
from lora_core.paths import dir_bytes, is_local_path
from lora_core.runs import Runs, RunStatus, default_runs_dir
from lora_core.team import access, identity, policy, serving, settings
from lora_core.team.access import AccessError, Actor, Role
from lora_core.team.accounts import SESSION_S, Accounts, manage
from lora_core.team.settings import LOCAL, OPEN, TEAM, TeamSettings

# what pages may name besides the functions below
__all__ = ["AccessError", "LoraLabError", "RunError", "RunStatus", "Role", "TeamSettings", "LOCAL", "OPEN", "TEAM",
           "SESSION_S"]


# -- the engine's run manager --------------------------------------------------------------------------------------

def runs_dir() -> Path:
    """$LORA_LAB_RUNS_DIR or ./runs, read on every call (tests point it elsewhere per test)."""
    return default_runs_dir()


@functools.lru_cache(maxsize=8)
def _manager(path: str) -> Runs:
    return Runs(path)


def _runs() -> Runs:
    return _manager(str(runs_dir()))


def runs_manager() -> Runs:
    return _runs()


def plan_sweep(cfg: ExperimentConfig, vary: dict[str, list], seeds: int = 1) -> list[ExperimentConfig]:
    """The configs a sweep would launch, validated, launching nothing (ConfigError names a bad field); the
    current user's paths are checked against the roots before any file is looked at."""
    actor = current_actor()
    if actor is None:
        raise AccessError("refused: sign in first")
    return _runs().plan_sweep(cfg, vary, seeds, actor=actor)


# -- who is acting ------------------------------------------------------------------------------------------------

SESSION_COOKIE = "lora_lab_session"
SIGN_IN_PATH, SIGN_OUT_PATH = "/lora-lab/sign-in", "/lora-lab/sign-out"
_TRUSTED_CODE = "auth_trusted_code"      # session state: models whose code this local user confirmed
_IDENTITY, _IDENTITY_S = "auth_identity", 3.0  # session state: who, re-read after this many seconds


def mode() -> str:
    """local, team or open (see lora_core.team.settings)."""
    return settings.mode()


def secrets() -> dict:
    try:
        return st.secrets.to_dict()
    except FileNotFoundError:  # no secrets file at all
        return {}


def sign_in_options() -> tuple[list, bool]:
    """(the identity providers st.login can use, whether local accounts can sign in here)."""
    setup = serving.SignInSetup.of(secrets())
    return setup.providers, setup.local_accounts and setup.cookie_secret


def _client() -> str | None:
    try:
        address = st.context.ip_address
    except Exception:  # noqa: BLE001 - no request behind this session
        return None
    return address if isinstance(address, str) else None  # AppTest hands out a mock


def identify(fresh: bool = False) -> identity.Identity:
    """Who uses this browser session (lora_core.team.identity). Read again every few seconds, and always with
    `fresh` (every action), so a removed account, an ended session or a changed role takes effect at once."""
    cached = st.session_state.get(_IDENTITY)
    if not fresh and cached and time.time() - cached[0] < _IDENTITY_S:
        return cached[1]
    user = st.user.to_dict()
    seen = f"auth_seen_{identity.provider_tag(user)}"  # a provider sign-in is audited once per session
    team = mode() == TEAM
    found = identity.identify(mode(), registry=_runs().registry, user=user, client=_client(),
                              cookie=st.context.cookies.get(SESSION_COOKIE) if team else None,
                              secret=serving.cookie_secret(secrets()) if team else "",
                              trusted_code=st.session_state.get(_TRUSTED_CODE, ()), record=seen not in st.session_state)
    st.session_state[seen] = True
    st.session_state[_IDENTITY] = (time.time(), found)
    return found


def listens_locally() -> bool:
    """Whether this server listens on a loopback address only (local mode needs it)."""
    return serving.is_loopback(st.get_option("server.address"))


def signed_in_with_provider() -> bool:
    return bool(st.user.get("is_logged_in"))


def current_actor() -> Actor | None:
    return identify().actor


def can(action: str, run=None) -> bool:
    """Whether the current user may do `action` (on `run`, a RunRecord): what pages show controls for."""
    actor = current_actor()
    return actor is not None and access.allowed(actor, action, run.owner if run is not None else None)


def _who_acts(action: str, run_id: str | None = None) -> Actor:
    """The one place every action passes before it touches the engine: the actor, read fresh from the session,
    whose role allows `action` (on the run `run_id`). A refusal is written to the audit log and raised as
    AccessError, so a request forged past the widgets meets the same check as a click."""
    actor = identify(fresh=True).actor
    if actor is None:
        raise AccessError("refused: sign in first")
    owner = _runs().get(run_id, reconcile=False, exact=True).owner if run_id else None  # a request: the whole id
    reason = access.denial(actor, action, owner)
    if reason:
        _runs().audit(actor, action, run_id, outcome="denied", detail={"reason": reason})
        raise AccessError(f"refused: {reason}")
    return actor


def confirm_remote_code(source: str) -> None:
    """Local mode: the user typed the model's id, confirming they trust the code it ships (for this session)."""
    st.session_state[_TRUSTED_CODE] = sorted({*st.session_state.get(_TRUSTED_CODE, ()), source})
    st.session_state.pop(_IDENTITY, None)


def remote_code_allowed(source: str) -> bool:
    """Whether a launch with model.trust_remote_code for `source` would be admitted for the current user."""
    actor = current_actor()
    if actor is None:
        return False
    try:
        policy.check_remote_code(ExperimentConfig.from_dict({"model": {"source": source, "trust_remote_code": True}}),
                                 actor, _runs().team_settings())
    except LoraLabError:
        return False
    return True


def _reader() -> Actor:
    """Who a page reads files or models for (any role may read; AccessError when nobody is signed in)."""
    actor = current_actor()
    if actor is None:
        raise AccessError("refused: sign in first")
    return actor


def _check_config(cfg: ExperimentConfig) -> ExperimentConfig:
    """What a page may read for this config: its paths inside the data roots and its hub ids allowed (shared
    server). Returns it with trust_remote_code off: pages never run a model's own code."""
    actor = _reader()
    policy.check_paths(cfg, actor, _runs().root)
    policy.check_hub_ids(cfg, actor, _runs().team_settings())
    return cfg.replace(**{"model.trust_remote_code": False}) if cfg.model.trust_remote_code else cfg


def _check_source(source: str, field: str = "model.source") -> None:
    policy.check_model_source(source, field, _reader(), _runs().root, _runs().team_settings())


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


def export_zip(run_id: str, merged: bool = False) -> bytes:
    """A run's saved weights (or its merged model) as a zip, for a download; written to the audit log."""
    actor = _who_acts("export", run_id)
    saved = saved_weights(run_id)
    folder = saved.merged if merged else saved.folder
    content = _zip(folder)
    _runs().audit(actor, "export", run_id, detail={"what": folder.name, "bytes": len(content)})
    return content


def _zip(path: Path) -> bytes:
    """The folder as a zip (paths inside start with the folder's name)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(path.rglob("*")):
            if p.is_file():
                zf.write(p, p.relative_to(path.parent))
    return buf.getvalue()


# -- cached reads: models, counts, estimates, data -----------------------------------------------------------------

def _key(cfg: ExperimentConfig) -> str:
    """A config as a cache key (st.cache_data hashes plain strings cheaply)."""
    return json.dumps(cfg.to_dict(), sort_keys=True)


@st.cache_data(show_spinner="Reading the model's layers…", max_entries=32)
def _model_layers(source: str, revision: str | None) -> list[dict]:
    return models.list_targets(source, trust_remote_code=False, revision=revision)


def model_layers(source: str, revision: str | None = None) -> list[dict]:
    """{name, leaf, type, in_features, out_features, params, head} for every adaptable layer. Never runs the
    model's own code: a model that ships some (auto_map) raises models.CustomCodeError, a ModelError."""
    _check_source(source)
    return _model_layers(source, revision)


@st.cache_data(show_spinner=False, max_entries=32)
def _target_presets(source: str, revision: str | None) -> dict[str, list[str]]:
    return models.target_presets(source, trust_remote_code=False, revision=revision)


def target_presets(source: str, revision: str | None = None) -> dict[str, list[str]]:
    _check_source(source)
    return _target_presets(source, revision)


def ships_code(exc: BaseException) -> bool:
    """Whether an error says the model ships its own code (which pages never run): a notice, not a bad field."""
    return isinstance(exc, models.CustomCodeError)


@st.cache_data(show_spinner=False, max_entries=32)
def _resolved_source(source: str) -> str:
    return str(models.resolve_source(source))


def resolved_source(source: str) -> str:
    """Where the model really is: a local folder for the bundled models, else the hub id or path as given."""
    _check_source(source)
    return _resolved_source(source)


@st.cache_data(show_spinner="Counting parameters…", max_entries=128)
def _count_params(cfg_key: str, num_labels: int) -> dict:
    return models.count_params(ExperimentConfig.from_dict(json.loads(cfg_key)), num_labels=num_labels)


def count_params(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    """{trainable, total, percent, adapter_bytes, by_module} for the config (ModelError for bad targets)."""
    return _count_params(_key(_check_config(cfg)), int(num_labels))


@st.cache_data(show_spinner=False, max_entries=128)
def _estimate_for_experiment(cfg_key: str, num_labels: int) -> dict:
    return memory.estimate_for_experiment(ExperimentConfig.from_dict(json.loads(cfg_key)), num_labels=num_labels)


def estimate_for_experiment(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    """The memory estimate a run of this config records (Estimate.to_dict())."""
    return _estimate_for_experiment(_key(_check_config(cfg)), int(num_labels))


@st.cache_data(show_spinner="Estimating memory…", max_entries=256)
def _estimate(model: str, method: str, batch_size: int, seq_len: int, knobs_key: str) -> dict:
    return memory.estimate(model=model, method=method, batch_size=batch_size, seq_len=seq_len,
                           **json.loads(knobs_key)).to_dict()


def estimate(model: str, method: str, batch_size: int, seq_len: int, knobs: dict) -> dict:
    """The Estimator page's estimate (EstimateError names a bad model or knob). A model path stays inside the
    data roots on a shared server, and the model's own code never runs here."""
    if is_local_path(str(model)):  # presets and parameter counts name no file
        _check_source(str(model), "model")
    knobs = {**knobs, "model.trust_remote_code": False}
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
    return _preview(_key(_check_config(cfg)), int(n))


@st.cache_data(show_spinner="Checking the config…", max_entries=64, ttl=60)
def _check(cfg_key: str) -> list[LoraLabError]:
    return checks.check(json.loads(cfg_key))


def check_config(cfg: ExperimentConfig | dict) -> list[LoraLabError]:
    """Every problem with the config, as the CLI finds them ([] when it can launch); each names its field. On a
    shared server its paths and hub ids are checked against the roots and allowlists first (a refusal is then the
    one problem, so the checks never say whether a file outside exists); the model's own code is never run."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    config, _ = ExperimentConfig.checked(data)
    if config is not None:
        try:
            data = _check_config(config).to_dict()
        except LoraLabError as exc:
            return [exc]
    return list(_check(json.dumps(data, sort_keys=True)))


def load_config_file(raw: bytes, fmt: str, source: str) -> ExperimentConfig:
    """A config file's bytes checked like `python -m lora_core train FILE`: the config, or ConfigProblems listing
    every problem (a parse error keeps the parser's lines). On a shared server the paths it names are checked
    against the roots before the checks look at them."""
    config, _ = ExperimentConfig.checked(checks.parse_bytes(raw, fmt, source))
    if config is not None:
        _check_config(config)
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
    _who_acts("load-model")
    _check_source(source)
    return qlora.load_quantized(source, quant_type=quant_type, double_quant=double_quant,
                                compute_dtype=compute_dtype, measure_before=measure_before)


def attach_lora(loaded: qlora.QuantizedLoad, r: int, alpha: float, dropout: float,
                target_modules: str) -> dict:
    """Add LoRA to a 4-bit model in place (its settings are checked like a config: errors name lora.r)."""
    return qlora.attach_lora(loaded, {"r": int(r), "alpha": float(alpha), "dropout": float(dropout),
                                      "target_modules": target_modules})


def compare_perplexity(source: str, texts: list[str], quant_type: str, double_quant: bool,
                       compute_dtype: str) -> dict:
    _who_acts("load-model")
    _check_source(source)
    return qlora.compare_perplexity(source, texts, quant_type=quant_type, double_quant=double_quant,
                                    compute_dtype=compute_dtype)


def default_prompts() -> list[str]:
    """The prompts a causal-LM run answers before and after training by default (held out of the sample)."""
    return list(ExperimentConfig().generate.prompts)


def diagnosis(records) -> diagnose.Diagnosis:
    """Why a comparison does (not) show "LoRA close to full, frozen backbone clearly worse", in sentences."""
    return diagnose.diagnose([diagnose.RunSummary.from_results(r.name, r.results or {}, r.lora_r) for r in records])


def recipe_list() -> list[recipes.Recipe]:
    """The tutorial's challenges as one-click recipes (title, lesson, what they launch)."""
    return list(recipes.RECIPES.values())


def load_run_models(run_id: str) -> inference.RunModels:
    """A finished run's tuned model beside its base, loaded once (keep it in session state). A run that trusts its
    model's own code loads only where a launch of it would be admitted (allowlisted or confirmed)."""
    actor = _who_acts("load-model")
    cfg = run_config(run_id)
    policy.check_remote_code(cfg, actor, _runs().team_settings())
    return inference.load_run(cfg, _runs().dir(run_id).artifacts)


# -- run actions ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ActionResult:
    """What a run action did, in one line for the user, and who did it."""
    action: str                    # launch, sweep, recipe, stop, cancel, move, resume, delete, merge, vote, push, ...
    actor: str                     # who acted (the actor's name)
    message: str
    run_id: str | None = None      # the run acted on
    new_runs: tuple[str, ...] = ()  # runs the action created
    detail: Any = None             # e.g. the sweep id, the merge report


def launch(cfg: ExperimentConfig) -> ActionResult:
    """Launch through the engine, whose one pre-launch check (data, model, memory; shared with the CLI) refuses
    what a worker would fail on with an error naming the field, file, column and row."""
    actor = _who_acts("launch")
    run_id = _runs().launch(cfg, actor=actor)  # the engine admits it for this actor (roots first), then checks it
    return ActionResult("launch", actor.name, f"Launched **{run_id}** — it trains in its own process; closing the "
                                              "tab does not stop it.", run_id, (run_id,))


def sweep(cfg: ExperimentConfig, vary: dict[str, list], seeds: int = 1) -> ActionResult:
    actor = _who_acts("sweep")
    sweep_id, run_ids = _runs().sweep(cfg, vary, seeds, actor=actor)
    return ActionResult("sweep", actor.name, f"Sweep **{sweep_id}**: {len(run_ids)} runs queued. They start by "
                                             "themselves as slots free up; see them below and on Compare.",
                        None, tuple(run_ids), sweep_id)


def launch_recipe(key: str, max_steps: int | None = None) -> ActionResult:
    """Launch one of the tutorial's recipes (a sweep, or one run); `max_steps` caps every run for a quick look."""
    recipe = recipes.get(key)
    actor = _who_acts("sweep" if recipe.vary else "launch")
    overrides = {"train.max_steps": int(max_steps)} if max_steps else None
    sweep_id, run_ids = recipes.launch(key, _runs(), overrides, actor=actor)
    quick = f", at most {max_steps} steps each" if max_steps else ""
    return ActionResult("recipe", actor.name, f"{recipe.title}: {len(run_ids)} run{'s' if len(run_ids) > 1 else ''} "
                                              f"launched{quick}" + (f" as sweep **{sweep_id}**." if sweep_id else "."),
                        None, tuple(run_ids), sweep_id)


def stop(run_id: str) -> ActionResult:
    """Ask for a graceful stop and return at once: the worker finishes the current step and saves the adapter
    and a checkpoint; past the timeout a later reconcile kills its process group."""
    actor = _who_acts("stop", run_id)
    _runs().stop(run_id, wait=False, actor=actor)
    return ActionResult("stop", actor.name, f"Stopping {run_id}: it finishes the current step and saves the "
                                            "adapter and a checkpoint.", run_id)


def cancel(run_id: str) -> ActionResult:
    actor = _who_acts("cancel", run_id)
    _runs().cancel(run_id, actor=actor)
    return ActionResult("cancel", actor.name, f"Cancelled {run_id}.", run_id)


def move(run_id: str, position: int) -> ActionResult:
    """Put a queued run at `position` (0 starts next)."""
    actor = _who_acts("move", run_id)
    _runs().move(run_id, position, actor=actor)
    return ActionResult("move", actor.name, f"Moved {run_id} to place {position + 1} in the queue.", run_id)


def resume(run_id: str) -> ActionResult:
    actor = _who_acts("resume", run_id)
    new_id = _runs().resume(run_id, actor=actor)
    return ActionResult("resume", actor.name, f"Resumed {run_id} as the new linked run {new_id}.", run_id, (new_id,))


def delete(run_id: str) -> ActionResult:
    actor = _who_acts("delete", run_id)
    _runs().delete(run_id, actor=actor)
    return ActionResult("delete", actor.name, f"Deleted {run_id}.", run_id)


def merge_run(run_id: str) -> ActionResult:
    """Merge a run's adapter into its base, replacing an earlier merge; the report says whether it verified."""
    actor = _who_acts("merge", run_id)
    policy.check_remote_code(run_config(run_id), actor, _runs().team_settings())  # merging loads the model here
    report = _runs().merge(run_id, overwrite=True, actor=actor)
    return ActionResult("merge", actor.name, f"Merged {run_id} into {report['out_dir']}.", run_id, (), report)


def model_card(run_id: str, merged: bool = False) -> str:
    """The model card a push of this run would upload."""
    what = "merged model" if merged else ("LoRA adapter" if run_config(run_id).uses_lora else "model")
    return hub.model_card(run_config(run_id), results(run_id) or {}, run_id, what)


def push_run(run_id: str, repo_id: str, private: bool = False, merged: bool = False) -> ActionResult:
    """Upload the run's adapter (or merged model) with its model card to the Hugging Face Hub."""
    actor = _who_acts("push", run_id)
    url = hub.push(_runs(), run_id, repo_id.strip(), private=private, merged=merged)
    _runs().audit(actor, "push", run_id, detail={"repo": repo_id.strip(), "url": url, "merged_model": merged})
    return ActionResult("push", actor.name, f"Pushed {run_id} to {url}.", run_id, (), url)


@st.cache_data(show_spinner=False, max_entries=16)
def _lr_find(cfg_key: str, steps: int) -> dict:
    from lora_core.lr_find import lr_find as find

    return find(ExperimentConfig.from_dict(json.loads(cfg_key)), steps=steps)


def lr_find(cfg: ExperimentConfig, steps: int = 60) -> dict:
    """The learning-rate range test of this config on its training rows (lora_core.lr_find): loss per rate and
    the suggested rate. Trains for `steps` optimizer steps in this process, so the page runs it on a click, and
    only for someone who may launch, on files they may read (never with the model's own code)."""
    _who_acts("launch")
    return _lr_find(_key(_check_config(cfg)), int(steps))


# -- uploads -------------------------------------------------------------------------------------------------------

def upload_dataset(name: str, content: bytes, cfg: ExperimentConfig) -> ActionResult:
    """Check an uploaded data file against the config's task and columns and keep it (DataError: nothing kept).
    `detail` is the stored file's path, a local data path inside the data roots."""
    actor = _who_acts("upload")
    stored = uploads.store(_runs().root, name, content, cfg, by=actor.name, max_bytes=settings.max_upload_bytes())
    _runs().audit(actor, "upload", detail={"name": stored.name, "file": stored.path.name, "bytes": stored.size})
    return ActionResult("upload", actor.name, f"Uploaded {stored.name} ({stored.size:,} bytes); it is the training "
                                              "data now.", None, (), str(stored.path))


def uploaded_datasets() -> list[uploads.Upload]:
    """Earlier uploads, newest first, for reuse."""
    return uploads.list_uploads(_runs().root)


def max_upload_bytes() -> int:
    return settings.max_upload_bytes()


# -- the team: audit log, users, settings (admins) --------------------------------------------------------------

def audit_log(limit: int = 1000, **filters: Any) -> list:
    _who_acts("audit")
    return _runs().audit_log(limit, **filters)


def users() -> list:
    _who_acts("users")
    return Accounts().list()


def change_user(op: str, name: str, role: str | None = None, password: str | None = None) -> ActionResult:
    """add (a local account with a password, or without one a person the identity provider signs in),
    set-role, set-password or remove; a new password or a removal ends the user's sessions."""
    actor = _who_acts("users")
    detail = manage(op, name, _runs().registry, role=role, password=password)
    _runs().audit(actor, "users", detail=detail)
    return ActionResult("users", actor.name, f"{op}: {detail['user']}"
                        + (f" ({detail['role']})" if "role" in detail else "") + ".")


def team_settings() -> TeamSettings:
    return _runs().team_settings()


def update_settings(changes: dict[str, Any]) -> ActionResult:
    actor = _who_acts("settings")
    _runs().update_settings(changes, actor=actor)
    return ActionResult("settings", actor.name, "Saved: " + ", ".join(sorted(changes)) + ".")


def data_roots() -> list[Path]:
    """The folders browser users may name files in on a shared server (besides uploads, runs and the model cache)."""
    return settings.data_roots()


# -- signing out of an identity provider (local accounts sign in and out in lora_ui.signin) ------------------

def sign_out_provider_user() -> None:
    """Audit a st.login user's sign-out (st.logout then ends their Streamlit session)."""
    actor = current_actor()
    if actor is not None:
        _runs().audit(actor, "sign-out")
