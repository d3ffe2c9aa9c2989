"""How long each dashboard page takes to render with 200 runs in the registry (goal: under 1 s each).

    .venv/bin/python bench/ui_latency.py [--runs 200] [--repeats 5]

Set-up: one real tiny run is trained through the launcher (tiny-random-gpt2, 2 steps). Then BENCH FIXTURES:
200 more runs are created through the engine's run manager with real, validated configs (LoRA ranks 2-64, full,
head-only, QLoRA; in sweeps of 5) and given that real run's metrics stream and results — written through
the engine's own API (Runs.create, files.append_event, Registry.set_status, files.write_json), with the method/rank/params
fields adjusted per run. They are labelled as fixtures in their names; nothing here claims they were trained.

Each page is rendered through Streamlit's AppTest in a fresh Python process (so nothing is imported or
cached beforehand): once on its first visit and then `--repeats` times warm; the table prints the first
visit and the warm median. Pages that load models only on a button press (QLoRA loader, Playground, Merge) are
timed as a user first sees them.

Then the Config builder's first visit in a FRESH server, as a user meets it: `make app`'s `python -m lora_core
serve` on a free loopback port (and, beside it, a bare `streamlit run app.py`), headless Chromium (Playwright) opens /config_builder, and the clock stops when the page has
rendered its summary ("✅ Valid config", after the parameter counts and the memory estimate). One unmeasured
visit first, so the model counts as "seen before" (the engine may keep what it learnt on disk); then
`--first-visits` fresh servers of each kind, alternated, each timed once: `first_visit_s page=config_builder
median=...` for `serve` (goal 1.5 s). A third kind is Streamlit's floor: a bare page (a title and the same
line) served by `streamlit run` and opened the same way, `first_visit_s page=bare_streamlit median=...`. Each
`serve` server is then visited once more in a new browser context, `first_visit_s
page=config_builder_warm_server`: by then the engine's answers are cached in the server, which only reruns the
page script for the new session (~0.05 s), so that figure is mostly the browser's share.
`--first-visit-only` skips the page table (no training, no fixtures).

Then the idle Train page's server CPU (`--idle-seconds`, default 20; goal under 2% of one core): a fresh
`streamlit run`, headless Chromium opens Train with a tiny config in its URL and clicks Launch 5 times, waits
until the 5 runs have finished and their cards show "Finished", then measures the server process's CPU time
(user + system, from /proc via psutil) over the window while the page sits open with nothing live:
`idle_cpu page=train finished_runs=5 seconds=20 cpu_pct_of_core=...`. `--idle-only` runs only this.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PAGES = ["train", "config_builder", "estimator", "qlora", "runs", "compare", "merge", "playground"]
GOAL_S = 1.0
FIRST_VISIT_GOAL_S = 1.5
IDLE_GOAL_PCT = 2.0
IDLE_RUNS = 5
# the tiny config the idle measurement launches, as the URL carries it (lora_ui.state: one parameter per field)
IDLE_QUERY = ("?name=idle-bench&model.source=tiny-random-gpt2&train.max_steps=2&train.batch_size=8"
              "&data.max_train_samples=16&data.max_eval_samples=16&data.max_length=32")
SUMMARY_TEXT = "✅ Valid config"  # the Config builder's summary line, drawn last
WARM_SERVER = "serve, again"  # the second visit to a serve server: the engine's answers are cached by then
# Streamlit's own floor on this machine: a page with a title and one line, served and opened the same way
BARE_PAGE = 'import streamlit as st\nst.title("Bare page")\nst.caption("{text}")\n'


def train_template(runs_dir: Path):
    """One real run whose metrics and results the fixtures copy."""
    from lora_core.config import ExperimentConfig
    from lora_core.runs import Runs, RunStatus

    cfg = ExperimentConfig.from_dict({
        "name": "bench-template", "model": {"source": "tiny-random-gpt2"}, "lora": {"r": 2},
        "data": {"max_train_samples": 16, "max_eval_samples": 16, "max_length": 32},
        "train": {"max_steps": 2, "batch_size": 8, "logging_steps": 1}})
    runs = Runs(runs_dir)
    run_id = runs.launch(cfg)
    record = runs.wait(run_id, timeout=600)
    if record.status != RunStatus.SUCCEEDED:
        raise SystemExit(f"template run {run_id} ended {record.status}: {record.error}")
    return run_id


def make_fixtures(runs_dir: Path, template_id: str, n: int) -> None:
    """n finished runs through the engine's API, copying the template run's metrics and results."""
    from lora_core.config import ExperimentConfig
    from lora_core.models import count_params
    from lora_core.runs import Runs, RunStatus, files, store

    runs = Runs(runs_dir)
    events = runs.metrics(template_id)
    results = runs.results(template_id) or {}
    variants = [("lora", 2), ("lora", 8), ("lora", 64), ("full", None), ("head-only", None)]
    counts: dict = {}
    for i in range(n):
        method, rank = variants[i % len(variants)]
        sweep_id = f"sweep-bench-fixture-{i // len(variants):03d}"
        cfg = ExperimentConfig.from_dict({"name": f"bench-fixture-{i:03d}", "method": method,
                                          "lora": {"r": rank or 8}, "model": {"source": "tiny-random-gpt2"}})
        record = runs.create(cfg, sweep_id=sweep_id)
        for event in events:
            files.append_event(record.dir.metrics, event)
        if (method, rank) not in counts:  # the real counts for this config (meta device)
            counts[(method, rank)] = count_params(cfg)
        c = counts[(method, rank)]
        res = dict(results, method=method, trainable_params=c["trainable"], total_params=c["total"],
                   trainable_percent=c["percent"], accuracy=0.5 + 0.4 * ((i * 37) % 100) / 100, bench_fixture=True)
        runs.registry.set_status(record.id, RunStatus.RUNNING)
        files.write_json(record.dir.results, res)
        runs.registry.set_status(record.id, RunStatus.SUCCEEDED, results=store.key_results(res))


def time_pages(repeats: int) -> list[tuple[str, float, float]]:
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=300)
    at.run()
    rows = []
    for page in PAGES:
        started = time.perf_counter()
        at.switch_page(f"pages/{page}.py").run()
        cold = time.perf_counter() - started
        if at.exception:
            raise SystemExit(f"{page}: {at.exception[0].value}")
        warm = []
        for _ in range(repeats):
            started = time.perf_counter()
            at.run()
            warm.append(time.perf_counter() - started)
        rows.append((page, cold, statistics.median(warm)))
    return rows


def first_visits(runs_dir: Path, visits: int) -> dict[str, list[float]]:
    """Seconds from opening /config_builder in a fresh server until its summary shows, once per server (after
    one unmeasured visit that lets the engine see the model), alternating three ways to start one: `make app`'s
    `python -m lora_core serve` (imports the engine before it listens), a bare `streamlit run app.py`, and
    Streamlit's floor (`bare_server`, a page with a title and the summary's line, opened at /)."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "browser")]  # browser_helpers imports helpers
    from browser_helpers import BROWSER_ARGS, CHROMIUM, serve_server, streamlit_server
    from playwright.sync_api import sync_playwright

    if not Path(CHROMIUM).exists():
        raise SystemExit(f"{CHROMIUM} is missing: the first-visit timing needs Debian's chromium")
    servers = {"serve": serve_server, "streamlit run": streamlit_server, "bare Streamlit": bare_server}
    times: dict[str, list[float]] = {name: [] for name in [*servers, WARM_SERVER]}

    def visit(url: str) -> float:  # a new browser context each time: nothing cached in the browser
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        page = context.new_page()
        started = time.perf_counter()
        page.goto(url)
        page.get_by_text(SUMMARY_TEXT).first.wait_for(timeout=180_000)
        took = time.perf_counter() - started
        context.close()
        return took

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            for i in range(visits + 1):
                for name, server in servers.items():
                    with server(runs_dir, runs_dir.parent / f"server-{i}-{name.replace(' ', '-')}.log") as url:
                        took = visit(url + ("/" if server is bare_server else "/config_builder"))
                        if i and server is serve_server:  # the same page again: the server's part is cached now
                            times[WARM_SERVER].append(visit(url + "/config_builder"))
                    if i:  # the first round only warms the engine's on-disk caches
                        times[name].append(took)
        finally:
            browser.close()
    return times


