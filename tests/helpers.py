"""Helpers shared by the test folders: tiny configs, waiting for a condition, the CLI in a subprocess, a few
optimizer steps by hand, a RUNNING run that trains nothing, and stopping whatever runs a test left going."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psutil

from lora_core import models
from lora_core.config import ExperimentConfig
from lora_core.runs import RunRecord, Runs, RunStatus, layout
from lora_core.runs.launcher import this_host

ROOT = Path(__file__).resolve().parents[1]
INJECT = ROOT / "tests" / "reliability" / "inject"  # the fault injector workers load (its sitecustomize.py)

# Tiny runs that train in seconds on a CPU: tiny-random-gpt2, a few steps, a few rows.
TINY_SEQ_CLS = {
    "name": "seed", "task": "seq-cls", "method": "lora", "model": {"source": "tiny-random-gpt2"},
    "lora": {"r": 2},
    "data": {"train": "sample:sentiment-2", "max_train_samples": 16, "max_eval_samples": 16, "max_length": 32},
    "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1},
}
TINY_CAUSAL = {
    "name": "seed-gen", "task": "causal-lm", "method": "lora", "model": {"source": "tiny-random-gpt2"},
    "lora": {"r": 2},
    "data": {"train": "sample:instructions", "max_train_samples": 16, "max_eval_samples": 8, "max_length": 32},
    "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1},
    "generate": {"prompts": ["Hi"], "max_new_tokens": 4},
}


def tiny_config(**dotted) -> ExperimentConfig:
    """TINY_SEQ_CLS with dotted keys changed, e.g. tiny_config(**{"train.max_steps": 5})."""
    cfg = ExperimentConfig.from_dict(TINY_SEQ_CLS)
    return cfg.replace(**dotted) if dotted else cfg


def tiny_causal(name: str = "tiny", max_steps: int = 400, **dotted) -> ExperimentConfig:
    """A causal-LM LoRA run on tiny-random-gpt2 with fast steps (a long one by default, for stopping)."""
    base = {"name": name, "task": "causal-lm", "method": "lora", "model": {"source": "tiny-random-gpt2"},
            "lora": {"r": 2},
            "data": {"train": "sample:instructions", "max_length": 32, "max_train_samples": 16,
                     "max_eval_samples": 4},
            "train": {"max_steps": max_steps, "batch_size": 4, "logging_steps": 1},
            "generate": {"prompts": ["Hi"], "max_new_tokens": 2}}
    cfg = ExperimentConfig.from_dict(base)
    return cfg.replace(**dotted) if dotted else cfg


def wait_until(predicate, timeout: float = 120.0, poll: float = 0.2, what: str = "condition"):
    """The first truthy value of predicate(), polled; AssertionError naming `what` after `timeout` s."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def cli(*args: str, check: bool = True, timeout: float = 120, input: str | None = None,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """`python -m lora_core ARGS` from the repository root (with `input` on stdin, `env` added to the
    environment); with check, it must exit 0."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "lora_core", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env, input=input)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def steps_logged(events: list[dict]) -> list[int]:
    """The steps of the training-step logs in a metrics stream (the end-of-training summary has no loss)."""
    return [e["step"] for e in events if e.get("kind") == "log" and "loss" in e]


def wait_for_steps(runs: Runs, run_id: str, n: int, timeout: float = 180.0) -> list[dict]:
    """Wait until a RUNNING run has logged `n` training steps (failing at once if it ended); returns the events."""
    def enough():
        record = runs.get(run_id)
        assert record.status in (RunStatus.QUEUED, RunStatus.RUNNING), (record.status, record.error,
                                                                        record.error_log)
        events = runs.metrics(run_id)
        return events if record.status == RunStatus.RUNNING and len(steps_logged(events)) >= n else None
    return wait_until(enough, timeout=timeout, poll=0.1, what=f"{n} logged steps of {run_id}")


