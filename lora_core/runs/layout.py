"""Every run and artifact file and folder name, and the run-id rules. Nothing else in LoRA Lab spells them.

    <runs>/registry.sqlite                  the index of all runs (store.Registry), the audit log, sessions,
                                            server settings; the runs index is rebuilt from the run dirs
    <runs>/registry.sqlite.broken-<time>    a registry found corrupt, moved aside (kept, never deleted;
                                            `.reindexed-<time>` when `reindex` replaced it on request)
    <runs>/registry.lock                    serializes moving a corrupt registry aside
    <runs>/.deleted-<run_id>/               a run being deleted (renamed first, so nothing can re-import it)
    <runs>/uploads/<sha256>.<suffix>        datasets uploaded from the dashboard, named by their content
        <sha256>.info                       who uploaded it, when, its original name (lora_core.uploads)
    <runs>/mlflow.sqlite  mlflow-artifacts/ the local MLflow store (tracking.mlflow: true, no $MLFLOW_TRACKING_URI)
    <runs>/<run_id>/                        RunDir
        config.yaml                         the experiment config, written once
        status.json                         a mirror of the run's registry row
        metrics.jsonl                       the append-only event stream
        worker.log                          the worker's stdout and stderr (a Ray run: the job's, copied by the
                                            job as it prints, besides Ray's job log)
        results.json                        the recipe's results, written at the end
        stop.request                        a stop asked for: every rank of a multi-process run polls it
        job.json                            a Ray job's side of the run: training pids, hosts and node ids
        outcome.json                        how a Ray job ended (status, reason), for the dashboard to record
        votes.jsonl                         Playground "which answer is better" choices involving this run
        exit.json                           the worker's end, when the registry could not take it (disk full)
        space.reserve                       space a live worker holds back to record its end on a full disk
        artifacts/                          Artifacts: what the recipe writes (train.run_experiment's out_dir)
            adapter/                        lora, qlora: PEFT's adapter_config.json + adapter_model.safetensors
            model/                          full: a plain saved model
            head/                           head-only: head.safetensors + head.json
            label_map.json  generations.json
            checkpoints/checkpoint-N/       Trainer checkpoints for resume; complete once checkpoint.done is in it
            merged/                         where the dashboard merges an adapter into its base
            .adapter.saving-<hex>/          weights being saved; renamed to adapter/ (model/, head/) when whole
            tensorboard/                    TensorBoard event files (tracking.tensorboard: true)
            ray-train/                      Ray Train's own storage for a multi-worker Ray run
    <runs>/cluster-probe/<nonce>/<node>     files a probe job wrote from each node of a Ray cluster
    <runs>/clusters.json                    clusters whose nodes were probed (address -> node ids, time)

Like torchtune's checkpointer, this module owns the on-disk keys: the recipe, merge, inference, the worker, the
CLI and the pages get every path from here.
"""
from __future__ import annotations

import json
import os
import re
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

from ..config import LORA_METHODS
from ..errors import RunError
from . import files

REPO_ROOT = Path(__file__).resolve().parents[2]
REGISTRY_FILE = "registry.sqlite"
CLUSTERS_FILE = "clusters.json"
PROBE_DIR = "cluster-probe"
UPLOADS_DIR = "uploads"
UPLOAD_INFO_SUFFIX = ".info"
REGISTRY_LOCK = "registry.lock"
DELETED_PREFIX = ".deleted-"
MLFLOW_DB = "mlflow.sqlite"
MLFLOW_ARTIFACTS = "mlflow-artifacts"
RESULTS_FILE = "results.json"  # also the name of the results artifact in a tracker
MODEL_CARD = "README.md"       # the model card at the root of a pushed Hub repository

RUN_ID_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,95}")  # used with fullmatch: `$` would accept a trailing newline
SLUG_MAX = 40

# PEFT's and the Trainer's own file names: what proves a folder holds a saved adapter / a complete checkpoint.
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
MODEL_CONFIG = "config.json"
CHECKPOINT_PREFIX = "checkpoint-"
CHECKPOINT_STATE = "trainer_state.json"  # the Trainer's own state file (global step, log history)
CHECKPOINT_DONE = "checkpoint.done"      # written by us after the Trainer's save returns: the completeness marker


# -- where runs live, and their ids ---------------------------------------------------------------------------

def default_runs_dir() -> Path:
    """$LORA_LAB_RUNS_DIR, else `runs/` in the repository root (beside the app)."""
    env = os.environ.get("LORA_LAB_RUNS_DIR", "").strip()
    return Path(env).expanduser().resolve() if env else REPO_ROOT / "runs"


def runs_root(runs_dir: str | Path | None) -> Path:
    """The runs directory, absolute and created if missing."""
    path = Path(runs_dir).expanduser().resolve() if runs_dir else default_runs_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path


