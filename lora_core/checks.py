"""Every problem with an experiment config, found at once, before anything launches. The CLI (`train`, `sweep`,
`params`) and the dashboard (the Config builder, an uploaded file, Launch) call the same functions, so a file
fails in the same place with the same messages wherever it is used.

    problems = check(data)                 # [] when it can launch; else every problem, each naming its field
    cfg = validated(data)                  # the config, or ConfigProblems listing every problem
    cfg = load_file("exp.yaml")            # the same for a file (YAML / JSON parse errors keep their lines)

Four layers, each looked at only when the one before it found nothing (a later layer needs a readable config):
the text (YAML or JSON), every field (types, ranges, unknown keys, cross-field rules: ExperimentConfig.problems),
local paths (data files, model folders), then what the model and the data say (target names the model has,
columns and labels the data has). The last layer loads the model's structure and reads the data; `deep=False`
skips it.
"""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

from .config import (BUNDLED_MODELS, ExperimentConfig, excerpt, get_dotted, parse_bytes, parse_file, parse_text,
                     set_dotted)
from .errors import ConfigError, ConfigProblems, LoraLabError
from .paths import DATA_SUFFIXES, is_local_path
from .runs.launcher import visible_gpus
from .runs.layout import MODEL_CONFIG
from .runs.store import LOCAL

# what the model and data layers read: a problem already found in one of these skips that layer
MODEL_FIELDS = {"task", "method", "model.source", "model.revision", "model.trust_remote_code", "lora.target_modules",
                "lora.modules_to_save"}
DATA_FIELDS = {"task", "data.train", "data.eval", "data.subset", "data.train_split", "data.eval_split",
               "data.text_column", "data.label_column", "data.prompt_column", "data.response_column"}
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?", re.ASCII)
_FIELD_PREFIX = re.compile(r"^([a-z_]+(?:\.[a-z_]+)+): ")   # "lora.target_modules: ..." in a ModelError
_FIELD_MENTION = re.compile(r"\((data\.[a-z_]+)\)")        # "no column 'x' (data.text_column)" in a DataError


def check(cfg: ExperimentConfig | dict | None, *, deep: bool = True) -> list[LoraLabError]:
    """Every problem with the config; [] when it is ready to launch. A later layer skips only what an earlier
    one found wrong: a bad rank does not hide a target name the model lacks."""
    data = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    config, found = ExperimentConfig.checked(data)
    if config is None:
        return list(found)
    bad = {e.field for e in found}
    _, path_found = local_paths(config, skip=bad)
    found = [*found, *path_found, *machine_problems(config, skip=bad)]
    if not deep:
        return found
    bad |= {e.field for e in path_found}
    if not bad & MODEL_FIELDS:
        found += model_problems(config)
    if not bad & DATA_FIELDS:
        found += data_problems(config)
    return found


def validated(cfg: ExperimentConfig | dict | None, *, deep: bool = True, source: str = "") -> ExperimentConfig:
    """The config when `check` finds nothing; ConfigProblems listing every problem otherwise."""
    found = check(cfg, deep=deep)
    if found:
        raise ConfigProblems(found, source)
    return cfg if isinstance(cfg, ExperimentConfig) else ExperimentConfig.from_dict(cfg)


def load_text(text: str, fmt: str = "yaml", source: str = "config", *, deep: bool = True) -> ExperimentConfig:
    """A config's text read by the one strict parser (config.parse_text), then every problem at once."""
    return validated(parse_text(text, fmt, source), deep=deep, source=source)


def load_bytes(raw: bytes, fmt: str = "yaml", source: str = "config", *, deep: bool = True) -> ExperimentConfig:
    """The same for a file's bytes (an upload): size and UTF-8 checked first."""
    return validated(parse_bytes(raw, fmt, source), deep=deep, source=source)


def load_file(path: str | Path, *, deep: bool = True) -> ExperimentConfig:
    return validated(parse_file(path), deep=deep, source=str(path))


def field_of(exc: BaseException, default: str = "") -> str:
    """The config field an error is about: its `field`, else the field its message starts with or names."""
    if getattr(exc, "field", ""):
        return exc.field
    text = str(exc)
    found = _FIELD_PREFIX.match(text) or _FIELD_MENTION.search(text)
    return found.group(1) if found else default


# -- the layers ----------------------------------------------------------------------------------------------

def local_paths(cfg: ExperimentConfig, skip: set[str] = frozenset()) -> tuple[dict[str, str], list[LoraLabError]]:
    """({field: absolute path} for the local data files and model folder the config names, [problems]), so a
    worker started from any directory reads the same files; hub ids must be well-formed. Links are kept as given
    (not resolved): a link's name carries the file's suffix. Fields in `skip` are not looked at."""
    changes: dict[str, str] = {}
    found: list[LoraLabError] = []
    for field in ("data.train", "data.eval"):
        value = get_dotted(cfg, field) if field not in skip else None
        if not value or value.startswith("sample:"):
            continue
        try:
            if is_local_path(value, DATA_SUFFIXES):
                path = _absolute(field, value)
                if not _is(path, "file"):
                    what = "a folder, not a data file" if _is(path, "dir") else "file not found"
                    raise ConfigError(field, f"{what}: {excerpt(str(path), 300)} (give an existing csv/tsv/json/"
                                             "jsonl/parquet file, a bundled sample:..., or a hub dataset id)")
                changes[field] = str(path)
            else:
                _check_hub_id(field, value)
        except ConfigError as exc:
            found.append(exc)
    source = cfg.model.source
    if "model.source" in skip or source in BUNDLED_MODELS:
        return changes, found
    try:
        if is_local_path(source):
            path = _absolute("model.source", source)
            if not _is(path, "dir") or not _is(path / MODEL_CONFIG, "file"):
                raise ConfigError("model.source", f"{excerpt(str(path), 300)} is not a model directory (it needs "
                                                  f"a {MODEL_CONFIG}); use a bundled model "
                                                  f"({', '.join(BUNDLED_MODELS)}), a hub id or a saved model "
                                                  "directory")
            changes["model.source"] = str(path)
        else:
            _check_hub_id("model.source", source)
    except ConfigError as exc:
        found.append(exc)
    return changes, found