@contextmanager
def bare_server(runs_dir: Path, log: Path):
    """`streamlit run` of a page that draws a title and one line, from the repository root like app.py (so with
    the same .streamlit/config.toml): what any Streamlit page costs here."""
    from browser_helpers import streamlit_server

    script = runs_dir.parent / "bare_page.py"
    script.write_text(BARE_PAGE.format(text=SUMMARY_TEXT))
    with streamlit_server(runs_dir, log, script=str(script)) as url:
        yield url


def print_first_visits(runs_dir: Path, visits: int) -> None:
    times = first_visits(runs_dir, visits)
    print(f"\nConfig builder, first visit in a fresh server (until its summary shows), {visits} servers each:")
    for name, seconds in times.items():
        print(f"  {name:<14} " + ", ".join(f"{t:.2f}" for t in seconds) + f" s (median {statistics.median(seconds):.3f})")
    median = statistics.median(times["serve"])
    print(f"first_visit_s page=config_builder median={median:.3f} goal<={FIRST_VISIT_GOAL_S:g} "
          f"{'ok' if median <= FIRST_VISIT_GOAL_S else 'SLOW'} (make app: python -m lora_core serve)")
    print(f"first_visit_s page=bare_streamlit median={statistics.median(times['bare Streamlit']):.3f} (a title "
          "and one line: Streamlit's own first visit on this machine, the floor under any page)")
    print(f"first_visit_s page=config_builder_warm_server median={statistics.median(times[WARM_SERVER]):.3f} (the "
          "same page again from the same server, in a new browser context: the server only reruns the script with "
          "the engine's answers cached, so this is mostly the browser drawing the page)")


