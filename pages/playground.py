"""Playground: classify text or generate with finished runs on your own inputs, the base model beside the tuned
ones. One run of any method answers beside its base; two to four LoRA / QLoRA runs of one base answer side by
side (the base loaded once, adapters switched), with a record of which answer was better, which Compare shows.
One run is simply the smallest set: the same picker, load button, table and "What changed".

The models load when "Load" is pressed and stay in this browser session, so trying more inputs does not reload
them. Inference only; nothing trains here.
"""
import pandas as pd
import streamlit as st

from lora_ui import insight, service
from lora_ui.format import md, run_label
from lora_ui.service import RunStatus
from lora_ui.state import PLAYGROUND
from lora_ui.widgets import action_button, attempt, show_message

S = PLAYGROUND
EXAMPLES = {"seq-cls": "A wonderful, moving film with a brilliant cast.\nThe worst thing I have ever seen.\n"
                       "It was fine, nothing special.",
            "causal-lm": "\n".join(service.default_prompts())}


def pick_runs(runs: list) -> list:
    """1 to MAX_ADAPTERS runs: one of any method, or several LoRA / QLoRA runs of one base (checked on Load)."""
    if not runs:
        st.info("No finished runs with saved weights yet. Train one on the Train page.")
        return []
    by_id = {r.id: r for r in runs}
    picked = st.multiselect(f"Runs (one of any method, or up to {insight.MAX_ADAPTERS} LoRA / QLoRA runs of one "
                            "base model side by side)", list(by_id), default=[runs[0].id],
                            max_selections=insight.MAX_ADAPTERS, key=S.key("runs"),
                            format_func=lambda i: run_label(by_id[i], True))
    return [by_id[i] for i in picked]


def columns_for(picked: list) -> dict[str, str]:
    """{row key the engine answers under: column title}. One run answers as "tuned"; several under their ids."""
    if len(picked) == 1:
        return {"tuned": "tuned"}
    return {r.id: f"{r.name} · {r.id[-6:]}" for r in picked}


def load_section(picked: list) -> bool:
    """The Load button; True when exactly these runs' models are loaded."""
    ids = tuple(r.id for r in picked)
    loaded = S.get("loaded")
    ready = loaded is not None and loaded[0] == ids
    what = f"the {picked[0].method} weights" if len(ids) == 1 else f"{len(ids)} adapters"
    c1, c2 = st.columns([1, 3])
    if c1.button("Reload models" if ready else "Load models", type="secondary" if ready else "primary",
                 key=S.key("load")):
        S.pop("loaded")
        S.pop("output")
        models = attempt(S, "Load", insight.load_playground, list(ids),
                         spinner=f"Loading {md(picked[0].model)} once and {what}…")
        if models is not None:
            S["loaded"] = (ids, models)
            S.dismiss()
        st.rerun()
    c2.caption("Loaded: " + (", ".join(f"`{i}`" for i in ids) if ready
                             else "nothing yet — loading takes a few seconds for small models."))
    return ready


def classification_table(rows: list[dict], columns: dict[str, str]) -> None:
    """Each side's label and confidence; ✱ where a tuned model's label differs from the base's."""
    sides = {"base": "base", **columns}
    table = pd.DataFrame([{
        "text": r["text"],
        **{k: v for key, title in sides.items()
           for k, v in ((title, r[key]["label"]), (f"{title} confidence", max(r[key]["probs"].values())))},
        "changed": "✱" if any(r[key]["label"] != r["base"]["label"] for key in columns) else "",
    } for r in rows])
    st.dataframe(table, hide_index=True, width="stretch", column_config={
        f"{title} confidence": st.column_config.ProgressColumn(min_value=0.0, max_value=1.0, format="%.2f")
        for title in sides.values()})
    with st.expander("All probabilities"):
        st.json(rows)