def _absolute(field: str, value: str) -> Path:
    path = Path(os.path.abspath(Path(value).expanduser()))
    if len(str(path).encode("utf-8", "replace")) > 4000:
        raise ConfigError(field, f"the path is too long once made absolute ({excerpt(str(path), 60)})")
    return path


def _is(path: Path, kind: str) -> bool:
    try:
        return path.is_file() if kind == "file" else path.is_dir()
    except (OSError, ValueError):  # a name the filesystem refuses is no file
        return False


def _check_hub_id(field: str, value: str) -> None:
    if not HUB_ID.fullmatch(value) or "--" in value or ".." in value:
        raise ConfigError(field, f"{excerpt(value, 60)} is neither an existing local path nor a hub id ('name' or "
                                 "'org/name': letters, digits, '-', '_', '.', at most 96 characters each)")


def with_local_paths(cfg: ExperimentConfig) -> ExperimentConfig:
    """The config with its local paths checked and made absolute, and its local resources checked against this
    machine (ConfigProblems when one is wrong)."""
    changes, found = local_paths(cfg)
    found += machine_problems(cfg)
    if found:
        raise found[0] if len(found) == 1 else ConfigProblems(found)
    if not changes:
        return cfg
    data = cfg.to_dict()
    for field, value in changes.items():
        set_dotted(data, field, value)
    return ExperimentConfig.from_dict(data)


def machine_problems(cfg: ExperimentConfig, skip: set[str] = frozenset()) -> list[LoraLabError]:
    """What this machine cannot give a local run: GPUs it does not have, more GPU workers than GPUs. A Ray run's
    resources are the cluster's to judge."""
    res = cfg.resources
    if res.backend != LOCAL or skip & {"resources.backend", "resources.num_workers", "resources.gpus_per_worker"}:
        return []
    gpus = visible_gpus()
    if res.gpus_per_worker and not gpus:
        return [ConfigError("resources.gpus_per_worker", "this machine shows no GPU (CUDA_VISIBLE_DEVICES, "
                                                         "/dev/nvidia*); set 0 to train on CPU, or use backend ray")]
    if gpus and res.num_workers > len(gpus):
        return [ConfigError("resources.num_workers", f"{res.num_workers} workers need one GPU each and this machine "
                                                     f"shows {len(gpus)} ({', '.join(gpus)}); lower it, or use "
                                                     "backend ray")]
    return []


def model_problems(cfg: ExperimentConfig) -> list[LoraLabError]:
    """The model can be described and has every target layer named. A bundled model with a preset cannot fail
    this, so it is skipped: the default config needs no torch in the checking process."""
    from . import models

    if cfg.model.source in BUNDLED_MODELS and not isinstance(cfg.lora.target_modules, list):
        return []
    try:
        models.count_params(cfg)  # describes the model, then resolves the targets against its layers
    except LoraLabError as exc:
        return [_on_field(exc, "lora.target_modules" if "target_modules" in str(exc) else "model.source")]
    return []


def data_problems(cfg: ExperimentConfig) -> list[LoraLabError]:
    """The training (and eval) data can be read and has the config's columns, with a label in every row."""
    from . import data

    found: list[LoraLabError] = []
    for field, spec, split in (("data.train", cfg.data.train, cfg.data.train_split),
                               ("data.eval", cfg.data.eval, cfg.data.eval_split or cfg.data.train_split)):
        if not spec:
            continue
        where = {"subset": cfg.data.subset, "split": split}
        try:
            if cfg.task == "seq-cls":
                data.preview(spec, n=1, text_column=cfg.data.text_column, label_column=cfg.data.label_column,
                             **where)
                data.label_counts(spec, cfg.data.label_column, **where)
            else:
                data.preview(spec, n=1, prompt_column=cfg.data.prompt_column,
                             response_column=cfg.data.response_column, **where)
        except LoraLabError as exc:
            found.append(_on_field(exc, field))
    return found


def _on_field(exc: LoraLabError, default: str) -> LoraLabError:
    """The error with its field set (engine messages often start with the field's name instead)."""
    field = field_of(exc, default)
    if exc.field == field:
        return exc
    message = str(exc)
    if message.startswith(field + ": "):
        message = message[len(field) + 2:]
    out = copy.copy(exc)
    out.field, out.message, out.args = field, message, (f"{field}: {message}",)
    return out
