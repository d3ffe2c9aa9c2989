"""The dashboard under load: 1,000 runs in the registry, 2 live runs training, 20 browser sessions for 60 s.

    .venv/bin/python bench/load.py [--runs 1000] [--sessions 20] [--seconds 60]

Set-up: BENCH FIXTURES: `--runs` finished runs created through the engine's run manager (Runs.create with real,
validated configs, a short metrics stream each, Registry.set_status), labelled as fixtures in their names; then
2 REAL runs are launched through the launcher (tiny-random-gpt2 LoRA, a train log every step) and kept training
for the whole measurement. `streamlit run app.py` serves the dashboard on a free loopback port.

The sessions speak Streamlit's own websocket protocol (`/_stcore/stream`, the protobufs the browser sends and
receives; lighter than 20 Chromium tabs on 2 cores, and it times exactly what the server does): half open the
Train page and, as a browser does, rerun its live fragment whenever the server's auto-rerun interval comes round
(`--refresh`, the Train page's LORA_LAB_REFRESH_S, default 2 s as shipped); half open the Runs page (1,000 rows)
and rerun it every 5 s, as a user clicking about. One unmeasured visit of each page warms the server first.
Measured:
  * render time: from sending a (re)run to the server's script_finished: a session's first page, later full
    reruns, and live-fragment reruns;
  * metric-written-to-visible lag: this process tails both live runs' metrics.jsonl (every 50 ms) to see when each
    train step is written, and each Train session records when a progress bar first shows that step or a later one;
  * errors: exceptions drawn on a page, scripts that did not finish, dropped connections, timeouts;
  * the dashboard process's CPU (average % of one core over the window) and memory (RSS, sampled every 0.5 s).
Goals: p95 render < 1 s, p95 lag < 2 s, 0 errors. Printed either way, with the machine's load.

Last, the status read beside the stream it reads: `Runs.latest` (what `status` reads) and a full read, at 1,000
and 200,000 events.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "browser"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import psutil  # noqa: E402
import websockets  # noqa: E402
from streamlit.proto.BackMsg_pb2 import BackMsg  # noqa: E402
from streamlit.proto.ForwardMsg_pb2 import ForwardMsg  # noqa: E402

from lora_core.config import ExperimentConfig  # noqa: E402
from lora_core.runs import Runs, RunStatus, files, store  # noqa: E402

RENDER_GOAL_S, LAG_GOAL_S = 1.0, 2.0
RUNS_PAGE_EVERY_S = 5.0
TIMEOUT_S = 60.0
STEP = re.compile(r"\bstep (\d+)")
FINISHED_OK = {ForwardMsg.FINISHED_SUCCESSFULLY, ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY}


# -- set-up ----------------------------------------------------------------------------------------------------------

def make_fixtures(runs: Runs, n: int) -> None:
    """n finished runs through the engine's API (labelled bench fixtures): config, a short stream, results."""
    variants = [("lora", 2), ("lora", 8), ("lora", 64), ("full", None), ("head-only", None)]
    for i in range(n):
        method, rank = variants[i % len(variants)]
        cfg = ExperimentConfig.from_dict({"name": f"bench-fixture-{i:04d}", "method": method,
                                          "lora": {"r": rank or 8}, "model": {"source": "tiny-random-gpt2"}})
        record = runs.create(cfg, sweep_id=f"sweep-bench-fixture-{i // len(variants):03d}")
        stream = [{"kind": "log", "step": s, "loss": 1.0 / s, "progress": s / 10, "time": time.time()}
                  for s in range(1, 11)]
        files.atomic_write(record.dir.metrics, "".join(json.dumps(e) + "\n" for e in stream))
        results = {"method": method, "accuracy": 0.5 + 0.4 * ((i * 37) % 100) / 100, "eval_loss": 0.7,
                   "train_time_s": 10.0, "bench_fixture": True}
        runs.registry.set_status(record.id, RunStatus.RUNNING)
        files.write_json(record.dir.results, results)
        runs.registry.set_status(record.id, RunStatus.SUCCEEDED, results=store.key_results(results))


