"""Pushing a finished run to the Hugging Face Hub: its adapter (or merged model, or saved weights) with a model
card generated from the run.

    url = push(Runs(), run_id, "user/my-adapter", private=True)        # HubError with the reason when it fails
    text = model_card(cfg, results, run_id)

The card says what the run was (base model, method, rank and targets, data and its fingerprint), what it
measured (final metrics, train time) and its memory (the estimate beside the measured peak). Offline
($HF_HUB_OFFLINE) or with the Hub unreachable, push fails with one clear HubError before anything is uploaded.
"""
from __future__ import annotations

import os
from pathlib import Path

from .config import ExperimentConfig, env_flag
from .errors import HubError
from .runs import Runs
from .runs.layout import MODEL_CARD

GB = 1024 ** 3
METRIC_KEYS = ("accuracy", "macro_f1", "eval_loss", "eval_perplexity", "train_loss", "train_time_s", "steps")


def _gb(value) -> str:
    return f"{value / GB:.2f} GB" if isinstance(value, (int, float)) and value else "—"


def model_card(cfg: ExperimentConfig, results: dict, run_id: str, what: str = "LoRA adapter") -> str:
    """The README.md of the pushed repository: YAML metadata, then what the run was and what it measured."""
    base = cfg.model.source
    lora = (f"rank r={cfg.lora.r}, alpha {cfg.lora.alpha:g}, dropout {cfg.lora.dropout:g}, targets "
            f"{cfg.lora.target_modules or 'the preset for the architecture'}") if cfg.uses_lora else "—"
    if cfg.method == "qlora":
        lora += f"; base in 4-bit {cfg.quant.quant_type} (double quant {cfg.quant.double_quant})"
    metrics = "\n".join(f"| {k} | {results[k]:.4g} |" for k in METRIC_KEYS if isinstance(results.get(k), (int, float)))
    estimate = results.get("memory_estimate") or {}
    tags = ["lora-lab", cfg.method, cfg.task] + (["peft", "lora"] if cfg.uses_lora else [])
    library = "peft" if cfg.uses_lora and what == "LoRA adapter" else "transformers"
    front = ["---", f"library_name: {library}",
             "tags:"] + [f"- {t}" for t in tags]
    if "/" in base and not Path(base).exists():  # a hub id; bundled and local models have no Hub page
        front.append(f"base_model: {base}")
    return "\n".join(front + ["---", "", f"# {cfg.name}", "",
        f"Fine-tuned with LoRA Lab (run `{run_id}`): the {what} of a **{cfg.method}** run on `{base}` "
        f"for **{cfg.task}**.", "",
        "| | |", "|---|---|",
        f"| Base model | `{base}`{f' @ {cfg.model.revision}' if cfg.model.revision else ''} |",
        f"| Method | {cfg.method} |", f"| LoRA | {lora} |",
        f"| Data | `{cfg.data.train}` ({results.get('train_rows', '?')} train rows, {results.get('eval_rows', '?')} "
        f"eval rows) |",
        f"| Data fingerprint | `{results.get('dataset_fingerprint', '?')}` |",
        f"| Learning rate, epochs, batch | {results.get('learning_rate')}, {cfg.train.epochs:g}, "
        f"{cfg.train.batch_size} |",
        f"| Precision | {results.get('precision', '?')} |",
        f"| Trainable parameters | {results.get('trainable_params') or 0:,} of {results.get('total_params') or 0:,} |",
        "", "## Results", "", "| metric | value |", "|---|---|", metrics or "| (none recorded) | |", "",
        "## Memory", "",
        f"Estimated peak: {_gb(estimate.get('peak_bytes'))}; measured peak: {_gb(results.get('peak_mem_bytes'))} "
        f"({results.get('peak_mem_method', 'not measured')}) on {results.get('device', 'an unrecorded device')}.",
        ""])


def upload_folder(run_id: str, runs: Runs, merged: bool) -> tuple[Path, str]:
    """(folder to upload, what it is): the merged model, else the run's saved weights."""
    cfg, artifacts = runs.config(run_id), runs.dir(run_id).artifacts
    if merged:
        if not (artifacts.merged.is_dir() and any(artifacts.merged.iterdir())):
            raise HubError(f"run {run_id} has no merged model yet: merge it first (python -m lora_core merge "
                           f"{run_id}) or push the adapter")
        return artifacts.merged, "merged model"
    folder = artifacts.weights(cfg.method)
    if not artifacts.weights_marker(cfg.method).is_file():
        raise HubError(f"run {run_id} has no saved weights in {folder} to push")
    return folder, "LoRA adapter" if cfg.uses_lora else "model"


def push(runs: Runs, run_id: str, repo_id: str, *, private: bool = False, merged: bool = False,
         token: str | None = None) -> str:
    """Upload the run's weights and its model card to `repo_id` in one commit; returns the repository URL."""
    results = runs.results(run_id)
    if not results:
        raise HubError(f"run {run_id} has no results yet: only a finished run can be pushed")
    folder, what = upload_folder(run_id, runs, merged)
    if env_flag("HF_HUB_OFFLINE"):
        raise HubError("cannot push to the Hugging Face Hub: offline mode is on (HF_HUB_OFFLINE=1). Unset it on a "
                       "machine that reaches the Hub, log in (`hf auth login` or $HF_TOKEN) and push again")
    from huggingface_hub import CommitOperationAdd, HfApi

    card = model_card(runs.config(run_id), results, run_id, what)
    ops = [CommitOperationAdd(path_in_repo=str(p.relative_to(folder)), path_or_fileobj=str(p))
           for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MODEL_CARD]
    ops.append(CommitOperationAdd(path_in_repo=MODEL_CARD, path_or_fileobj=card.encode("utf-8")))
    api = HfApi(token=token or os.environ.get("HF_TOKEN") or None)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id, operations=ops, commit_message=f"LoRA Lab run {run_id}: {what}")
    except Exception as exc:  # network, auth, a bad repo id: one clear line names the repo and the cause
        raise HubError(f"cannot push run {run_id} to the Hub repository {repo_id!r}: {type(exc).__name__}: "
                       f"{str(exc).splitlines()[0] if str(exc) else 'no detail'}") from exc
    return str(url)
