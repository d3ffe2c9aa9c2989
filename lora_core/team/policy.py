"""What a request from a browser may touch. One function per question:

- `check_paths`: on a shared server (team or open mode) every file or folder a browser user names (data files,
  model directories, outputs) must resolve, after `~`, `..` and every symbolic link, inside the data roots:
  LORA_LAB_DATA_ROOTS, the uploads folder, the runs directory, the model cache. Anything else is refused naming
  the field and never saying whether it exists; the server's own secrets are refused even inside a root.
- `check_hub_ids`: hub model and dataset ids must be on the admin's allowlists when those are set.
- `check_remote_code`: a model's own code runs (in the training worker, never while a page renders) only for a
  model an admin allowlisted (shared server) or the user confirmed by typing its id (local mode).
- `check_queue`, `check_sweep`: a dashboard user's queued runs and sweep sizes are capped.

The CLI on the server is trusted: none of this applies to it. The dashboard's service layer asks these questions
before it reads a file or a model for a page; the run manager asks them again before it creates runs for an actor.
"""
from __future__ import annotations

from pathlib import Path

from ..config import BUNDLED_MODELS, ConfigError, ExperimentConfig, get_dotted
from ..errors import RunError
from ..paths import DATA_SUFFIXES, inside, is_local_path
from ..runs import layout
from ..runs.store import Registry, RunStatus
from . import accounts, settings
from .access import Actor
from .settings import TeamSettings

DATA_FIELDS = ("data.train", "data.eval")


def roots(runs_root: Path) -> list[Path]:
    """The folders a browser user's paths must stay inside."""
    from ..models import cache_root  # here, not at the top: the runs package must import without models

    return [*settings.data_roots(), layout.uploads_dir(runs_root), Path(runs_root), cache_root()]


def _protected(runs_root: Path) -> list[Path]:
    """Files no browser user may name even inside a root: the registry and the accounts file."""
    registry = layout.registry_path(Path(runs_root))
    return [registry, Path(f"{registry}-wal"), Path(f"{registry}-shm"), accounts.users_file()]


def confine(value: str, field: str, runs_root: Path) -> None:
    """ConfigError naming `field` unless `value` resolves inside the roots (and is not a protected file)."""
    if inside(value, roots(runs_root)) and not any(inside(value, [p]) for p in _protected(runs_root)):
        return
    shared = ", ".join(str(p) for p in settings.data_roots())
    raise ConfigError(field, "this server reads and writes files only inside its data folders"
                             + (f" ({shared})" if shared else "") + " and its uploads, runs and model-cache folders; "
                             "upload the file on the Config builder's Data tab, or ask an admin to add its folder "
                             "to LORA_LAB_DATA_ROOTS")


def _is_data_path(value: str) -> bool:
    return not value.startswith("sample:") and is_local_path(value, DATA_SUFFIXES)


def _is_model_path(value: str) -> bool:
    return value not in BUNDLED_MODELS and is_local_path(value)


def check_paths(cfg: ExperimentConfig, actor: Actor, runs_root: Path) -> None:
    """Every local path the config names stays inside the roots (shared server only)."""
    if not actor.confined:
        return
    for field in DATA_FIELDS:
        value = get_dotted(cfg, field)
        if value and _is_data_path(value):
            confine(value, field, runs_root)
    if _is_model_path(cfg.model.source):
        confine(cfg.model.source, "model.source", runs_root)


def check_model_source(source: str, field: str, actor: Actor, runs_root: Path, team: TeamSettings) -> None:
    """A model named outside a config (the Estimator, the QLoRA loader): inside the roots, or an allowed hub id."""
    if not actor.confined or not source or source in BUNDLED_MODELS:
        return
    if is_local_path(source):
        confine(source, field, runs_root)
    elif team.hub_models and source not in team.hub_models:
        raise ConfigError(field, _not_listed(source, "hub models", team.hub_models))


def check_hub_ids(cfg: ExperimentConfig, actor: Actor, team: TeamSettings) -> None:
    """Hub model and dataset ids are on the admin's allowlists, when those are set (shared server only)."""
    if not actor.confined:
        return
    source = cfg.model.source
    if team.hub_models and not _is_model_path(source) and source not in BUNDLED_MODELS \
            and source not in team.hub_models:
        raise ConfigError("model.source", _not_listed(source, "hub models", team.hub_models))
    for field in DATA_FIELDS:
        value = get_dotted(cfg, field)
        if team.hub_datasets and value and not value.startswith("sample:") and not _is_data_path(value) \
                and value not in team.hub_datasets:
            raise ConfigError(field, _not_listed(value, "hub datasets", team.hub_datasets))


def _not_listed(value: str, kind: str, allowed: list[str]) -> str:
    return f"{value!r} is not one of this server's {kind} ({', '.join(allowed)}); ask an admin to add it"


def check_remote_code(cfg: ExperimentConfig, actor: Actor, team: TeamSettings) -> None:
    """model.trust_remote_code from a browser: allowlisted by an admin (shared server) or confirmed by the user
    in this session (local mode)."""
    if not cfg.model.trust_remote_code or actor.trusted:
        return
    source = cfg.model.source
    if actor.confined:
        if source not in team.trust_remote_code:
            raise ConfigError("model.trust_remote_code", f"this server runs a model's own code only for models an "
                                                         f"admin has allowlisted, and {source!r} is not one; ask an "
                                                         "admin (Team page, setting trust_remote_code)")
    elif source not in actor.trusted_code:
        raise ConfigError("model.trust_remote_code", f"confirm that you trust the code shipped with {source!r}: "
                                                     "type its id under 'Trust remote code' on the Config builder")


def check_config(cfg: ExperimentConfig, actor: Actor, runs_root: Path, team: TeamSettings) -> None:
    """Everything a config asks the server to read or run, for this actor."""
    check_paths(cfg, actor, runs_root)
    check_hub_ids(cfg, actor, team)
    check_remote_code(cfg, actor, team)


def check_queue(actor: Actor, registry: Registry, team: TeamSettings, adding: int) -> None:
    """A dashboard user may have at most `max_queued_per_user` runs queued or running."""
    if actor.trusted:
        return
    have = registry.count([RunStatus.QUEUED, RunStatus.RUNNING], owner=actor.name)
    if have + adding > team.max_queued_per_user:
        raise RunError(f"{actor.name} has {have} run(s) queued or running; adding {adding} would pass this "
                       f"server's limit of {team.max_queued_per_user} per user (setting max_queued_per_user): "
                       "wait for some to finish or cancel them")


def check_sweep(actor: Actor, runs: int, team: TeamSettings) -> None:
    if not actor.trusted and runs > team.max_sweep_runs:
        raise ConfigError("vary", f"this sweep has {runs} runs; a sweep from the dashboard may have at most "
                                  f"{team.max_sweep_runs} (setting max_sweep_runs)")
