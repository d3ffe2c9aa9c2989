"""Playground: classify text or generate with any finished run, the base model beside the tuned one.

The models load when "Load" is pressed and stay in this browser session (one run at a time), so trying
more inputs does not reload them. Inference only; nothing trains here.
"""
import pandas as pd
import streamlit as st

from lora_ui import service
from lora_ui.service import RunStatus
from lora_ui.state import PLAYGROUND
from lora_ui.widgets import attempt, pick_run, show_message

S = PLAYGROUND
EXAMPLES = {"seq-cls": "A wonderful, moving film with a brilliant cast.\nThe worst thing I have ever seen.\n"
                       "It was fine, nothing special.",
            "causal-lm": "\n".join(service.default_prompts())}


def load_section(rec) -> bool:
    """The Load button; True when this run's models are loaded."""
    loaded = S.get("loaded")
    ready = loaded is not None and loaded[0] == rec.id
    c1, c2 = st.columns([1, 3])
    if c1.button("Reload models" if ready else "Load models", type="secondary" if ready else "primary",
                 key=S.key("load")):
        S.pop("loaded")
        S.pop("output")
        models = attempt(S, "Load", service.load_run_models, rec.id,
                         spinner=f"Loading {rec.model} and the {rec.method} weights…")
        if models is not None:
            S["loaded"] = (rec.id, models)
            S.dismiss()
        st.rerun()
    c2.caption("Loaded: " + (f"`{rec.id}`" if ready else "nothing yet — loading takes a few seconds for small models."))
    return ready


def classification_table(rows: list[dict]) -> None:
    table = pd.DataFrame([{
        "text": r["text"],
        "base": r["base"]["label"], "base confidence": max(r["base"]["probs"].values()),
        "tuned": r["tuned"]["label"], "tuned confidence": max(r["tuned"]["probs"].values()),
        "changed": "✱" if r["base"]["label"] != r["tuned"]["label"] else "",
    } for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        "base confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f"),
        "tuned confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f"),
    })
    with st.expander("All probabilities"):
        st.json(rows)


def try_section(rec, ready: bool) -> None:
    task = rec.task
    text = st.text_area("Texts to classify (one a line)" if task == "seq-cls" else "Prompts (one a line)",
                        value=EXAMPLES.get(task, ""), key=S.key(f"text_{task}"), height=120)
    tokens = None
    if task == "causal-lm":
        tokens = st.number_input("New tokens", min_value=1, max_value=256, value=24, key=S.key("tokens"))
    lines = [t for t in text.splitlines() if t.strip()]
    if st.button("Classify" if task == "seq-cls" else "Generate", key=S.key("go"), disabled=not ready or not lines):
        models = S["loaded"][1]
        run = models.classify if task == "seq-cls" else lambda xs: models.generate(xs, max_new_tokens=int(tokens))
        rows = attempt(S, "Run", run, lines, spinner="Running both models…")
        if rows is not None:
            S["output"] = (rec.id, rows)
        st.rerun()
    output = S.get("output")
    if output and output[0] == rec.id:
        if task == "seq-cls":
            classification_table(output[1])
        else:
            st.dataframe(pd.DataFrame(output[1]), hide_index=True, width="stretch",
                         column_config={"base": "base model", "tuned": "tuned model"})


def main() -> None:
    st.title("Playground")
    st.caption("Try a finished run on your own inputs: the base model (what training started from) and the tuned "
               "model side by side. For LoRA runs the base is the same weights with the adapter switched off.")
    show_message(S)
    runs = [r for r in service.list_runs([RunStatus.SUCCEEDED, RunStatus.STOPPED])
            if (r.results or {}).get("artifact_dir")]
    rec = pick_run(runs, S.key("run"), "No finished runs with saved weights yet. Train one on the Train page.",
                   show_task=True)
    if rec is None:
        return
    try_section(rec, load_section(rec))
    generations = (service.results(rec.id) or {}).get("generations")
    if generations:
        before_after(generations)


def before_after(generations: list[dict]) -> None:
    """The held-out prompts answered by the base model before training and by the tuned model after it, side
    by side, and what changed (the engine counts answers in the training data's format)."""
    st.subheader("Before and after training")
    change = service.generation_change(generations)
    st.markdown(f"**What changed:** {change['summary']}.")
    for pair in generations:
        with st.container(border=True):
            st.markdown(f"**Prompt:** {pair['prompt']}")
            c1, c2 = st.columns(2)
            c1.caption("Base model (before training)")
            c1.code(pair["before"] or "(empty)", language="text", wrap_lines=True)
            c2.caption("Tuned model (after training)")
            c2.code(pair["after"] or "(empty)", language="text", wrap_lines=True)


main()
