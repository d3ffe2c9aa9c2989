"""Where a run trains, as the dashboard shows and edits it: the Train page's backend / workers / cluster address
over the current config, the cluster panel's tables and whether Ray is here, and a run's placement in one line.

The Train page's fields start from the current config's `resources` and follow it when the Config builder changes
it; what the user changes on Train applies to what Train launches (`launch_config`), validated by the config.
"""
from __future__ import annotations

import os
from typing import Any

from lora_core.config import ExperimentConfig
from lora_core.errors import LoraLabError
from lora_core.runs import ray_jobs
from lora_ui import service
from lora_ui.state import TRAIN

FIELDS = {"backend": "resources.backend", "workers": "resources.num_workers", "ray_address": "resources.ray_address"}


def sync_from(cfg: ExperimentConfig) -> None:
    """Set the Train page's fields from the config's resources when that config's resources changed (a new
    config from the builder), else leave what the user typed."""
    res = cfg.resources
    seen = (res.backend, res.num_workers, res.ray_address)
    if TRAIN.get("resources_from") == seen:
        return
    TRAIN["resources_from"] = seen
    TRAIN["backend"], TRAIN["workers"], TRAIN["ray_address"] = res.backend, res.num_workers, res.ray_address or ""


def launch_config(cfg: ExperimentConfig, state: dict[str, Any] | None = None) -> ExperimentConfig:
    """The config Train launches: `cfg` with the page's backend, workers and address (ConfigError names the
    field). `state` defaults to the Train page's session state."""
    values = state if state is not None else {name: TRAIN.get(name) for name in FIELDS}
    changes = {dotted: values.get(name) for name, dotted in FIELDS.items() if values.get(name) is not None}
    if "resources.ray_address" in changes:
        changes["resources.ray_address"] = str(changes["resources.ray_address"]).strip() or None
    return cfg.replace(**changes) if changes else cfg


def placement_text(rec) -> str:
    """'local', 'local ×2', 'ray ×2 on 2 nodes', for a run record."""
    backend, width = rec.backend or "local", rec.world_size or 1
    text = backend + (f" ×{width}" if width > 1 else "")
    nodes = node_count(rec.nodes)
    return text + (f" on {nodes} nodes" if nodes > 1 else "")


def node_count(nodes: list | None) -> int:
    """How many distinct nodes a run's ranks ran on (0 when not recorded)."""
    return len(set(nodes or []))


def node_rows(status: dict) -> list[dict]:
    """The cluster panel's node table."""
    return [{"node": n["node_id"][:12], "host": n["host"] or n["ip"], "head": n["head"],
             "alive": n["alive"], "CPUs used": n["cpus_used"], "CPUs": n["cpus"],
             "GPUs used": n["gpus_used"], "GPUs": n["gpus"]} for n in status["nodes"]]


def run_rows(status: dict) -> list[dict]:
    """Our queued and running runs on the cluster."""
    return [{"run": r["name"], "status": r["status"], "workers": r["world_size"], "job id": r["job_id"] or "",
             "nodes": node_count(r["nodes"])} for r in status["runs"]]


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
    return service.runs_manager().cluster(address or None)
