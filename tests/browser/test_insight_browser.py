"""The insight views in a real browser, on real tiny runs (a 2-rank × 2-seed sweep): the adapter inspector with
its heatmaps, spectrum and subspace similarity, and Compare's seed bands and parallel coordinates. Screenshots go
to test-artifacts/screenshots/ (inspect, compare_seeds, seed_bands, parallel_coordinates).

Skips (saying why) when /usr/bin/chromium or playwright is missing."""
from __future__ import annotations

from pathlib import Path

import pytest

from browser_helpers import CHROMIUM, browser_page, goto_page, no_exception_on_page, plot_index, settle, shot, \
    shot_element, streamlit_server
from helpers import tiny_config

pytestmark = [pytest.mark.browser, pytest.mark.timeout(600)]


@pytest.fixture
def server(tmp_path, monkeypatch):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium to run the real-browser test")
    pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")
    from lora_core.runs import Runs, RunStatus

    runs_dir = tmp_path / "runs"
    runs = Runs(runs_dir)
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")
    cfg = tiny_config(name="bands", **{"train.max_steps": 6, "train.eval_steps": 2})
    sweep_id, ids = runs.sweep(cfg, {"lora.r": [2, 8]}, seeds=2)
    for run_id in ids:
        record = runs.wait(run_id, timeout=400)
        assert record.status == RunStatus.SUCCEEDED, (record.error, record.error_log)
    with streamlit_server(runs_dir, tmp_path / "streamlit.log") as url:
        yield url, runs, sweep_id


def test_inspector_seed_bands_and_parallel_coordinates(server):
    url, runs, sweep_id = server
    with browser_page(url) as pg:
        pg.get_by_role("heading", name="Train", exact=True).wait_for()
        settle(pg)

        goto_page(pg, "Inspect")
        pg.get_by_text("Rank advice:").first.wait_for()
        pg.get_by_text("Subspace overlap").first.wait_for()  # a chart title: the other rank is picked already
        no_exception_on_page(pg)
        assert plot_index(pg, "d => d.length && d[0].type === 'heatmap'") >= 0
        assert plot_index(pg, "d => d.some(t => (t.name || '').startsWith('share of'))") >= 0
        shot(pg, "inspect")

        goto_page(pg, "Compare")
        pg.get_by_text("Parallel coordinates", exact=True).first.wait_for()
        pg.get_by_text("Train loss: mean ± std across seeds").first.wait_for()
        no_exception_on_page(pg)
        band = plot_index(pg, "d => d.some(t => t.fill === 'toself')")
        assert band >= 0, "no seed band on the loss chart"
        bars = plot_index(pg, "d => d.length && d[0].type === 'bar' && d[0].error_y && d[0].error_y.visible")
        assert bars >= 0, "no error bars"
        parallel = plot_index(pg, "d => d.length && d[0].type === 'parcoords'")
        assert parallel >= 0, "no parallel-coordinates plot"
        dims = pg.evaluate(f"() => document.querySelectorAll('.js-plotly-plot')[{parallel}].data[0].dimensions"
                           ".map(d => d.label)")
        assert dims == ["lora.r", "accuracy"]
        plots = pg.locator(".js-plotly-plot")
        shot_element(plots.nth(band), "seed_bands")
        shot_element(plots.nth(parallel), "parallel_coordinates")
        shot(pg, "compare_seeds")
