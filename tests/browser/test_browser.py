"""The dashboard in a real browser: `streamlit run app.py` on a free port, driven by Playwright through Debian's
Chromium. Build a config, launch a tiny run, watch the loss chart gain points while it trains (the live
fragment, no page reload), stop it, open Compare. Screenshots of every page go to test-artifacts/screenshots/.

Skips (saying why) when /usr/bin/chromium or playwright is missing; `make test` installs Debian's chromium.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from browser_helpers import CHROMIUM, browser_page, choose, fill, goto_page, loss_points, no_exception_on_page, \
    settle, shot, streamlit_server

PAGES = ["Train", "Config builder", "Estimator", "QLoRA loader", "Runs", "Compare", "Merge & export", "Playground"]

pytestmark = [pytest.mark.browser, pytest.mark.timeout(420)]


@pytest.fixture
def server(tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium; `make test` "
                    "does it when it can) to run the real-browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
    runs = tmp_path / "runs"
    runs.mkdir()
    with streamlit_server(runs, tmp_path / "streamlit.log") as url:
        yield url, runs


@pytest.fixture
def page(server):
    with browser_page(server[0]) as pg:
        yield pg


# -- the test -----------------------------------------------------------------------------------------------------

def more_loss_points(pg, than: int, timeout: float) -> int:
    """Wait, without reloading, until the page's loss chart has more than `than` points; how many it has then."""
    deadline, points = time.time() + timeout, 0
    while time.time() < deadline and (points := loss_points(pg)) <= than:
        pg.wait_for_timeout(500)
    assert points > than, f"the loss chart did not grow past {than} points in {timeout:g} s (it has {points})"
    return points


def test_build_launch_watch_stop_compare(page, server):
    from lora_core.runs import Runs, RunStatus

    _, runs_dir = server
    runs = Runs(runs_dir)
    pg = page
    pg.get_by_role("heading", name="Train", exact=True).wait_for()
    settle(pg)
    no_exception_on_page(pg)

    # build a config: a tiny classifier that trains long enough to watch
    goto_page(pg, "Config builder")
    pg.get_by_text("Trainable params").first.wait_for()
    fill(pg, "Run name", "browser-run")
    choose(pg, "Model", "tiny-random-gpt2")
    pg.get_by_role("tab", name="Training").click()
    fill(pg, "Max steps", "5000")  # stopped below long before the end
    fill(pg, "Log every N steps", "3")
    fill(pg, "Batch size", "8")
    pg.get_by_role("tab", name="Model & method").click()
    pg.get_by_text("✅ Valid config").wait_for()
    no_exception_on_page(pg)
    shot(pg, "config_builder")

    # launch it from the Train page
    goto_page(pg, "Train")
    pg.get_by_text("browser-run").first.wait_for(timeout=30_000)  # the config built above is what launches
    pg.get_by_role("button", name="Launch run").click()
    pg.get_by_text("Launched").first.wait_for()
    record = runs.list(reconcile=False)[0]
    assert record.name == "browser-run"

    # the live fragment redraws the loss chart with more points as the worker logs them
    first = more_loss_points(pg, than=1, timeout=180)
    more_loss_points(pg, than=first, timeout=60)
    no_exception_on_page(pg)
    shot(pg, "train_live", docs="train.png")

    # so does the Runs page's open run (issue 9 item 9: it said "No loss logged yet" until a reload)
    goto_page(pg, "Runs")  # the only run is the one open
    more_loss_points(pg, than=more_loss_points(pg, than=0, timeout=60), timeout=60)
    no_exception_on_page(pg)
    goto_page(pg, "Train")

    # stop it: graceful, the card turns into a stopped run with a Resume button
    pg.get_by_role("button", name="Stop").first.click()
    deadline = time.time() + 90
    while time.time() < deadline and not runs.get(record.id, reconcile=False).terminal:
        pg.wait_for_timeout(500)
    assert runs.get(record.id, reconcile=False).status is RunStatus.STOPPED
    pg.get_by_role("button", name="Resume").first.wait_for(timeout=30_000)
    shot(pg, "train_stopped")

    # every other page renders without an exception
    for title in PAGES[1:]:
        goto_page(pg, title)
        no_exception_on_page(pg)
        if title == "Compare":
            pg.get_by_text("Efficiency frontier", exact=True).first.wait_for()
            pg.locator(".js-plotly-plot").first.wait_for()
            shot(pg, "compare", docs="compare.png")
        else:
            shot(pg, title.lower().replace(" & ", "_").replace(" ", "_"))