def registry_path(runs_dir: Path) -> Path:
    return runs_dir / REGISTRY_FILE


def clusters_path(runs_dir: Path) -> Path:
    """Which Ray clusters have been probed from this runs directory (see runs.ray_jobs)."""
    return runs_dir / CLUSTERS_FILE


def probe_path(runs_dir: Path, nonce: str) -> Path:
    """The folder one probe job writes into, one file per node."""
    return runs_dir / PROBE_DIR / check_run_id(nonce)


def uploads_dir(runs_dir: Path) -> Path:
    """Where dashboard uploads are kept (content-addressed; see lora_core.uploads)."""
    return Path(runs_dir) / UPLOADS_DIR


def upload_path(runs_dir: Path, digest: str, suffix: str) -> Path:
    return uploads_dir(runs_dir) / f"{digest}{suffix}"


def upload_info(upload: Path) -> Path:
    return Path(upload).with_suffix(UPLOAD_INFO_SUFFIX)


def registry_lock(runs_dir: Path) -> Path:
    return runs_dir / REGISTRY_LOCK


def registry_aside(runs_dir: Path, why: str = "broken") -> Path:
    """Where a registry is moved aside (`why`: broken, reindexed): a new name each time, never overwriting."""
    return runs_dir / f"{REGISTRY_FILE}.{why}-{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(2)}"


def registries_aside(runs_dir: Path) -> list[Path]:
    """Registries moved aside so far, oldest first (their -wal/-shm companions are not listed)."""
    return sorted((p for p in runs_dir.glob(f"{REGISTRY_FILE}.*-*") if not p.name.endswith(("-wal", "-shm"))),
                  key=lambda p: p.stat().st_mtime)


def sqlite_companions(path: Path) -> list[Path]:
    """SQLite's write-ahead log and shared-memory files beside a database file."""
    return [path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")]


def tombstone(runs_dir: Path, run_id: str) -> Path:
    """Where a run directory is renamed while it is being deleted (not a run id, so never re-imported)."""
    return runs_dir / f"{DELETED_PREFIX}{run_id}-{secrets.token_hex(2)}"


def mlflow_store(runs_dir: Path) -> tuple[str, str]:
    """(tracking URI, artifact location) of the local MLflow store inside the runs dir."""
    return f"sqlite:///{Path(runs_dir) / MLFLOW_DB}", (Path(runs_dir) / MLFLOW_ARTIFACTS).as_uri()


def slugify(name: str) -> str:
    """A strict file-name-safe form of a user's run name: [a-z0-9-] only, length-capped, never empty."""
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:SLUG_MAX].strip("-")
    return slug or "run"


def new_run_id(name: str, prefix: str = "") -> str:
    """`<slug>-<YYYYmmdd-HHMMSS>-<6 hex>`: readable, sortable, unique, and unable to contain a path separator."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime())
    return f"{prefix}{slugify(name)}-{stamp}-{secrets.token_hex(3)}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_RE.fullmatch(run_id):
        shown = repr(run_id[:60] + ("..." if len(run_id) > 60 else "")) if isinstance(run_id, str) else repr(run_id)
        raise RunError(f"invalid run id {shown}: run ids use only a-z, 0-9 and '-'")
    return run_id


def run_path(runs_dir: Path, run_id: str) -> Path:
    """The run's directory, verified (after resolving links and '..') to sit directly in the runs dir."""
    path = (runs_dir / check_run_id(run_id)).resolve()
    if path.parent != runs_dir.resolve():
        raise RunError(f"run id {run_id!r} resolves outside the runs directory {runs_dir}")
    return path


