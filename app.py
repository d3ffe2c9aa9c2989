"""LoRA Lab dashboard: `streamlit run app.py`.

The entry point only sets up navigation; each page in pages/ is layout and calls lora_ui, whose service module
is the one door to the engine (lora_core). Runs train in worker processes, never in this one.
"""
import streamlit as st

from lora_ui import service
from lora_ui.state import keep_config_in_url, restore_config_from_url

st.set_page_config(page_title="LoRA Lab", page_icon="🧪", layout="wide")

PAGES = {
    "Experiment": [
        st.Page("pages/train.py", title="Train", icon=":material/rocket_launch:", default=True),
        st.Page("pages/config_builder.py", title="Config builder", icon=":material/tune:"),
        st.Page("pages/estimator.py", title="Estimator", icon=":material/memory:"),
        st.Page("pages/qlora.py", title="QLoRA loader", icon=":material/compress:"),
    ],
    "Results": [
        st.Page("pages/runs.py", title="Runs", icon=":material/list_alt:"),
        st.Page("pages/compare.py", title="Compare", icon=":material/bar_chart:"),
        st.Page("pages/merge.py", title="Merge & export", icon=":material/call_merge:"),
        st.Page("pages/playground.py", title="Playground", icon=":material/chat:"),
    ],
}

page = st.navigation(PAGES)
link_problem = restore_config_from_url()  # a refresh, a new tab or a shared link: the config in the URL
keep_config_in_url()  # every page keeps it there (a page switch drops query parameters)

with st.sidebar:
    st.markdown("### :material/science: LoRA Lab")
    st.caption("LoRA trains a low-rank update beside each frozen weight:  \n"
               "**W' = W + (α/r)·B·A**, with B ∈ ℝ^(d_out×r), A ∈ ℝ^(r×d_in).  \n"
               "Only A and B learn: r·(d_in + d_out) parameters per layer instead of d_in·d_out.")
    st.caption(f"Runs directory: `{service.runs_dir()}`")
    if link_problem:  # shown on every page until a config is chosen
        st.warning(link_problem, icon=":material/link_off:")

page.run()
