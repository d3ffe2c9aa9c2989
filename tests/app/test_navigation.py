"""Every page through app.py's navigation, in one session, against real runs; and the pages that need no
model really do not import torch."""
import json
import os
import subprocess
import sys

import pytest

from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, ROOT, no_exception

pytestmark = pytest.mark.timeout(300)

PAGES = ["train", "config_builder", "estimator", "qlora", "runs", "compare", "inspect", "merge", "playground"]
LIGHT_PAGES = ["train", "qlora", "runs", "compare", "inspect", "merge", "playground"]  # no model until a button press


def test_every_page_renders_in_one_session(use_seeded):
    at = AppTest.from_file(APP, default_timeout=120).run()
    no_exception(at)
    assert at.title[0].value == "Train"  # the default page
    # the sidebar explains LoRA and names the runs directory (AppTest drops the entry point's sidebar after a
    # switch_page, so it is checked on the first run)
    sidebar = " ".join(str(getattr(e, "value", "")) for e in at.sidebar)
    assert "W' = W + (α/r)·B·A" in sidebar and str(use_seeded) in sidebar
    for page in PAGES:
        at.switch_page(f"pages/{page}.py").run()
        no_exception(at)
        assert at.title, f"{page} has no title"


def heavy_modules_seen(pages: list[str], runs) -> dict[str, list[str]]:
    """Render `pages` in order in a fresh Python process; for each, which of torch/transformers/peft it had
    imported by then."""
    script = f"""
import json, sys
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({APP!r}, default_timeout=120).run()
seen = {{}}
for page in {pages!r}:
    at.switch_page(f"pages/{{page}}.py").run()
    assert not at.exception, (page, [e.value for e in at.exception])
    seen[page] = [m for m in ("torch", "transformers", "peft") if m in sys.modules]
print(json.dumps(seen))
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=240,
                         env=dict(os.environ, LORA_LAB_RUNS_DIR=str(runs)))
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_light_pages_do_not_import_torch(use_seeded):
    assert heavy_modules_seen(LIGHT_PAGES, use_seeded) == {page: [] for page in LIGHT_PAGES}


def test_config_builder_needs_no_torch_for_a_model_seen_before(runs_dir):
    heavy_modules_seen(["config_builder"], runs_dir)  # the first visit may import torch and fill the disk cache
    assert heavy_modules_seen(["config_builder"], runs_dir) == {"config_builder": []}