# -- one run --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Artifacts:
    """The artifact folder of a run: what train.run_experiment writes into its `out_dir`. Path-like, so it can be
    passed wherever a folder path is expected."""
    path: Path

    def __post_init__(self):
        object.__setattr__(self, "path", Path(self.path))

    def __fspath__(self) -> str:
        return str(self.path)

    @property
    def adapter(self) -> Path:
        return self.path / "adapter"

    @property
    def model(self) -> Path:
        return self.path / "model"

    @property
    def head(self) -> Path:
        return self.path / "head"

    @property
    def head_weights(self) -> Path:
        return self.head / "head.safetensors"

    @property
    def head_info(self) -> Path:
        return self.head / "head.json"

    @property
    def label_map(self) -> Path:
        return self.path / "label_map.json"

    @property
    def generations(self) -> Path:
        return self.path / "generations.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def merged(self) -> Path:
        return self.path / "merged"

    @property
    def ray_storage(self) -> Path:
        return self.path / "ray-train"

    def weights(self, method: str) -> Path:
        """The folder a run of `method` saves its trained weights in: adapter/, model/ or head/."""
        if method in LORA_METHODS:
            return self.adapter
        return self.model if method == "full" else self.head

    def weights_marker(self, method: str) -> Path:
        """The file whose presence shows that weights() has been saved completely enough to load."""
        if method in LORA_METHODS:
            return self.adapter / ADAPTER_CONFIG
        return self.model / MODEL_CONFIG if method == "full" else self.head_weights

    def saved_weights(self) -> list[Path]:
        """The weight folders present, in adapter, model, head order."""
        return [p for p in (self.adapter, self.model, self.head) if p.is_dir()]

    def checkpoint(self, step: int) -> Path:
        return self.checkpoints / f"{CHECKPOINT_PREFIX}{step}"

    def staging(self, target: Path) -> Path:
        """A temporary folder beside `target` to save weights into before renaming them into place."""
        return target.with_name(f".{target.name}.saving-{secrets.token_hex(3)}")

    def incomplete_checkpoints(self) -> list[Path]:
        """Checkpoint folders without the completeness marker (cut off mid-save), and staging folders left over."""
        found = [p for p in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if not is_complete_checkpoint(p)] \
            if self.checkpoints.is_dir() else []
        return found + [p for p in self.path.glob(".*.saving-*") if p.is_dir()]

    def complete_checkpoints(self) -> list[tuple[int, Path]]:
        """Complete Trainer checkpoints as (step, path), oldest first; one cut off mid-save is left out."""
        found = []
        for path in self.checkpoints.glob(f"{CHECKPOINT_PREFIX}*") if self.checkpoints.is_dir() else []:
            step = path.name[len(CHECKPOINT_PREFIX):]
            if step.isdigit() and is_complete_checkpoint(path):
                found.append((int(step), path))
        return sorted(found)


def is_complete_checkpoint(path: Path) -> bool:
    """True when the checkpoint's marker exists and every file it lists is there at its recorded size. The
    marker is written after the Trainer's save has returned, so a save cut off by a kill, a crash or a full
    disk never counts, and neither does a file truncated later."""
    try:
        marker = json.loads((Path(path) / CHECKPOINT_DONE).read_text(encoding="utf-8"))
        return all((Path(path) / name).stat().st_size == size for name, size in marker["files"].items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def mark_checkpoint_complete(path: Path) -> None:
    """Write the completeness marker of a checkpoint folder: its files and sizes, fsynced first so the marker
    never outlives the data it vouches for."""
    path = Path(path)
    sizes = {}
    for f in sorted(p for p in path.rglob("*") if p.is_file() and p.name != CHECKPOINT_DONE):
        files.fsync_file(f)
        sizes[f.relative_to(path).as_posix()] = f.stat().st_size
    files.write_json(path / CHECKPOINT_DONE, {"files": sizes, "time": time.time()})


def checkpoint_state(path: Path) -> Path:
    return Path(path) / CHECKPOINT_STATE


def adapter_weights(adapter_dir: Path) -> Path:
    return Path(adapter_dir) / ADAPTER_WEIGHTS


def adapter_config(adapter_dir: Path) -> Path:
    return Path(adapter_dir) / ADAPTER_CONFIG


@dataclass(frozen=True)
class RunDir:
    """The file layout of one run directory."""
    path: Path

    @property
    def id(self) -> str:
        return self.path.name

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def status(self) -> Path:
        return self.path / "status.json"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def log(self) -> Path:
        return self.path / "worker.log"

    @property
    def results(self) -> Path:
        return self.path / RESULTS_FILE

    @property
    def stop_request(self) -> Path:
        return self.path / "stop.request"

    def record_event(self, event: dict) -> dict:
        """Append one event to the run's metrics stream, stamped with the time when it has none; returns it."""
        event = dict(event, time=event.get("time", time.time()))
        files.append_event(self.metrics, event)
        return event

    def request_stop(self) -> None:
        """Ask the run's training process(es) to stop: they poll this file (job.py, distributed.RankWatch's ranks)."""
        if self.path.is_dir() and not self.stop_request.exists():
            files.atomic_write(self.stop_request, f"{time.time()}\n")

    @property
    def job(self) -> Path:
        return self.path / "job.json"

    @property
    def outcome(self) -> Path:
        return self.path / "outcome.json"

    @property
    def votes(self) -> Path:
        return self.path / "votes.jsonl"

    @property
    def exit(self) -> Path:
        return self.path / "exit.json"

    @property
    def reserve(self) -> Path:
        return self.path / "space.reserve"

    @property
    def artifacts(self) -> Artifacts:
        return Artifacts(self.path / "artifacts")


def run_dirs(runs_dir: Path) -> list[RunDir]:
    """Every folder in the runs dir named like a run (a run being deleted is not)."""
    try:
        entries = list(os.scandir(runs_dir))
    except OSError:
        return []
    return sorted((RunDir(Path(e.path)) for e in entries if RUN_ID_RE.fullmatch(e.name) and e.is_dir()),
                  key=lambda rd: rd.id)
