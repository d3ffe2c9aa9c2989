"""Experiment trackers the recipe reports to (config `tracking`): MLflow and TensorBoard.

    tracker = Tracker.open(cfg, out_dir, run_info)    # nothing happens with both off
    on_event = tracker.wrap(on_event)                  # every log / eval event with its step
    results = tracker.finish(results, weights_dir)     # results + adapter artifact; results gain the run ids

The hook is part of the recipe (train.run_experiment), so it travels wherever the recipe runs (the local worker,
a Ray task). MLflow writes to $MLFLOW_TRACKING_URI, else to a local sqlite store in the runs directory
(layout.mlflow_store); sweep runs carry their sweep id as a tag. TensorBoard event files go into the run's
artifact folder (`tensorboard --logdir <runs dir>` shows every run). mlflow and tensorboard are imported only
when switched on.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from .config import ExperimentConfig
from .errors import TrackingError
from .runs import layout

EXPERIMENT = "lora-lab"  # the MLflow experiment every run goes into
SKIP_KEYS = ("kind", "time", "step", "epoch", "phase")


def numbers(event: dict, skip: tuple = SKIP_KEYS) -> dict[str, float]:
    """The event's numeric fields (bools and None left out)."""
    return {k: float(v) for k, v in event.items()
            if k not in skip and isinstance(v, (int, float)) and not isinstance(v, bool)}


def flat_params(data: dict, prefix: str = "") -> dict[str, str]:
    """A nested config dict as dotted keys with string values (MLflow params)."""
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat_params(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
    return out


def tracking_uri(runs_dir: Path | None) -> tuple[str, str | None]:
    """(tracking URI, artifact location for a new experiment): $MLFLOW_TRACKING_URI as set, else the local store."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if env:
        return env, None
    root = layout.runs_root(runs_dir)
    return layout.mlflow_store(root)


class MlflowSink:
    def __init__(self, cfg: ExperimentConfig, run_info: dict):
        try:
            import mlflow
            from mlflow.tracking import MlflowClient

            self.uri, artifacts = tracking_uri(run_info.get("runs_dir"))
            self.client = MlflowClient(tracking_uri=self.uri)
            found = self.client.get_experiment_by_name(EXPERIMENT)
            experiment = found.experiment_id if found else self._create(artifacts)
            tags = {f"lora_lab.{k}": str(v) for k, v in run_info.items() if v and k != "runs_dir"}
            tags.update({"lora_lab.task": cfg.task, "lora_lab.method": cfg.method})
            run = self.client.create_run(experiment, run_name=run_info.get("run_id") or cfg.name, tags=tags)
        except Exception as exc:  # a bad URI or an unreachable server: say which, before training starts
            raise TrackingError(f"tracking.mlflow: cannot open the MLflow store at "
                                f"{os.environ.get('MLFLOW_TRACKING_URI') or 'the runs directory'}: {exc}") from exc
        self.mlflow, self.run_id = mlflow, run.info.run_id
        params = flat_params(cfg.to_dict())
        items = [mlflow.entities.Param(k, v[:6000]) for k, v in params.items()]
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(self.run_id, params=items[start:start + 100])

    def _create(self, artifacts: str | None) -> str:
        try:
            return self.client.create_experiment(EXPERIMENT, artifact_location=artifacts)
        except Exception:  # a concurrent run of the same sweep created it first
            return self.client.get_experiment_by_name(EXPERIMENT).experiment_id

    def log(self, values: dict[str, float], step: int) -> None:
        import time

        now = int(time.time() * 1000)
        metrics = [self.mlflow.entities.Metric(k, v, now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def finish(self, results: dict, weights_dir: Path | None, failed: bool) -> None:
        from mlflow.entities import RunStatus as MlflowStatus

        if results:
            self.log(numbers(results, skip=("steps", "seed")), int(results.get("steps") or 0))
            self.client.log_dict(self.run_id, results, layout.RESULTS_FILE)
            self.client.set_tag(self.run_id, "lora_lab.stopped", str(bool(results.get("stopped"))))
        if weights_dir is not None and Path(weights_dir).is_dir():
            self.client.log_artifacts(self.run_id, str(weights_dir), Path(weights_dir).name)
        status = MlflowStatus.FAILED if failed else MlflowStatus.FINISHED
        self.client.set_terminated(self.run_id, MlflowStatus.to_string(status))


class TensorBoardSink:
    def __init__(self, cfg: ExperimentConfig, folder: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:
            raise TrackingError(f"tracking.tensorboard needs the tensorboard package ({exc})") from exc
        self.folder = folder
        self.writer = SummaryWriter(log_dir=str(folder))
        self.writer.add_text("config", "```\n" + json.dumps(cfg.to_dict(), indent=2) + "\n```")

    def log(self, values: dict[str, float], step: int) -> None:
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def finish(self, results: dict, weights_dir: Path | None, failed: bool) -> None:
        self.writer.flush()
        self.writer.close()


class Tracker:
    """The trackers a run's config switches on, fed the same events as metrics.jsonl."""

    def __init__(self, sinks: list, mlflow: MlflowSink | None = None, tensorboard: TensorBoardSink | None = None):
        self.sinks, self.mlflow, self.tensorboard = sinks, mlflow, tensorboard

    @classmethod
    def open(cls, cfg: ExperimentConfig, out_dir: Path, run_info: dict | None = None) -> "Tracker":
        ml = MlflowSink(cfg, dict(run_info or {})) if cfg.tracking.mlflow else None
        tb = TensorBoardSink(cfg, layout.Artifacts(out_dir).tensorboard) if cfg.tracking.tensorboard else None
        return cls([s for s in (ml, tb) if s], ml, tb)

    def wrap(self, on_event: Callable[[dict], None] | None) -> Callable[[dict], None] | None:
        if not self.sinks:
            return on_event

        def both(event: dict) -> None:
            if event.get("kind") in ("log", "eval"):
                values, step = numbers(event), int(event.get("step") or 0)
                for sink in self.sinks:
                    sink.log(values, step)
            if on_event is not None:
                on_event(event)
        return both

    def ids(self) -> dict[str, Any]:
        """What results.json records about the trackers."""
        out: dict[str, Any] = {}
        if self.mlflow:
            out.update(mlflow_run_id=self.mlflow.run_id, mlflow_tracking_uri=self.mlflow.uri)
        if self.tensorboard:
            out["tensorboard_dir"] = str(self.tensorboard.folder)
        return out

    def finish(self, results: dict | None, weights_dir: Path | None = None, failed: bool = False) -> dict:
        results = {**(results or {}), **self.ids()} if results is not None else None
        for sink in self.sinks:
            sink.finish(results or {}, weights_dir, failed)
        return results
