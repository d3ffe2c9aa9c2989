"""Shared by the real-browser tests and the README screenshot script: start the dashboard (`streamlit run app.py`,
or `python -m lora_core serve` for a team server) and a local OpenID Connect provider, and drive a browser."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from helpers import free_port, stop_leftovers
from lora_core.runs import Runs

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
SHOTS = ROOT / "test-artifacts" / "screenshots"
BROWSER_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]


def wait_answering(url: str, proc: subprocess.Popen, log: Path, what: str, timeout: float = 90.0) -> None:
    """Until `url` answers 200; AssertionError with the log's tail when `proc` exits or time runs out."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{what} exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{what} not answering after {timeout} s:\n{log.read_text()[-3000:]}")


def wait_healthy(url: str, proc: subprocess.Popen, log: Path, timeout: float = 90.0) -> None:
    wait_answering(url + "/_stcore/health", proc, log, "streamlit", timeout)


@contextmanager
def _process(command: list[str], log: Path, env: dict, ready: Callable[[subprocess.Popen], None]):
    """Start `command` in its own process group (output to `log`), wait for `ready(proc)`, yield the process; end
    the whole group by its id on exit, even when the test failed."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        ready(proc)
        yield proc
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _dashboard_env(runs: Path, refresh_s: float, **extra: str) -> dict:
    return dict(os.environ, LORA_LAB_RUNS_DIR=str(runs), LORA_LAB_REFRESH_S=str(refresh_s), HF_HUB_OFFLINE="1",
                HF_DATASETS_OFFLINE="1", PYTHONUNBUFFERED="1", **extra)


@contextmanager
def streamlit_server(runs: Path, log: Path, refresh_s: float = 1.0, script: str = "app.py"):
    """`streamlit run app.py` (or another script) from the repository root, on a free port with
    LORA_LAB_RUNS_DIR=runs; yields its URL. On exit, stops the runs it left going and the server's whole process
    group."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "streamlit", "run", script, "--server.headless", "true",
               "--server.port", str(port), "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
               "--client.toolbarMode", "minimal"]
    try:
        with _process(command, log, _dashboard_env(runs, refresh_s), lambda proc: wait_healthy(url, proc, log)):
            yield url
    finally:
        stop_leftovers(Runs(runs))


@contextmanager
def serve_server(runs: Path, log: Path, *args: str, refresh_s: float = 1.0, **env: str):
    """`python -m lora_core serve --host 127.0.0.1 --port P ARGS` with LORA_LAB_RUNS_DIR=runs and `env`; yields
    its URL. On exit, stops the runs it left going and the server's process group."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "lora_core", "serve", "--host", "127.0.0.1", "--port", str(port), *args]
    try:
        with _process(command, log, _dashboard_env(runs, refresh_s, **env),
                      lambda proc: wait_healthy(url, proc, log)):
            yield url
    finally:
        stop_leftovers(Runs(runs))


@contextmanager
def oidc_provider(log: Path, users: list[dict]):
    """A real OpenID Connect provider on a free loopback port (the `oidc-provider-mock` package), knowing `users`
    (claims with a "sub"); yields its issuer URL. Its process group is ended on exit."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "oidc_provider_mock", "--port", str(port)]
    for user in users:
        command += ["--user-claims", json.dumps(user)]
    discovery = url + "/.well-known/openid-configuration"
    with _process(command, log, dict(os.environ),
                  lambda proc: wait_answering(discovery, proc, log, "the OpenID provider", 60)):
        yield url


@contextmanager
def chromium():
    """Debian's Chromium under Playwright (Playwright's own browser download cannot work offline)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def new_page(browser, url: str | None = None, width: int = 1440, height: int = 1000, init_script: str = ""):
    """A page in a fresh context (its own cookies: one signed-in person), opened at `url`."""
    context = browser.new_context(viewport={"width": width, "height": height})
    if init_script:
        context.add_init_script(init_script)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    if url:
        pg.goto(url)
    return pg


@contextmanager
def browser_page(url: str, width: int = 1440, height: int = 1000):
    """A Playwright page on Debian's Chromium, opened at `url`."""
    with chromium() as browser:
        pg = new_page(browser, url, width, height)
        try:
            yield pg
        finally:
            pg.context.close()


def settle(pg, timeout: float = 90.0) -> None:
    """Wait until the app is idle (no script running)."""
    pg.wait_for_timeout(300)
    deadline = time.time() + timeout
    while time.time() < deadline:
        if pg.locator('[data-testid="stStatusWidget"]').count() == 0:
            return
        pg.wait_for_timeout(200)


def goto_page(pg, title: str) -> None:
    # the link's accessible name may start with its Material icon's ligature text
    name = re.compile(rf"(^|\s){re.escape(title)}$")
    pg.locator('[data-testid="stSidebarNav"]').get_by_role("link", name=name).click()
    pg.get_by_role("heading", level=1).filter(has_text=title.split(" ")[0]).first.wait_for()
    settle(pg)


def shot(pg, name: str, docs: str | None = None) -> None:
    """A screenshot of the whole page: Streamlit scrolls inside its main block, so the viewport is grown to
    the content's height for the shot."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    height = pg.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        return Math.max(main ? main.scrollHeight : 0, document.body.scrollHeight);
    }""")
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": int(min(max(size["height"], height + 40), 7000))})
    pg.wait_for_timeout(600)  # let the charts re-layout
    pg.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)
    pg.set_viewport_size(size)
    if docs and os.environ.get("LORA_LAB_DOCS_SCREENSHOTS") == "1":
        (ROOT / "docs" / "screenshots").mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / f"{name}.png", ROOT / "docs" / "screenshots" / docs)


def shot_element(locator, name: str) -> None:
    """A screenshot of one element (e.g. a single chart) into test-artifacts/screenshots/."""
    SHOTS.mkdir(parents=True, exist_ok=True)
    locator.scroll_into_view_if_needed()
    locator.screenshot(path=str(SHOTS / f"{name}.png"))


def plot_index(pg, predicate_js: str) -> int:
    """The index among the page's Plotly charts of the first whose data satisfies `predicate_js` (a JS arrow
    function of the chart's data array), or -1."""
    return pg.evaluate(f"""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
        .findIndex(el => ({predicate_js})(el.data || []))""")


def fill(pg, label: str, value: str) -> None:
    box = pg.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    settle(pg)


def choose(pg, label: str, option: str) -> None:
    """Pick an option of an st.selectbox (a searchable combobox)."""
    pg.get_by_label(label, exact=True).click()
    pg.get_by_role("option", name=option, exact=True).click()
    settle(pg)


def loss_points(pg) -> int:
    """Points of the first 'train loss' trace among the Plotly charts on the page (0 if none yet)."""
    return pg.evaluate("""() => {
        for (const el of document.querySelectorAll('.js-plotly-plot')) {
            for (const t of (el.data || [])) {
                if ((t.name || '').endsWith('train loss')) return (t.y || []).length;
            }
        }
        return 0;
    }""")


def no_exception_on_page(pg) -> None:
    assert pg.locator('[data-testid="stException"]').count() == 0, pg.locator(
        '[data-testid="stException"]').first.inner_text()
