"""Playground: classify text or generate with any finished run, the base model beside the tuned one; or up to
four LoRA / QLoRA runs of one base side by side (the base loaded once, adapters switched), with a record of
which answer was better, which Compare shows.

The models load when "Load" is pressed and stay in this browser session, so trying more inputs does not reload
them. Inference only; nothing trains here.
"""
import pandas as pd
import streamlit as st

from lora_core.config import LORA_METHODS
from lora_ui import service
from lora_ui.format import error_text, run_label
from lora_ui.service import RunStatus
from lora_ui.state import PLAYGROUND
from lora_ui.widgets import attempt, pick_run, show_message

S = PLAYGROUND
EXAMPLES = {"seq-cls": "A wonderful, moving film with a brilliant cast.\nThe worst thing I have ever seen.\n"
                       "It was fine, nothing special.",
            "causal-lm": "Write a short greeting:\nThe movie was"}


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


def one_run(runs: list) -> None:
    rec = pick_run(runs, S.key("run"), "No finished runs with saved weights yet. Train one on the Train page.",
                   show_task=True)
    if rec is None:
        return
    try_section(rec, load_section(rec))
    generations = (service.results(rec.id) or {}).get("generations")
    if generations:
        with st.expander("Generations recorded at training time (before / after)"):
            st.dataframe(pd.DataFrame(generations), hide_index=True, width="stretch")


# -- several adapters side by side ---------------------------------------------------------------------------------

def pick_adapters(runs: list) -> list:
    adapters = [r for r in runs if r.method in LORA_METHODS]
    if len(adapters) < 2:
        st.info("Side by side needs at least two finished LoRA or QLoRA runs of one base model (a sweep over ranks "
                "makes them).")
        return []
    by_id = {r.id: r for r in adapters}
    picked = st.multiselect("Runs (2 to 4 of one base model, task and method)", list(by_id), max_selections=4,
                            key=S.key("multi_runs"), format_func=lambda i: run_label(by_id[i], True))
    return [by_id[i] for i in picked]


def load_adapters(picked: list) -> bool:
    """The Load button for the chosen runs; True when exactly these are loaded."""
    ids = tuple(r.id for r in picked)
    loaded = S.get("multi_loaded")
    ready = loaded is not None and loaded[0] == ids
    if st.button("Reload" if ready else "Load the base once and every adapter", key=S.key("multi_load"),
                 type="secondary" if ready else "primary", disabled=len(ids) < 2):
        S.pop("multi_loaded")
        S.pop("multi_output")
        models = attempt(S, "Load", service.load_adapter_set, list(ids),
                         spinner=f"Loading {picked[0].model} and {len(ids)} adapters…")
        if models is not None:
            S["multi_loaded"] = (ids, models)
            S.dismiss()
        st.rerun()
    return ready


def answer_text(answer) -> str:
    if isinstance(answer, dict):  # classification: the label and how sure the model is
        return f"{answer['label']} ({max(answer['probs'].values()):.2f})"
    return answer


def several_runs(runs: list) -> None:
    picked = pick_adapters(runs)
    if not picked:
        return
    ready = load_adapters(picked)
    task = picked[0].task
    text = st.text_area("Texts to classify (one a line)" if task == "seq-cls" else "Prompts (one a line)",
                        value=EXAMPLES.get(task, ""), key=S.key(f"multi_text_{task}"), height=120)
    lines = [t for t in text.splitlines() if t.strip()]
    if st.button("Classify with all" if task == "seq-cls" else "Generate with all", key=S.key("multi_go"),
                 disabled=not ready or not lines):
        models = S["multi_loaded"][1]
        run = models.classify if task == "seq-cls" else models.generate
        rows = attempt(S, "Run", run, lines, spinner=f"Running the base and {len(picked)} adapters…")
        if rows is not None:
            S["multi_output"] = (tuple(r.id for r in picked), rows)
        st.rerun()
    output = S.get("multi_output")
    if output and output[0] == tuple(r.id for r in picked):
        answers_and_votes(picked, output[1], "text" if task == "seq-cls" else "prompt")


def answers_and_votes(picked: list, rows: list[dict], key: str) -> None:
    names = {r.id: f"{r.name} · {r.id[-6:]}" for r in picked}
    st.dataframe(pd.DataFrame([{key: row[key], "base": answer_text(row["base"]),
                                **{names[i]: answer_text(row[i]) for i in names}} for row in rows]),
                 hide_index=True, width="stretch")
    none, same = "—", "no difference"
    with st.form(S.key("votes")):
        st.markdown("**Which answer is better?** Your choices are recorded with each run and counted on Compare.")
        choices = [st.radio(row[key][:80], [none, *names, same], horizontal=True, key=S.key(f"vote_{i}"),
                            format_func=lambda v: names.get(v, v)) for i, row in enumerate(rows)]
        if st.form_submit_button("Record choices"):
            ids = list(names)
            try:
                done = [service.vote(None if c == same else c, ids, row[key])
                        for c, row in zip(choices, rows) if c != none]
                S.post("success", f"Recorded {len(done)} choice{'s' if len(done) != 1 else ''}.")
            except Exception as exc:  # noqa: BLE001 - a run deleted meanwhile: say so
                S.post("error", f"Record: {error_text(exc)}")
            st.rerun()


MODES = {"one": "One run: base vs tuned", "several": "Several adapters side by side"}


def main() -> None:
    st.title("Playground")
    st.caption("Try finished runs on your own inputs: one run beside its base model (for LoRA runs the same "
               "weights with the adapter switched off), or up to four adapters of one base side by side.")
    show_message(S)
    runs = [r for r in service.list_runs([RunStatus.SUCCEEDED, RunStatus.STOPPED])
            if (r.results or {}).get("artifact_dir")]
    mode = st.radio("Mode", list(MODES), horizontal=True, key=S.key("mode"), format_func=MODES.get,
                    label_visibility="collapsed")
    if mode == "one":
        one_run(runs)
    else:
        several_runs(runs)


main()
