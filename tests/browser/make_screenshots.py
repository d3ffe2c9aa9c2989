"""Take the README's screenshots (docs/screenshots/train.png, compare.png, inspect.png) from real runs.

    .venv/bin/python tests/browser/make_screenshots.py [--runs DIR] [--only inspect]

Trains a real sweep on the offline default (bundled MiniLM, sample:sentiment-2): LoRA r=4/8/16 plus full
fine-tuning and head-only baselines, the default 5 epochs each (15-50 minutes on a 2-core CPU, by load), then
opens the dashboard in Chromium, starts one more LoRA run, captures the Train page while it trains, and the
Compare page for the sweep. With --runs DIR the runs are kept there, and a sweep already finished there is
reused. For inspect.png it trains LoRA r=8 and r=64 (same config otherwise) and shows the r=64 adapter against
the r=8 one on the Inspect page; `--only inspect` takes that one alone. Not a test (pytest does not collect it);
needs /usr/bin/chromium and playwright.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1]),
                str(Path(__file__).resolve().parents[2])]  # browser_helpers, the shared tests/helpers, lora_core
from browser_helpers import ROOT, SHOTS, browser_page, goto_page, loss_points, settle, streamlit_server  # noqa: E402
from browser_helpers import choose  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")

# the default config's epochs and learning rates (config.DEFAULT_LEARNING_RATES): the sweep a user launches
BASE = {"name": "minilm-sentiment", "data": {"max_length": 64}, "train": {"eval_steps": 5, "logging_steps": 1}}


def train_sweep(runs: Path) -> str:
    from lora_core.config import ExperimentConfig
    from lora_core.runs import Runs, RunStatus

    manager = Runs(runs)
    done = [r for r in manager.list(status=RunStatus.SUCCEEDED) if r.sweep_id]
    if len(done) >= 5:
        print(f"reusing sweep {done[0].sweep_id}", flush=True)
        return done[0].sweep_id

    sweep_id, ids = manager.sweep(ExperimentConfig.from_dict(dict(BASE, lora={"r": 4})),
                                  {"lora.r": [4, 8, 16], "method": ["full", "head-only"]})
    started = time.time()
    for run_id in ids:
        record = manager.wait(run_id, timeout=1800)
        print(f"  {record.name:<40} {record.status:<10} accuracy={record.results.get('accuracy')} "
              f"({time.time() - started:.0f} s)", flush=True)
        if record.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"{run_id} {record.status}: {record.error}")
    return sweep_id


def train_rank_pair(runs: Path) -> tuple[str, str]:
    """(r=64 run id, r=8 run id) of the offline default config, trained here or found finished in `runs`."""
    from lora_core.config import ExperimentConfig
    from lora_core.runs import Runs, RunStatus

    manager = Runs(runs)
    found = {r.name: r.id for r in manager.list(status=RunStatus.SUCCEEDED)}
    ids = {}
    for rank in (64, 8):
        name = f"minilm-sentiment-lora-r{rank}"
        if name in found:
            ids[rank] = found[name]
            continue
        ids[rank] = manager.launch(ExperimentConfig.from_dict(dict(BASE, name=name, lora={"r": rank})))
        record = manager.wait(ids[rank], timeout=1800)
        print(f"  {name}: {record.status} accuracy={record.results.get('accuracy')}", flush=True)
        if record.status != RunStatus.SUCCEEDED:
            raise SystemExit(f"{ids[rank]} {record.status}: {record.error}")
    return ids[64], ids[8]


def inspect_shot(pg, runs: Path, big: str, small: str) -> Path:
    from lora_core.runs import Runs
    from lora_ui.format import run_label

    manager = Runs(runs)
    goto_page(pg, "Inspect")
    big_rec, small_rec = manager.get(big, reconcile=False), manager.get(small, reconcile=False)
    choose(pg, "Adapter of run", run_label(big_rec))
    # the other adapter of the same base is picked by default when it is the only one
    pg.get_by_text(f"Subspace overlap φ({big_rec.lora_r}, {small_rec.lora_r})").first.wait_for()
    pg.wait_for_timeout(1500)
    full_shot(pg, SHOTS / "readme-inspect.png")
    return SHOTS / "readme-inspect.png"


def has_eval_chart(pg) -> bool:
    return pg.evaluate("""() => Array.from(document.querySelectorAll('.js-plotly-plot')).some(
        el => (el.data || []).some(t => t.name === 'accuracy' && (t.y || []).length >= 2))""")


def full_shot(pg, path: Path) -> None:
    height = pg.evaluate("""() => {
        const main = document.querySelector('[data-testid="stMain"]');
        return Math.max(main ? main.scrollHeight : 0, document.body.scrollHeight);
    }""")
    size = pg.viewport_size
    pg.set_viewport_size({"width": size["width"], "height": int(min(max(size["height"], height + 40), 4000))})
    pg.wait_for_timeout(1000)
    path.parent.mkdir(parents=True, exist_ok=True)
    pg.screenshot(path=str(path), full_page=True)
    pg.set_viewport_size(size)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", help="use (and keep) this runs directory instead of a temporary one")
    parser.add_argument("--only", choices=["inspect"], help="take only this screenshot")
    args = parser.parse_args()
    tmp = None if args.runs else tempfile.mkdtemp(prefix="lora-lab-shots-")
    runs = Path(args.runs) if args.runs else Path(tmp) / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    docs = ROOT / "docs" / "screenshots"
    try:
        if args.only == "inspect":
            print(f"training LoRA r=64 and r=8 in {runs} …", flush=True)
            big, small = train_rank_pair(runs)
            with streamlit_server(runs, runs.parent / "streamlit.log") as url, \
                    browser_page(url, width=1400, height=1000) as pg:
                pg.get_by_role("heading", name="Train", exact=True).wait_for()
                shot = inspect_shot(pg, runs, big, small)
            docs.mkdir(parents=True, exist_ok=True)
            shutil.copy(shot, docs / "inspect.png")
            print(f"wrote {docs / 'inspect.png'}")
            return 0
        print(f"training the sweep in {runs} …", flush=True)
        train_sweep(runs)
        from lora_core.config import ExperimentConfig
        from lora_core.runs import Runs

        with streamlit_server(runs, runs.parent / "streamlit.log", refresh_s=1.0) as url, \
                browser_page(url, width=1400, height=1000) as pg:
            pg.get_by_role("heading", name="Train", exact=True).wait_for()
            settle(pg)
            live = Runs(runs).launch(ExperimentConfig.from_dict(dict(BASE, name="minilm-lora-r8-live",
                                                                     train=dict(BASE["train"], epochs=6))))
            deadline = time.time() + 900
            while time.time() < deadline and (loss_points(pg) < 30 or not has_eval_chart(pg)):
                pg.wait_for_timeout(1000)
            if loss_points(pg) < 30:
                raise SystemExit("the live run never showed 30 loss points on the Train page")
            full_shot(pg, SHOTS / "readme-train.png")
            Runs(runs).stop(live)
            goto_page(pg, "Compare")
            pg.get_by_text("Efficiency frontier", exact=True).first.wait_for()
            pg.wait_for_timeout(1500)
            full_shot(pg, SHOTS / "readme-compare.png")
            inspect_shot(pg, runs, *train_rank_pair(runs))
        docs.mkdir(parents=True, exist_ok=True)
        shutil.copy(SHOTS / "readme-inspect.png", docs / "inspect.png")
        shutil.copy(SHOTS / "readme-train.png", docs / "train.png")
        shutil.copy(SHOTS / "readme-compare.png", docs / "compare.png")
        print(f"wrote {docs / 'train.png'} and {docs / 'compare.png'}")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