def fake_running(runs: Runs, cfg: ExperimentConfig, owner: str):
    """A RUNNING run owned by `owner` whose worker is a `sleep` in its own process group: pages show it live and
    its Stop really stops something, yet nothing trains. It is registered as RUNNING from the start, so a
    dashboard reconciling meanwhile never starts a worker for it. stop_leftovers ends it."""
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    path = layout.run_path(runs.root, layout.new_run_id(cfg.name))
    path.mkdir()
    run_dir = layout.RunDir(path)
    run_dir.artifacts.path.mkdir()
    run_dir.config.write_text(cfg.to_yaml(), encoding="utf-8")
    run_dir.metrics.touch()
    run_dir.log.touch()
    now = time.time()
    return runs.registry.insert(RunRecord(
        id=run_dir.id, name=cfg.name, status=RunStatus.RUNNING, created=now, started=now, task=cfg.task,
        model=cfg.model.source, method=cfg.method, owner=owner, runs_dir=str(runs.root), pid=sleeper.pid,
        pgid=sleeper.pid, pid_created=psutil.Process(sleeper.pid).create_time(), host=this_host(), heartbeat=now))


def stop_leftovers(runs: Runs, timeout: float = 20.0) -> None:
    """Cancel queued runs and stop running ones (best effort), so no worker outlives the test that made it."""
    for record in runs.list(status=[RunStatus.QUEUED, RunStatus.RUNNING], reconcile=False):
        try:
            runs.stop(record.id, timeout=timeout)
        except Exception:  # noqa: BLE001 - the next one still gets stopped
            pass


