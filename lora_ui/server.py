"""The dashboard's web server for `python -m lora_core serve` (the CLI decides the mode first, see
lora_core.team.serving): Streamlit's st.App running app.py, with the local-account sign-in routes
(lora_ui.signin) beside it on a team server."""
from __future__ import annotations

import importlib
from pathlib import Path

import streamlit as st
from streamlit import delta_generator

from lora_ui import signin

APP = Path(__file__).resolve().parents[1] / "app.py"
# What the pages need on every visit (pandas, plotly and the torch-free engine modules): about a second of imports
# that a fresh server pays here, before it listens, instead of on its first visitor's first page. No module with
# st.cache_* decorators: those belong to the runtime st.App starts.
WARM = ("pandas", "plotly.graph_objects", "lora_core.checks", "lora_core.data", "lora_core.memory",
        "lora_core.models", "lora_core.recipes", "lora_core.diagnose")


def run(host: str, port: int, *, team: bool, max_upload_mb: int, secrets_files: list[Path]) -> None:
    """Serve until stopped. The security-relevant options are set here, not left to a config.toml that a
    working directory may or may not have."""
    for name in WARM:
        importlib.import_module(name)
    # Streamlit's once-per-process "are we in a REPL?" check walks the caller's stack reading every frame's source
    # (~0.15 s in a page's first element); here, before listening, the stack is short
    getattr(delta_generator, "_maybe_print_use_warning", lambda: None)()
    app = st.App(str(APP), routes=signin.routes() if team else [])
    app.run(config={"server.address": host, "server.port": int(port), "server.headless": True,
                    "server.fileWatcherType": "none", "runner.magicEnabled": False, "runner.postScriptGC": False,
                    "browser.gatherUsageStats": False,
                    "server.maxUploadSize": int(max_upload_mb), "secrets.files": [str(p) for p in secrets_files]})
