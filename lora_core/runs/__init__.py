"""Runs: where they live on disk (layout), their index and status (store), their worker processes (launcher,
worker), sweeps (sweep), and `Runs`, the one manager object every caller holds (manager).

Importing this package imports neither torch nor pandas: the dashboard and the CLI's run commands stay fast.
"""
from .layout import Artifacts, RunDir, default_runs_dir
from .manager import Events, Runs
from .store import RunRecord, RunStatus

__all__ = ["Artifacts", "Events", "RunDir", "RunRecord", "RunStatus", "Runs", "default_runs_dir"]
