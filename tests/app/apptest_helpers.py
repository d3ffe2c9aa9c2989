"""Helpers for the AppTest tests: open a page, collect its texts and errors. (Tiny configs and waiting live in
tests/helpers.py, shared with the other folders.)"""
from __future__ import annotations

from streamlit.testing.v1 import AppTest

from helpers import ROOT

APP = str(ROOT / "app.py")
PAGE_TIMEOUT = 120  # seconds; the first render of a page that builds a meta model imports torch


def open_page(page: str, session: dict | None = None, query: dict | None = None) -> AppTest:
    """Run app.py, then switch to pages/<page>.py (with optional session state and URL query parameters set
    first: `query` is what a refresh or a shared link brings)."""
    at = AppTest.from_file(APP, default_timeout=PAGE_TIMEOUT)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.query_params.update(query or {})
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


def button(at: AppTest, key: str):
    """The button with this key (AppTest finds buttons by index otherwise)."""
    return next(b for b in at.button if b.key == key)


def open_tab(at: AppTest, name: str) -> AppTest:
    """Open a Config builder tab and rerun: only the open tab's widgets are drawn (the others keep their values)."""
    at.session_state["cfg_tab"] = name
    return at.run()