def _server_process(url: str):
    """The `streamlit run` child of this process serving `url` (psutil.Process)."""
    import psutil

    port = url.rsplit(":", 1)[1]
    for child in psutil.Process().children(recursive=True):
        try:
            if "streamlit" in " ".join(child.cmdline()) and port in child.cmdline():
                return child
        except psutil.Error:
            continue
    raise SystemExit(f"no streamlit process serving {url}")


def idle_train_cpu(runs_dir: Path, seconds: float) -> float:
    """Percent of one core the server used over `seconds` with the Train page open, IDLE_RUNS finished runs
    launched from it and nothing live."""
    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "browser")]  # browser_helpers imports helpers
    from browser_helpers import browser_page, settle, streamlit_server

    from lora_core.runs import Runs

    with streamlit_server(runs_dir, runs_dir.parent / "streamlit-idle.log", refresh_s=2.0) as url:
        with browser_page(url + "/" + IDLE_QUERY) as pg:
            settle(pg)
            for _ in range(IDLE_RUNS):
                pg.get_by_role("button", name="Launch run").click()
                settle(pg)
                pg.wait_for_timeout(2500)  # past the double-click guard: each click is a new run
            runs = Runs(runs_dir)
            for rec in runs.list(reconcile=False):
                runs.wait(rec.id, timeout=900)
            pg.wait_for_function(f"document.body.innerText.split('Finished').length > {IDLE_RUNS}",
                                 timeout=120_000)
            settle(pg)
            pg.wait_for_timeout(3000)  # let the last full rerun (the clock stopping) end
            server = _server_process(url)
            before = server.cpu_times()
            time.sleep(seconds)
            after = server.cpu_times()
    used = (after.user - before.user) + (after.system - before.system)
    return 100.0 * used / seconds


def print_idle(runs_dir: Path, seconds: float) -> None:
    pct = idle_train_cpu(runs_dir, seconds)
    print(f"\nTrain page open, {IDLE_RUNS} finished runs launched from it, nothing live: server CPU over "
          f"{seconds:g} s")
    print(f"idle_cpu page=train finished_runs={IDLE_RUNS} seconds={seconds:g} cpu_pct_of_core={pct:.2f} "
          f"goal<{IDLE_GOAL_PCT:g} {'ok' if pct < IDLE_GOAL_PCT else 'BUSY'}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--first-visits", type=int, default=5, help="fresh servers timed for the first visit")
    parser.add_argument("--first-visit-only", action="store_true", help="only the Config builder's first visit")
    parser.add_argument("--idle-seconds", type=float, default=20.0, help="idle Train page CPU window")
    parser.add_argument("--idle-only", action="store_true", help="only the idle Train page's server CPU")
    parser.add_argument("--time-only", action="store_true", help=argparse.SUPPRESS)  # the fresh child process
    args = parser.parse_args()
    if args.time_only:
        print(json.dumps(time_pages(args.repeats)))
        return 0

    with tempfile.TemporaryDirectory() as tmp:
        runs_dir = Path(tmp) / "runs"
        os.environ["LORA_LAB_RUNS_DIR"] = str(runs_dir)
        if args.idle_only:
            runs_dir.mkdir()
            print_idle(runs_dir, args.idle_seconds)
            return 0
        if args.first_visit_only:
            runs_dir.mkdir()
            print_first_visits(runs_dir, args.first_visits)
            return 0
        started = time.perf_counter()
        template = train_template(runs_dir)
        make_fixtures(runs_dir, template, args.runs - 1)
        from lora_core.runs import Runs

        count = len(Runs(runs_dir).list(reconcile=False))
        print(f"registry: {count} runs (1 trained + {count - 1} bench fixtures), set up in "
              f"{time.perf_counter() - started:.1f} s")
        child = subprocess.run([sys.executable, __file__, "--time-only", "--repeats", str(args.repeats)],
                               capture_output=True, text=True, env=dict(os.environ), cwd=ROOT)
        if child.returncode != 0:
            raise SystemExit(f"page timing failed:\n{child.stderr[-3000:]}")
        rows = json.loads(child.stdout.strip().splitlines()[-1])
        print_first_visits(runs_dir, args.first_visits)
        idle_dir = Path(tmp) / "idle-runs"
        idle_dir.mkdir()
        print_idle(idle_dir, args.idle_seconds)

    print(f"\n{'page':<16}{'first visit (s)':>16}{'warm median (s)':>17}  goal < {GOAL_S:g} s")
    for page, cold, warm in rows:
        print(f"{page:<16}{cold:>16.3f}{warm:>17.3f}  {'ok' if warm < GOAL_S else 'SLOW'}")
    worst = max(rows, key=lambda r: r[2])
    print(f"\nworst warm render: {worst[0]} {worst[2]:.3f} s; "
          f"pages under {GOAL_S:g} s warm: {sum(r[2] < GOAL_S for r in rows)}/{len(rows)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