def launch_live(runs: Runs) -> list[str]:
    cfg = ExperimentConfig.from_dict({
        "name": "bench-live", "task": "causal-lm", "model": {"source": "tiny-random-gpt2"}, "lora": {"r": 2},
        "data": {"train": "sample:instructions", "max_length": 32, "max_train_samples": 16, "max_eval_samples": 4},
        "train": {"max_steps": 100_000, "batch_size": 4, "logging_steps": 1, "save_steps": 100_000},
        "generate": {"prompts": ["Hi"], "max_new_tokens": 2}})
    return [runs.launch(cfg.replace(name=f"bench-live-{i}")) for i in range(2)]


class StepWatch(threading.Thread):
    """When each train step of the live runs is written, as seen by tailing their streams every 50 ms."""

    def __init__(self, runs: Runs, run_ids: list[str]):
        super().__init__(daemon=True)
        self.paths = {rid: runs.dir(rid).metrics for rid in run_ids}
        self.offsets = {rid: 0 for rid in run_ids}
        self.written: dict[str, dict[int, float]] = {rid: {} for rid in run_ids}
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            now = time.time()
            for rid, path in self.paths.items():
                events, self.offsets[rid] = files.read_events(path, self.offsets[rid])
                for e in events:
                    if e.get("kind") == "log" and isinstance(e.get("step"), int):
                        self.written[rid].setdefault(e["step"], now)
            self.done.wait(0.05)


# -- one browser session over Streamlit's websocket --------------------------------------------------------------------

class Session:
    """A browser tab: opens a page, reruns it (or its live fragment) as a browser or a user would."""

    def __init__(self, url: str, page: str, live: list[str], until: float):
        self.url, self.page, self.live, self.until = url, page, live, until
        self.renders: list[tuple[str, float]] = []   # (full | fragment, seconds)
        self.seen: list[tuple[str, int, float]] = []  # (run id, step shown, when)
        self.errors: list[str] = []
        self.page_hash = ""
        self.fragment: tuple[str, float] | None = None  # (fragment id, interval) once the server announces it

    async def run(self) -> None:
        try:
            async with websockets.connect(self.url.replace("http", "ws") + "/_stcore/stream",
                                          subprotocols=["streamlit"], origin=self.url, max_size=None,
                                          open_timeout=TIMEOUT_S) as ws:
                await self.rerun(ws, "first")
                while time.time() < self.until:
                    if self.page == "train" and self.fragment:
                        await asyncio.sleep(self.fragment[1])
                        await self.rerun(ws, "fragment")
                    else:
                        await asyncio.sleep(RUNS_PAGE_EVERY_S)
                        await self.rerun(ws, "full")
        except Exception as exc:  # noqa: BLE001 - a dropped connection or a timeout is an error to count
            self.errors.append(f"{self.page}: {type(exc).__name__}: {exc}"[:300])

    async def rerun(self, ws, kind: str) -> None:
        msg = BackMsg()
        msg.rerun_script.page_name = self.page
        msg.rerun_script.page_script_hash = self.page_hash
        if kind == "fragment":
            msg.rerun_script.fragment_id = self.fragment[0]
            msg.rerun_script.is_auto_rerun = True
        started = time.perf_counter()
        await ws.send(msg.SerializeToString())
        current = None  # the live run whose card is being drawn
        while True:
            fm = ForwardMsg()
            fm.ParseFromString(await asyncio.wait_for(ws.recv(), TIMEOUT_S))
            what = fm.WhichOneof("type")
            if what == "new_session":
                self.page_hash = fm.new_session.page_script_hash or self.page_hash
            elif what == "auto_rerun":
                self.fragment = (fm.auto_rerun.fragment_id, max(0.5, fm.auto_rerun.interval))
            elif what == "delta" and fm.delta.WhichOneof("type") == "new_element":
                current = self.element(fm.delta.new_element, current)
            elif what == "script_finished":
                if fm.script_finished in FINISHED_OK:
                    self.renders.append((kind, time.perf_counter() - started))
                    return
                if fm.script_finished != ForwardMsg.FINISHED_EARLY_FOR_RERUN:
                    self.errors.append(f"{self.page}: script finished with status {fm.script_finished}")
                    return

    def element(self, element, current: str | None) -> str | None:
        kind = element.WhichOneof("type")
        if kind == "exception":
            self.errors.append(f"{self.page}: {element.exception.type}: {element.exception.message}"[:300])
        elif kind == "markdown":
            return next((rid for rid in self.live if rid in element.markdown.body), current)
        elif kind == "progress" and current:
            step = STEP.search(element.progress.text)
            if step:
                self.seen.append((current, int(step.group(1)), time.time()))
        return current