def train_by_hand(cfg: ExperimentConfig, texts: list[str], labels: list[int] | None = None, steps: int = 4,
                  id2label: dict | None = None):
    """(model, tokenizer) after a few real AdamW steps on `texts`, seeded like the recipe (train.seed).
    seq-cls trains on `labels`; causal-lm on the texts themselves."""
    import torch
    from transformers import set_seed

    set_seed(cfg.train.seed)
    model, tok = models.load_for_training(cfg, num_labels=len(id2label) if id2label else 2, id2label=id2label)
    enc = tok(texts, return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch["labels"] = torch.tensor(labels) if cfg.task == "seq-cls" else \
        enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval(), tok


# -- a real Ray cluster on loopback, ended by pid ---------------------------------------------------------------------

def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# `ray start` turns 127.0.0.1 and localhost into this machine's routable address (resolve_ip_for_localhost), so
# the nodes take another loopback address: every Ray process then advertises and listens on `lo` only.
RAY_NODE_IP = "127.0.0.2"


class LocalRayCluster:
    """A head and `nodes - 1` more Ray nodes on loopback (RAY_NODE_IP), each `ray start --block` in its own process
    session with `cpus` CPUs, free ports and its own temp dir under `root`. `close()` ends every process of those
    sessions by pid (never `ray stop`, which ends other people's Ray processes by name). Extra environment (e.g.
    RAY_AUTH_MODE, or a PYTHONPATH put before the repository's)
    goes to every node through `env`."""

    def __init__(self, root: Path, nodes: int = 2, cpus: int = 1, env: dict | None = None):
        self.root, self.cpus = Path(root), cpus
        self.env = {**os.environ, **(env or {}), "RAY_USAGE_STATS_ENABLED": "0",
                    # the job entrypoint's `python` is this interpreter
                    "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
                    "PYTHONPATH": os.pathsep.join(filter(None, [(env or {}).get("PYTHONPATH"), str(ROOT)]))}
        self.procs: list[subprocess.Popen] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.node_count = nodes

    def start(self, timeout: float = 180.0) -> "LocalRayCluster":
        try:
            self._start_node(head=True)
            wait_until(lambda: self._check_alive() and self._dashboard_up(), timeout=timeout, poll=0.5,
                       what="the Ray head's dashboard")
            for _ in range(self.node_count - 1):
                self._start_node(head=False)
            wait_until(lambda: self._check_alive() and len(self.alive_nodes()) == self.node_count,
                       timeout=timeout, poll=0.5, what=f"{self.node_count} Ray nodes")
        except BaseException:
            self.close()
            raise
        return self

    def _start_node(self, head: bool) -> None:
        index = len(self.procs)
        args = [str(Path(sys.executable).parent / "ray"), "start", "--block", "--disable-usage-stats",
                "--num-cpus", str(self.cpus), "--num-gpus", "0", "--node-ip-address", RAY_NODE_IP,
                "--object-store-memory", str(100 * 1024 ** 2), "--min-worker-port", "0", "--max-worker-port", "0",
                "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
                "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
                "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port())]
        temp = self.root / f"n{index}"  # each node its own (a shared one makes each log monitor forward all logs)
        temp.mkdir(parents=True, exist_ok=True)
        if len(str(temp)) > 45:  # Ray puts sockets ~61 characters below it, and AF_UNIX paths stop at 107
            raise ValueError(f"Ray's temp dir {temp} is too long for its socket paths; use a shorter root")
        args += ["--temp-dir", str(temp)]
        if head:
            args += ["--head", "--port", str(self.gcs_port), "--dashboard-port", str(self.dashboard_port),
                     "--dashboard-host", "127.0.0.1", "--include-dashboard", "true",
                     "--ray-client-server-port", str(free_port())]
        else:
            args += ["--address", f"{RAY_NODE_IP}:{self.gcs_port}"]
        log = open(self.root / f"ray-node-{index}.log", "ab")
        self.procs.append(subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                           env=self.env, start_new_session=True))
        log.close()

    def _check_alive(self) -> bool:
        """AssertionError with its log when a `ray start` has exited (instead of waiting out the timeout)."""
        for index, proc in enumerate(self.procs):
            if proc.poll() is not None:
                log = (self.root / f"ray-node-{index}.log").read_text(errors="replace")[-3000:]
                raise AssertionError(f"`ray start` of node {index} exited with {proc.returncode}:\n{log}")
        return True

    def _get(self, path: str, timeout: float):
        """GET from the dashboard, with the cluster's token when token authentication is on."""
        import urllib.request

        token = self.env.get("RAY_AUTH_TOKEN")
        request = urllib.request.Request(self.address + path,
                                         headers={"Authorization": f"Bearer {token}"} if token else {})
        with urllib.request.urlopen(request, timeout=timeout) as r:
            return json.load(r)

    def _dashboard_up(self) -> bool:
        try:
            return bool(self._get("/api/version", timeout=2))
        except (OSError, ValueError):
            return False

    def alive_nodes(self) -> list[dict]:
        try:
            summary = self._get("/nodes?view=summary", timeout=5)["data"]["summary"]
        except (OSError, KeyError, ValueError):
            return []
        return [n for n in summary if n.get("raylet", {}).get("state") == "ALIVE"]

    def pids(self) -> list[int]:
        """Every live process in the sessions of the `ray start` commands this cluster ran, and their descendants
        (Ray starts each job's command in a session of its own)."""
        import psutil

        sessions = {p.pid for p in self.procs}
        found: set[int] = set()
        for proc in psutil.process_iter(["pid"]):
            try:
                if os.getsid(proc.pid) in sessions:
                    found.add(proc.pid)
                    found.update(child.pid for child in proc.children(recursive=True))
            except (ProcessLookupError, PermissionError, psutil.Error):
                continue
        return sorted(found)

    def close(self, timeout: float = 30.0) -> None:
        """SIGTERM then SIGKILL every process of this cluster's sessions and their descendants, by pid; wait until
        none is left. The descendants are listed before any process dies: once orphaned, a job's command is in no
        session of ours and has no parent to find it by."""
        import signal

        import psutil

        known = set(self.pids())

        def alive() -> list[int]:
            known.update(self.pids())
            left = []
            for pid in sorted(known):
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        left.append(pid)
                except psutil.Error:
                    continue
            return left

        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in alive():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.time() + (10 if sig == signal.SIGTERM else timeout)
            while time.time() < deadline and alive():
                for proc in self.procs:
                    proc.poll()
                time.sleep(0.2)
        for proc in self.procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        left = alive()
        assert not left, f"Ray processes {left} survived SIGKILL"


def slow_first_steps(seconds: float = 0.5, until: int = 8) -> dict:
    """Environment under which every training process started from it (workers, their ranks, a Ray node's jobs)
    sleeps `seconds` after each of its first `until` steps: a short run then still has a middle for a test to
    stop or read it in, and a resumed run soon trains at full speed (the fault injector's "slow")."""
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(INJECT), os.environ.get("PYTHONPATH")])),
            "LORA_LAB_TEST_FAULT": json.dumps({"at": "step", "do": "slow", "seconds": seconds, "until": until})}
