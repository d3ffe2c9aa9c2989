"""Helpers for the AppTest tests: open a page, collect its texts and errors, tiny configs."""
from __future__ import annotations

import time
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")
PAGE_TIMEOUT = 120  # seconds; the first render of a page that builds a meta model imports torch

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


def tiny_config(**dotted):
    from lora_core.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict(TINY_SEQ_CLS)
    return cfg.replace(**dotted) if dotted else cfg


def open_page(page: str, session: dict | None = None) -> AppTest:
    """Run app.py, then switch to pages/<page>.py (with optional session state set first)."""
    at = AppTest.from_file(APP, default_timeout=PAGE_TIMEOUT)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    at.switch_page(f"pages/{page}.py").run()
    return at


def no_exception(at: AppTest) -> None:
    assert not at.exception, "\n".join(str(e.value) + "\n" + "\n".join(e.stack_trace) for e in at.exception)


def errors(at: AppTest) -> list[str]:
    return [e.value for e in at.error]


def texts(at: AppTest) -> str:
    """Every markdown, caption, success, info and warning text on the page, joined."""
    parts = []
    for kind in (at.markdown, at.caption, at.success, at.info, at.warning, at.error, at.subheader, at.title):
        parts += [str(e.value) for e in kind]
    return "\n".join(parts)


def wait_until(predicate, timeout=120.0, poll=0.2, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