def try_section(picked: list, ready: bool) -> None:
    task, ids = picked[0].task, tuple(r.id for r in picked)
    text = st.text_area("Texts to classify (one a line)" if task == "seq-cls" else "Prompts (one a line)",
                        value=EXAMPLES.get(task, ""), key=S.key(f"text_{task}"), height=120)
    tokens = None
    if task == "causal-lm":
        tokens = st.number_input("New tokens", min_value=1, max_value=256, value=24, key=S.key("tokens"))
    lines = [t for t in text.splitlines() if t.strip()]
    if st.button("Classify" if task == "seq-cls" else "Generate", key=S.key("go"), disabled=not ready or not lines):
        models = S["loaded"][1]
        run = models.classify if task == "seq-cls" else lambda xs: models.generate(xs, max_new_tokens=int(tokens))
        sides = "both models" if len(ids) == 1 else f"the base and {len(ids)} adapters"
        rows = attempt(S, "Run", run, lines, spinner=f"Running {sides}…")
        if rows is not None:
            S["output"] = (ids, rows)
        st.rerun()
    output = S.get("output")
    if not (output and output[0] == ids):
        return
    columns = columns_for(picked)
    if task == "seq-cls":
        classification_table(output[1], columns)
    else:
        st.dataframe(pd.DataFrame(output[1]).rename(columns=columns), hide_index=True, width="stretch",
                     column_config={"base": "base model", "tuned": "tuned model"})
    if len(ids) > 1:
        votes(picked, output[1], columns, "text" if task == "seq-cls" else "prompt")


NO_CHOICE, NO_DIFFERENCE = "—", "no difference"


def votes(picked: list, rows: list[dict], columns: dict[str, str], key: str) -> None:
    """"Which answer is better?" per input, recorded with each run (insight.vote) and counted on Compare."""
    with st.form(S.key("votes")):
        st.markdown("**Which answer is better?** Your choices are recorded with each run and counted on Compare.")
        for i, row in enumerate(rows):
            st.radio(md(row[key][:80]), [NO_CHOICE, *columns, NO_DIFFERENCE], horizontal=True, key=S.key(f"vote_{i}"),
                     format_func=lambda v: columns.get(v, v))
        action_button(S, "Record choices", record_votes, [r.id for r in picked], [row[key] for row in rows],
                      key=S.key("vote_go"), verb="Record", submit=True)


def record_votes(run_ids: list[str], prompts: list[str]) -> str:
    """The form's choices, one vote per answered input (the radios are read from session state)."""
    choices = [S.get(f"vote_{i}", NO_CHOICE) for i in range(len(prompts))]
    done = [insight.vote(None if c == NO_DIFFERENCE else c, run_ids, prompt)
            for c, prompt in zip(choices, prompts) if c != NO_CHOICE]
    return f"Recorded {len(done)} choice{'s' if len(done) != 1 else ''}."


def before_after(rec, generations: list[dict], several: bool) -> None:
    """The held-out prompts answered by the base model before training and by the tuned model after it, side
    by side, and what changed (the engine counts answers in the training data's format)."""
    st.subheader("Before and after training" + (f" — {md(rec.name)} · {rec.id[-6:]}" if several else ""))
    change = insight.generation_change(generations)
    st.markdown(f"**What changed:** {change['summary']}.")
    for pair in generations:
        with st.container(border=True):
            st.markdown(f"**Prompt:** {md(pair['prompt'])}")
            c1, c2 = st.columns(2)
            c1.caption("Base model (before training)")
            c1.code(pair["before"] or "(empty)", language="text", wrap_lines=True)
            c2.caption("Tuned model (after training)")
            c2.code(pair["after"] or "(empty)", language="text", wrap_lines=True)


def main() -> None:
    st.title("Playground")
    st.caption("Try finished runs on your own inputs: the base model (what training started from) beside the tuned "
               "model — for LoRA runs the same weights with the adapter switched off — or up to "
               f"{insight.MAX_ADAPTERS} adapters of one base side by side, the base loaded once.")
    show_message(S)
    runs = [r for r in service.list_runs([RunStatus.SUCCEEDED, RunStatus.STOPPED])
            if (r.results or {}).get("artifact_dir")]
    picked = pick_runs(runs)
    if not picked:
        return
    try_section(picked, load_section(picked))
    for rec in picked:
        generations = (service.results(rec.id) or {}).get("generations")
        if generations:
            before_after(rec, generations, several=len(picked) > 1)


main()