# -- the measurement -----------------------------------------------------------------------------------------------

def lags(sessions: list[Session], written: dict[str, dict[int, float]], since: float) -> list[float]:
    """For each Train session and each step written after it opened: first time it showed that step or later."""
    out = []
    for s in sessions:
        if s.page != "train":
            continue
        opened = min((t for _, _, t in s.seen), default=None)
        for rid, steps in written.items():
            shown = sorted((t, step) for r, step, t in s.seen if r == rid)
            for step, at in steps.items():
                if opened is None or at < max(since, opened):
                    continue
                first = next((t for t, seen_step in shown if seen_step >= step and t >= at), None)
                if first is not None:
                    out.append(first - at)
    return out


class Meter(threading.Thread):
    """CPU and RSS of the dashboard process (and its children) while the sessions run."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.rss: list[int] = []
        self.done = threading.Event()

    def cpu(self) -> float:
        procs = [self.proc, *self.proc.children(recursive=True)]
        return sum(sum(p.cpu_times()[:2]) for p in procs if p.is_running())

    def run(self) -> None:
        self.cpu0, self.t0 = self.cpu(), time.time()
        while not self.done.wait(0.5):
            self.rss.append(self.proc.memory_info().rss)
        self.cpu_pct = 100 * (self.cpu() - self.cpu0) / (time.time() - self.t0)


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else (values[0] if values else float("nan"))


def measure(url: str, server_pid: int, runs: Runs, live: list[str], sessions: int, seconds: float) -> dict:
    asyncio.run(_gather([Session(url, page, live, 0) for page in ("train", "runs")]))  # unmeasured warm-up
    watch, meter = StepWatch(runs, live), Meter(server_pid)
    watch.start()
    meter.start()
    pages = ["train" if i % 2 == 0 else "runs" for i in range(sessions)]
    group = [Session(url, page, live, time.time() + seconds) for page in pages]
    started = time.time()
    asyncio.run(_gather(group))
    meter.done.set()
    meter.join()
    watch.done.set()
    watch.join()
    renders = {kind: [t for s in group for k, t in s.renders if k == kind] for kind in ("first", "full", "fragment")}
    return {"renders": renders, "lags": lags(group, watch.written, started),
            "errors": [e for s in group for e in s.errors], "cpu_pct": meter.cpu_pct, "rss": meter.rss,
            "pages": pages, "wall": time.time() - started,
            "steps": {rid: len(steps) for rid, steps in watch.written.items()},
            "refresh": next((s.fragment[1] for s in group if s.fragment), float("nan"))}


async def _gather(sessions: list[Session]) -> None:
    await asyncio.gather(*(s.run() for s in sessions))


def report(out: dict, n_runs: int, load_before: tuple) -> None:
    (first, full, frag), lag = (out["renders"][k] for k in ("first", "full", "fragment")), out["lags"]
    every = first + full + frag
    print(f"\nsessions: {len(out['pages'])} ({out['pages'].count('train')} on Train, live panel every "
          f"{out['refresh']:g} s; {out['pages'].count('runs')} on Runs, rerun every {RUNS_PAGE_EVERY_S:g} s) for "
          f"{out['wall']:.0f} s; registry {n_runs} runs; live runs logged "
          + ", ".join(f"{n} steps" for n in out["steps"].values()) + " meanwhile")
    print(f"load average before: {load_before[0]:.2f} (1 min) on {os.cpu_count()} cores; machine shared: "
          f"{'yes' if load_before[0] > 0.5 else 'no'}")
    print(f"\n{'measure':<38}{'n':>6}{'p50':>9}{'p95':>9}  goal")
    rows = [("render, first page of a session (s)", first, None), ("render, full page rerun (s)", full, None),
            ("render, live fragment rerun (s)", frag, None), ("render, all (s)", every, RENDER_GOAL_S),
            ("metric written -> visible (s)", lag, LAG_GOAL_S)]
    for name, values, goal in rows:
        p50, p95 = (pct(values, 50), pct(values, 95)) if values else (float("nan"), float("nan"))
        verdict = "" if goal is None else (f"p95 < {goal:g}: " + ("ok" if p95 < goal else "MISSED"))
        print(f"{name:<38}{len(values):>6}{p50:>9.3f}{p95:>9.3f}  {verdict}")
    print(f"errors: {len(out['errors'])} (goal 0)" + "".join(f"\n  {e}" for e in out["errors"][:10]))
    rss = out["rss"] or [0]
    print(f"dashboard process: CPU {out['cpu_pct']:.0f}% of one core on average; RSS mean "
          f"{statistics.fmean(rss) / 2**20:.0f} MiB, peak {max(rss) / 2**20:.0f} MiB")


def status_reads(tmp: Path) -> None:
    """Runs.latest (what `status` reads) against a full read, at 1,000 and 200,000 events."""
    runs = Runs(tmp / "status-runs")
    print(f"\n{'events':>10}{'stream MB':>11}{'latest() ms':>13}{'full read ms':>14}")
    for n in (1_000, 200_000):
        rid = runs.create(ExperimentConfig.from_dict({"name": f"stream-{n}"})).id
        path = runs.dir(rid).metrics
        files.atomic_write(path, "".join(json.dumps({"kind": "log", "step": i, "loss": 1.0, "progress": i / n,
                                                     "time": time.time(), "samples_per_s": 12.5}) + "\n"
                                         for i in range(1, n + 1)))
        tail = statistics.median(_timed(lambda: runs.latest(rid)) for _ in range(5))
        full = statistics.median(_timed(lambda: files.read_events(path)) for _ in range(3))
        print(f"{n:>10,}{path.stat().st_size / 1e6:>11.1f}{1e3 * tail:>13.2f}{1e3 * full:>14.1f}")


def _timed(fn) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1000, help="finished runs in the registry (bench fixtures)")
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--refresh", type=float, default=2.0, help="the Train page's live refresh "
                                                                   "(LORA_LAB_REFRESH_S; the page's default is 2)")
    args = parser.parse_args()
    from browser_helpers import streamlit_server

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        os.environ["LORA_LAB_RUNS_DIR"] = str(runs_dir)
        os.environ["LORA_LAB_MAX_CONCURRENT"] = "2"
        runs = Runs(runs_dir)
        started = time.perf_counter()
        make_fixtures(runs, args.runs)
        print(f"set-up: {args.runs} bench fixture runs in {time.perf_counter() - started:.1f} s")
        live = launch_live(runs)
        try:
            for rid in live:  # measure while both really train
                while not runs.latest(rid)["last"]:
                    if runs.get(rid).terminal:
                        raise SystemExit(f"live run {rid} ended: {runs.get(rid).error}")
                    time.sleep(0.5)
            print(f"live runs training: {', '.join(live)}")
            with streamlit_server(runs_dir, Path(tmp) / "streamlit.log", refresh_s=args.refresh) as url:
                out = measure(url, _server_pid(url), runs, live, args.sessions, args.seconds)
        finally:
            for rid in live:
                runs.stop(rid, timeout=20)
        report(out, len(runs.list(reconcile=False)), load_before)
        status_reads(Path(tmp))
    return 0


def _server_pid(url: str) -> int:
    """The process listening on the dashboard's port."""
    port = int(url.rsplit(":", 1)[1])
    for conn in psutil.net_connections(kind="tcp"):
        if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
            return conn.pid
    raise SystemExit(f"no process listens on {url}")


if __name__ == "__main__":
    raise SystemExit(main())
