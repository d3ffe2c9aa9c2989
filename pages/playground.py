"""Playground: classify text or generate with any finished run, the base model beside the tuned one.

The models load when "Load" is pressed and stay in this browser session (one run at a time), so trying
more inputs does not reload them. Inference only; nothing trains here.
"""
import pandas as pd
import streamlit as st

from lora_ui.common import DONE, error_text, pick_run, runs

S = st.session_state
EXAMPLES = {"seq-cls": "A wonderful, moving film with a brilliant cast.\nThe worst thing I have ever seen.\n"
                       "It was fine, nothing special.",
            "causal-lm": "Write a short greeting:\nThe movie was"}

st.title("Playground")
st.caption("Try a finished run on your own inputs: the base model (what training started from) and the tuned "
           "model side by side. For LoRA runs the base is the same weights with the adapter switched off.")

rec = pick_run(list(DONE), "play_run",
               "No finished runs with saved weights yet. Train one on the Train page.",
               keep=lambda r: bool((r.results or {}).get("artifact_dir")), show_task=True)
loaded = S.get("play_loaded")
ready = loaded is not None and loaded[0] == rec.id

c1, c2 = st.columns([1, 3])
if c1.button("Load models" if not ready else "Reload models", type="primary" if not ready else "secondary",
             key="play_load"):
    try:
        from lora_core import inference

        with st.spinner(f"Loading {rec.model} and the {rec.method} weights…"):
            S["play_loaded"] = (rec.id, inference.load_run(runs().config(rec.id), runs().dir(rec.id).artifacts))
        S.pop("play_output", None)
        ready = True
    except Exception as exc:  # noqa: BLE001 - e.g. a run that stopped before saving (ModelError says so)
        S.pop("play_loaded", None)
        st.error(error_text(exc), icon="🚫")
c2.caption("Loaded: " + (f"`{rec.id}`" if ready else "nothing yet — loading takes a few seconds for small models."))

task = rec.task
text = st.text_area("Texts to classify (one a line)" if task == "seq-cls" else "Prompts (one a line)",
                    value=EXAMPLES.get(task, ""), key=f"play_text_{task}", height=120)
tokens = None
if task == "causal-lm":
    tokens = st.number_input("New tokens", min_value=1, max_value=256, value=24, key="play_tokens")

lines = [t for t in text.splitlines() if t.strip()]
if st.button("Classify" if task == "seq-cls" else "Generate", key="play_go", disabled=not ready or not lines):
    try:
        models = S["play_loaded"][1]
        with st.spinner("Running both models…"):
            S["play_output"] = (rec.id, models.classify(lines) if task == "seq-cls"
                                else models.generate(lines, max_new_tokens=int(tokens)))
    except Exception as exc:  # noqa: BLE001
        st.error(error_text(exc), icon="🚫")

output = S.get("play_output")
if output and output[0] == rec.id:
    rows = output[1]
    if task == "seq-cls":
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
    else:
        st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch",
                     column_config={"base": "base model", "tuned": "tuned model"})

generations = (runs().results(rec.id) or {}).get("generations")
if generations:
    with st.expander("Generations recorded at training time (before / after)"):
        st.dataframe(pd.DataFrame(generations), hide_index=True, width="stretch")
