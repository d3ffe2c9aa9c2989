"""Widgets several pages draw: a bundled choice or "Other…", a run picker, run-action buttons with feedback that
lasts (and a guard against double-clicks), and errors placed under the field they name."""
from __future__ import annotations

import time
from typing import Any, Callable

import streamlit as st

from lora_ui.format import error_text, md, message_markdown, run_label
from lora_ui.service import ActionResult
from lora_ui.state import PageState, track_runs

# A second click on the same action with the same arguments this soon after the first one did its work is a
# double-click (the browser sends both before the page has redrawn): it is ignored, so one click is one run.
GUARD_S = 2.0


# -- errors ------------------------------------------------------------------------------------------------------

def show_error(exc: BaseException, where=None) -> None:
    """An error as st.error (in `where` if given), never a traceback; a list of problems as bullets; what it
    quotes shows as text."""
    (where or st).error(message_markdown(error_text(exc), escape=True), icon="🚫")


class FieldSlots:
    """An empty slot under each form field, so an error that names a field lands next to it."""

    def __init__(self) -> None:
        self._slots: dict[str, Any] = {}

    def add(self, dotted: str) -> None:
        self._slots[dotted] = st.empty()

    def _best(self, dotted: str):
        # "lora.target_modules[0]" -> "lora.target_modules"; fall back to the section
        key = dotted.split("[")[0]
        while key:
            if key in self._slots:
                return self._slots[key]
            key = key.rpartition(".")[0]
        return None

    def show_if_drawn(self, exc: BaseException, field: str = "") -> None:
        """`exc` under its field when that field (or its section) is on the page now; nothing when it is not (a
        closed tab draws none: the caller says it elsewhere)."""
        if self._best(getattr(exc, "field", "") or field) is not None:
            self.show(exc, field=field)

    def show(self, exc: BaseException, fallback=None, field: str = "", level: str = "error") -> None:
        """Show `exc` under the field it names, or under `field` (named in front) for an error that names none."""
        text = error_text(exc)
        if getattr(exc, "field", ""):
            field = exc.field
        elif field and not text.startswith(field):
            text = f"{field}: {text}"
        slot = self._best(field) if field else None
        getattr(slot or fallback or st, level)(message_markdown(text, escape=True),
                                               icon="🚫" if level == "error" else "ℹ️")

    def info(self, exc: BaseException, field: str = "", fallback=None) -> None:
        """A notice (not a fault) under the field it concerns."""
        self.show(exc, fallback=fallback, field=field, level="info")


# -- pickers -----------------------------------------------------------------------------------------------------

def choice_or_other(label: str, choices, other: str, *, key: str, custom_key: str, custom_label: str,
                    placeholder: str | None = None, help: str | None = None, index: int = 0,
                    persist: str | None = None, beside: Callable[[str], None] | None = None) -> str:
    """A selectbox of bundled choices plus `other`; choosing `other` opens a text box beside it. Returns the
    chosen value, or the typed one (stripped, possibly "") for `other`. `beside(choice)` draws in the space
    beside the selectbox when a listed choice is picked."""
    left, right = st.columns([1, 2])
    choice = left.selectbox(label, [*choices, other], index=index, key=key, help=help, persist_state=persist)
    if choice == other:
        return (right.text_input(custom_label, key=custom_key, placeholder=placeholder,
                                 persist_state=persist) or "").strip()
    if beside is not None:
        with right:
            beside(choice)
    return choice


def pick_run(runs: list, key: str, empty: str, *, show_task: bool = False, label: str = "Run"):
    """A selectbox over `runs`; with none, shows `empty` and returns None (the page goes on drawing)."""
    if not runs:
        st.info(empty)
        return None
    by_id = {r.id: r for r in runs}
    return by_id[st.selectbox(label, list(by_id), key=key, format_func=lambda i: run_label(by_id[i], show_task))]


# -- actions -----------------------------------------------------------------------------------------------------

def action_button(page: PageState, label: str, action: Callable[..., ActionResult | str], *args: Any, key: str,
                  where=None, verb: str | None = None, why_disabled: str | None = None, submit: bool = False,
                  **button: Any) -> None:
    """A button that runs `action(*args)` as its callback and posts the outcome as the page's message: the
    result's message, or the error (prefixed by `verb` or the label, and the run id). With `why_disabled` the
    button is drawn disabled and its tooltip says why; with `submit` it is the submit button of the st.form it
    is drawn in (the action reads the form's widgets from session state)."""
    if why_disabled:
        button.update(disabled=True, help=why_disabled)
    guard = f"{key}|{args!r}"
    draw = (where or st).form_submit_button if submit else (where or st).button
    draw(label, key=key, on_click=_perform, args=(page, verb or label, action, args, guard), **button)


def _perform(page: PageState, verb: str, action: Callable[..., ActionResult | str], args: tuple,
             guard: str = "") -> None:
    done = page.setdefault("done", {})
    if guard and time.monotonic() - done.get(guard, float("-inf")) < GUARD_S:
        previous = page.message()
        page.post(previous.level if previous else "info", previous.text if previous else verb,
                  note=f"A second click on {verb} within {GUARD_S:g} s was ignored, so nothing ran twice.")
        return
    try:
        result = action(*args)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the page's message, never a traceback
        subject = f" {args[0]}" if args and isinstance(args[0], str) else ""
        page.post("error", md(f"{verb}{subject}: {error_text(exc)}"))
        return
    done[guard] = time.monotonic()
    if isinstance(result, ActionResult):
        track_runs(result.new_runs)
        result = result.message
    page.post("success", result)


def attempt(page: PageState, verb: str, action: Callable[..., Any], *args: Any, spinner: str = "Working…",
            **kwargs: Any) -> Any:
    """Run a slow action now (behind an `if st.button(...)`) under a spinner. Returns its result; on failure posts
    the error as the page's message and returns None. Follow it with st.rerun() so the page redraws from state
    (the message, the loaded model, fresh panels)."""
    try:
        with st.spinner(spinner):
            return action(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - every failure becomes the page's message, never a traceback
        page.post("error", md(f"{verb}: {error_text(exc)}"))
        return None


def show_message(page: PageState, where=None) -> None:
    """The page's last action message, on every rerun until the next action replaces it or it is dismissed."""
    message = page.message()
    if message is None:
        return
    text_col, close_col = (where or st).columns([24, 1], vertical_alignment="center")
    getattr(text_col, message.level)(message_markdown(message.text))
    if message.note:
        text_col.caption(message.note)
    close_col.button(":material/close:", key=page.key("dismiss"), on_click=page.dismiss, help="Dismiss this message")
