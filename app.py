"""LoRA Lab dashboard: `python -m lora_core serve` (or `make app`, `streamlit run app.py` on this machine only).

The entry point sets up navigation and the sign-in gate; each page in pages/ is layout and calls lora_ui, whose
service module is the one door to the engine (lora_core). Runs train in worker processes, never in this one.
On a shared server nothing below the gate runs until someone has signed in, and the pages a role may not use
are left out of the navigation (the service layer refuses their actions either way).
"""
import streamlit as st

from lora_ui import auth, service
from lora_ui.format import code, message_markdown
from lora_ui.state import keep_config_in_url, restore_config_from_url

st.set_page_config(page_title="LoRA Lab", page_icon="🧪", layout="wide")

actor = auth.gate()  # stops the script here until someone is signed in
auth.banner()

PAGES = {
    "Experiment": [
        ("pages/train.py", "Train", ":material/rocket_launch:"),
        ("pages/config_builder.py", "Config builder", ":material/tune:"),
        ("pages/estimator.py", "Estimator", ":material/memory:"),
        ("pages/qlora.py", "QLoRA loader", ":material/compress:"),
    ],
    "Results": [
        ("pages/runs.py", "Runs", ":material/list_alt:"),
        ("pages/compare.py", "Compare", ":material/bar_chart:"),
        ("pages/inspect.py", "Inspect", ":material/query_stats:"),
        ("pages/merge.py", "Merge & export", ":material/call_merge:"),
        ("pages/playground.py", "Playground", ":material/chat:"),
    ],
    "Server": [
        ("pages/team.py", "Team", ":material/admin_panel_settings:"),
    ],
}

page = st.navigation({section: [st.Page(path, title=title, icon=icon, default=path == "pages/train.py")
                                for path, title, icon in items if auth.may_open(path, actor)]
                      for section, items in PAGES.items() if any(auth.may_open(p, actor) for p, _, _ in items)})
link_problem = restore_config_from_url()  # a refresh, a new tab or a shared link: the config in the URL
keep_config_in_url()  # every page keeps it there (a page switch drops query parameters)

with st.sidebar:
    st.markdown("### :material/science: LoRA Lab")
    auth.sidebar_user(actor)
    st.caption("LoRA trains a low-rank update beside each frozen weight:  \n"
               "**W' = W + (α/r)·B·A**, with B ∈ ℝ^(d_out×r), A ∈ ℝ^(r×d_in).  \n"
               "Only A and B learn: r·(d_in + d_out) parameters per layer instead of d_in·d_out.")
    st.caption(f"Runs directory: {code(service.runs_dir())}")
    if link_problem:  # shown on every page until a config is chosen; a shared link's text shows as text
        st.warning(message_markdown(link_problem, escape=True), icon=":material/link_off:")

page.run()