def test_level2_recipe_reaches_compare_with_three_runs(page, server):
    """The Level 2 recipe ("Full vs LoRA vs frozen backbone") from the Train page's one-click button, capped at
    a few steps per run: Compare opens on its sweep and shows the three finished runs. Then screenshots of the
    fixed Train, Runs, QLoRA loader and Merge pages."""
    from lora_core.runs import Runs, RunStatus

    _, runs_dir = server
    runs = Runs(runs_dir)
    pg = page
    pg.get_by_role("heading", name="Train", exact=True).wait_for()
    settle(pg)
    pg.get_by_role("tab", name="Tutorial recipes").click()
    fill(pg, "Quick look: at most this many steps per run (0 = the recipe's full length)", "2")
    pg.get_by_text("Full vs LoRA vs frozen backbone").first.wait_for()
    pg.get_by_role("button", name=re.compile(r"Launch$")).nth(1).click()  # recipes in order: Level 1, Level 2
    pg.get_by_role("heading", name="Compare", exact=True).wait_for(timeout=60_000)  # the button opens Compare
    launched = runs.list(reconcile=False)
    assert sorted(r.method for r in launched) == ["full", "head-only", "lora"]
    assert len({r.sweep_id for r in launched}) == 1
    for rec in launched:
        assert runs.wait(rec.id, timeout=360).status is RunStatus.SUCCEEDED, rec.id
    goto_page(pg, "Compare")
    # the sweep picker (a combobox: its value may sit in an input) names the sweep with its 3 finished runs
    pg.wait_for_function("""(want) => document.body.innerText.includes(want) ||
        [...document.querySelectorAll('input')].some(i => (i.value || '').includes(want))""",
                         arg=f"{launched[0].sweep_id} (3 finished runs)", timeout=60_000)
    pg.get_by_text("Efficiency frontier", exact=True).first.wait_for()
    no_exception_on_page(pg)
    shot(pg, "compare_level2")

    goto_page(pg, "Train")  # idle: three finished cards, the live clock stopped
    pg.get_by_text("Finished").first.wait_for()
    shot(pg, "train_fixed")
    goto_page(pg, "Runs")
    pg.get_by_text("Succeeded").first.wait_for()
    shot(pg, "runs_fixed")

    goto_page(pg, "QLoRA loader")
    choose(pg, "Model", "tiny-random-llama")
    pg.get_by_role("button", name="Load in 4-bit").click()
    pg.get_by_text("in 4-bit NF4").first.wait_for(timeout=120_000)
    settle(pg)
    no_exception_on_page(pg)
    shot(pg, "qlora_fixed")

    goto_page(pg, "Merge & export")
    pg.get_by_label("Run", exact=True).click()
    pg.get_by_role("option").filter(has_text="lora r=8").first.click()
    settle(pg)
    pg.get_by_role("button", name="Merge and verify").click()
    pg.get_by_text("Verified").first.wait_for(timeout=180_000)
    settle(pg)
    assert pg.get_by_text("not merged yet").count() == 0  # the status tile follows the merge
    no_exception_on_page(pg)
    shot(pg, "merge_fixed")


def test_an_idle_train_page_notices_a_run_started_elsewhere(page, server):
    """Nothing live, so the Train page's live panel has no clock; a run launched elsewhere (the CLI, a teammate)
    still appears on it within lora_ui.live.IDLE_CHECK_S, without a reload."""
    from helpers import tiny_config
    from lora_core.runs import Runs

    _, runs_dir = server
    pg = page
    pg.get_by_text("Nothing is training right now").first.wait_for()
    settle(pg)
    runs = Runs(runs_dir)
    run_id = runs.launch(tiny_config(name="started-elsewhere", **{"train.max_steps": 2000}))
    try:
        pg.get_by_text("started-elsewhere").first.wait_for(timeout=40_000)
        assert pg.get_by_text("Nothing is training right now").count() == 0
        no_exception_on_page(pg)
    finally:
        runs.stop(run_id)
