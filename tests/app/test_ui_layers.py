"""The dashboard's layers: pages reach the engine only through lora_ui.service; actions say who acted and fail
with engine errors; feedback lasts until the next action; the run picker never stops the page."""
import ast
from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from apptest_helpers import ROOT, errors, no_exception, open_page
from helpers import tiny_config
from lora_core.runs import Runs
from lora_core.errors import LoraLabError, RunError
from lora_core.team.access import os_user
from lora_ui import service
from lora_ui.service import ActionResult, RunStatus

pytestmark = pytest.mark.timeout(300)

UI_FILES = sorted([ROOT / "app.py", *(ROOT / "pages").glob("*.py"), *(ROOT / "lora_ui").glob("*.py")])


def engine_imports(path: Path) -> set[str]:
    """The lora_core modules a file imports."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("lora_core"):
            found |= {node.module} if node.module != "lora_core" else {f"lora_core.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lora_core")}
    return found


# The door: service.py, and insight.py, its second half (the analysis calls; service.py stays under 700 lines).
# placement.py is the door to the Ray backend (whether Ray is installed, its address variable, a cluster's status).
# signin.py's Starlette routes run outside any Streamlit session, where the session-bound service cannot act.
DOOR = {"service.py", "insight.py", "placement.py", "signin.py"}


def test_pages_and_lora_ui_reach_the_engine_only_through_the_service():
    allowed = {"lora_core.config", "lora_core.errors"}
    for path in UI_FILES:
        imports = engine_imports(path)
        if path.parent.name == "pages":
            assert imports <= {"lora_core.config"}, (path.name, imports)
        elif path.name not in DOOR:
            assert imports <= allowed, (path.name, imports)


def test_no_status_literals_in_the_dashboard():
    for path in UI_FILES:
        text = path.read_text(encoding="utf-8")
        for status in RunStatus:
            assert f'"{status.value}"' not in text and f"'{status.value}'" not in text, (path.name, status)


def test_pages_have_no_function_local_imports():
    for path in (ROOT / "pages").glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef):
                inner = [n for n in ast.walk(node) if isinstance(n, (ast.Import, ast.ImportFrom))]
                assert not inner, (path.name, node.name)


def stopped_without_checkpoint(runs_dir: Path) -> str:
    """A STOPPED run that never started (cancelled while queued): nothing to resume from."""
    record = Runs(runs_dir).create(tiny_config(name="never-started"))
    Runs(runs_dir).cancel(record.id)
    return record.id


def test_actions_return_results_and_raise_engine_errors(runs_dir):
    run_id = stopped_without_checkpoint(runs_dir)
    with pytest.raises(RunError, match="no checkpoint"):
        service.resume(run_id)
    with pytest.raises(LoraLabError):
        service.stop("no-such-run")
    queued = Runs(runs_dir).create(tiny_config(name="queued"))
    result = service.cancel(queued.id)
    assert isinstance(result, ActionResult)
    # local mode: the person at this machine acts as their OS user, the owner the CLI records too
    assert (result.action, result.actor, result.run_id) == ("cancel", os_user(), queued.id)
    assert Runs(runs_dir).get(queued.id, reconcile=False).status == RunStatus.STOPPED
    assert service.resume_blocker(queued.id)  # stopped before its first checkpoint: nothing to resume


def test_run_picker_returns_none_and_the_page_goes_on():
    def script():
        import streamlit as st

        from lora_ui.widgets import pick_run

        chosen = pick_run([], "pick", "Nothing to pick.")
        st.markdown(f"after the picker: {chosen}")

    at = AppTest.from_function(script).run()
    no_exception(at)
    assert at.info[0].value == "Nothing to pick."
    assert at.markdown[0].value == "after the picker: None"


def test_merge_page_without_runs_explains_and_keeps_its_layout(runs_dir):
    at = open_page("merge")
    no_exception(at)
    assert at.title[0].value == "Merge & export" and "No finished runs yet" in at.info[0].value
