"""Train: launch the built config (or a sweep over ranks / methods), then watch live runs.

Runs train in their own worker processes; this page only reads the registry and the metrics streams. The live
panel is a fragment that reruns every few seconds by itself, so the curves grow without rerunning the page.
"""
import pandas as pd
import streamlit as st

from lora_core.config import BACKENDS, ConfigError, field_help
from lora_ui import placement, service
from lora_ui.config_form import cli_command, form_config
from lora_ui.format import X_AXES, code, error_text, fmt_duration, md, method_text, primary_metric, status_text
from lora_ui.live import IDLE_CHECK_S, REFRESH_S, curves, progress_line, throughput_metrics
from lora_ui.service import RunStatus
from lora_ui.state import BUILDER, TRAIN, current_config, focus_sweep, launched_runs
from lora_ui.widgets import action_button, show_error, show_message

S = TRAIN
SWEEP_RANKS = [1, 2, 4, 8, 16, 32, 64]
MAX_SEEDS = 10


def sweep_request(cfg, ranks: list[int], lora_methods: list[str], baselines: list[str]):
    """(base config, vary) for a sweep: the first chosen method becomes the base (a sweep always keeps the
    base's method and adds the others); ranks apply only to the adapter methods."""
    methods = list(lora_methods) + list(baselines)
    if not methods:
        return None, {}
    base = cfg.replace(method=methods[0])
    vary: dict[str, list] = {"method": methods}
    if lora_methods and ranks:
        vary["lora.r"] = sorted(ranks)
    return base, vary


def launch_sweep(cfg, vary, seeds: int = 1) -> service.ActionResult:
    result = service.sweep(cfg, vary, seeds)
    focus_sweep(result.detail)  # Compare opens on this sweep
    return result


def config_panel(cfg) -> None:
    """What will launch: the current config in two lines, and a link to edit it."""
    if "name" in BUILDER:  # the Config builder has been used: say so if its form is invalid right now
        _, error = form_config(st.session_state)
        if error is not None:
            st.warning(f"The Config builder has an invalid field ({error}); this page launches the last valid "
                       "config shown below.")
    with st.container(border=True):
        c1, c2 = st.columns([3, 1])
        with c1:
            st.markdown(f"**Config:** {code(cfg.name)} — **{cfg.method}** on {code(cfg.model.source)} ({cfg.task}), "
                        f"data {code(cfg.data.train)}")
            lora = (f"r={cfg.lora.r}, α={cfg.lora.alpha:g} (scale {cfg.lora_scaling:.3g}), targets "
                    f"{md(cfg.lora.target_modules or 'preset:qv')}" if cfg.uses_lora else "no adapters")
            length = f"{cfg.train.max_steps} steps" if cfg.train.max_steps else f"{cfg.train.epochs:g} epochs"
            st.caption(f"{lora} · {length} · batch {cfg.train.batch_size} · lr {cfg.learning_rate:g} · "
                       f"seed {cfg.train.seed}")
        with c2:
            st.page_link("pages/config_builder.py", label="Edit config", icon=":material/tune:")


def where_panel(cfg):
    """Backend, workers and cluster address for what launches; returns that config (None while a field is
    wrong: the error shows under the panel and the launch buttons are off)."""
    placement.sync_from(cfg)
    with st.container(border=True):
        c = st.columns([1.3, 1, 2.7])
        backend = c[0].radio("Where it trains", BACKENDS, key=S.key("backend"), horizontal=True,
                             help=field_help("resources.backend"))
        c[1].number_input("Workers", min_value=1, max_value=1024, step=1, key=S.key("workers"),
                          help=field_help("resources.num_workers"))
        c[2].text_input("Ray cluster address", key=S.key("ray_address"), disabled=backend != "ray",
                        placeholder=placement.default_ray_address() or "http://HEAD:8265",
                        help=field_help("resources.ray_address") + " Never expose the Ray dashboard port publicly.")
        try:
            launch_cfg = placement.launch_config(cfg)
        except ConfigError as exc:
            show_error(exc)
            return None
        if backend == "ray" and not placement.ray_installed():
            st.warning(placement.ray_missing_message())
            return None
    address = launch_cfg.resources.ray_address or placement.default_ray_address()
    if backend == "ray" and address:
        cluster_panel(address)
    elif backend == "ray":  # nothing to follow yet: drawn once, not every few seconds
        with st.expander("Cluster (no address yet)", expanded=True, icon=":material/hub:"):
            st.caption("Give the Ray dashboard's address above, or set LORA_LAB_RAY_ADDRESS for the dashboard.")
    return launch_cfg


@st.fragment(run_every=max(REFRESH_S, 5.0))
def cluster_panel(address: str) -> None:
    """The cluster runs go to: nodes, CPUs and GPUs in use, our runs on it (live)."""
    with st.expander(f"Cluster {address}", expanded=True, icon=":material/hub:"):
        try:
            status = placement.cluster_status(address)
        except Exception as exc:  # noqa: BLE001 - an unreachable cluster is shown, the page stays
            st.warning(error_text(exc))
            return
        alive = sum(n["alive"] for n in status["nodes"])
        c = st.columns(3)
        c[0].metric("Nodes alive", f"{alive}/{len(status['nodes'])}")
        c[1].metric("CPUs free", f"{status['cpus'] - status['cpus_used']:g} of {status['cpus']:g}")
        c[2].metric("GPUs free", f"{status['gpus'] - status['gpus_used']:g} of {status['gpus']:g}")
        st.dataframe(pd.DataFrame(placement.node_rows(status)), hide_index=True, width="stretch")
        rows = placement.run_rows(status)
        if rows:
            st.markdown("**Our runs on it**")
            st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
        else:
            st.caption("None of this dashboard's runs is queued or running there.")


def launch_tab(cfg) -> None:
    action_button(S, "Launch run", service.launch, cfg, key=S.key("launch"), verb="Launch",
                  icon=":material/rocket_launch:", type="primary", disabled=cfg is None)
    if cfg is None:
        return
    st.caption("Terminal equivalent: " + f"`{cli_command(cfg)}` (after exporting the YAML on the Config builder).")


def sweep_tab(cfg, can_launch: bool = True) -> None:
    st.markdown("One action launches a run per rank and method, with the same seed, data and eval split, "
                "grouped under one sweep id for the Compare page. With several seeds per setting, Compare shows "
                "each setting's mean ± std.")
    c1, c2, c3, c4 = st.columns([2, 1, 1, 1])
    ranks = c1.multiselect("LoRA ranks", SWEEP_RANKS, default=[4, 8, 16], key=S.key("sweep_ranks"),
                           persist_state="session")
    lora_methods = c2.multiselect("Adapter methods", ["lora", "qlora"], default=["lora"],
                                  key=S.key("sweep_methods"), persist_state="session")
    allowed_baselines = ["full", "head-only"] if cfg.task == "seq-cls" else ["full"]
    baselines = c3.multiselect("Baselines", allowed_baselines, default=allowed_baselines,
                               key=S.key("sweep_baselines"), help="Run once each per seed, for the comparison.",
                               persist_state="session")
    seeds = int(c4.number_input("Seeds per setting", min_value=1, max_value=MAX_SEEDS, value=1, step=1,
                                key=S.key("sweep_seeds"), persist_state="session",
                                help="Each setting runs with train.seed = the config's seed, +1, …, on the same "
                                     "data and eval split: Compare shows mean ± std."))
    planned, base, vary = [], None, {}
    if lora_methods or baselines:
        try:
            base, vary = sweep_request(cfg, ranks, lora_methods, baselines)
            planned = service.plan_sweep(base, vary, seeds)
            st.dataframe(pd.DataFrame([{"run": c.name, "method": c.method, "rank": c.lora.r if c.uses_lora else None,
                                        "seed": c.train.seed} for c in planned]), hide_index=True, width="content")
            st.caption("Terminal equivalent: `" + cli_command(base, vary, seeds) + "`")
        except ConfigError as exc:  # e.g. head-only with a causal-lm config
            show_error(exc)
    action_button(S, f"Launch sweep ({len(planned)} runs)", launch_sweep, base, vary, seeds, key=S.key("sweep_go"),
                  verb="Sweep", icon=":material/science:", disabled=not planned or not can_launch)


def launch_recipe(key: str, max_steps: int | None) -> service.ActionResult:
    result = service.launch_recipe(key, max_steps)
    if result.detail:
        focus_sweep(result.detail)  # Compare opens on this sweep
        S["open_compare"] = True    # switch there once the callback is done (a callback cannot switch pages)
    return result


def recipes_tab() -> None:
    st.markdown("The tutorial's challenges, one click each: the sweep launches here and Compare opens on it.")
    quick = st.number_input("Quick look: at most this many steps per run (0 = the recipe's full length)",
                            min_value=0, max_value=10_000, value=0, step=10, key=S.key("recipe_steps"),
                            persist_state="session",
                            help="The full recipes train 5 epochs per run (minutes each on a CPU). A few steps "
                                 "show the workflow, not the lesson.")
    for recipe in service.recipe_list():
        if not recipe.vary:
            continue  # single-run recipes (Level 3) launch from the Config builder / CLI
        with st.container(border=True):
            c1, c2 = st.columns([4, 1], vertical_alignment="center")
            c1.markdown(f"**{recipe.title}**  \n{recipe.lesson}")
            c1.caption(f"{len(recipe.runs())} runs · terminal equivalent: `{recipe.command()}`")
            action_button(S, "Launch", launch_recipe, recipe.key, int(quick) or None,
                          key=S.key(f"recipe_{recipe.key}"), where=c2,
                          verb=recipe.title, icon=":material/science:", type="primary")


def run_buttons(rec, where) -> None:
    """Stop for a running run; Resume for a stopped or failed one: for whoever may (their own runs, or an admin)."""
    if rec.status == RunStatus.RUNNING and service.can("stop", rec):
        action_button(S, "Stop", service.stop, rec.id, key=S.key(f"stop_{rec.id}"), where=where,
                      icon=":material/stop_circle:", disabled=bool(rec.stop_requested),
                      help="Graceful: finishes the current step, saves the adapter and a checkpoint.")
    elif rec.status in (RunStatus.STOPPED, RunStatus.FAILED) and service.can("resume", rec):
        action_button(S, "Resume", service.resume, rec.id, key=S.key(f"resume_{rec.id}"), where=where,
                      icon=":material/play_arrow:", why_disabled=service.resume_blocker(rec.id),
                      help="Continue from the last checkpoint as a new run linked to this one.")


def run_card(rec, x_axis: str) -> None:
    events = service.metrics(rec.id)
    with st.container(border=True):
        c1, c2 = st.columns([4, 1])
        c1.markdown(f"{status_text(rec.status)} **{md(rec.name)}** · {method_text(rec)} · "
                    f"{placement.placement_text(rec)} · `{rec.id}`" + (f" · by {md(rec.owner)}" if rec.owner else ""))
        run_buttons(rec, c2)
        frac, text = progress_line(rec, events)
        if rec.status == RunStatus.RUNNING and rec.stop_requested:
            text = "stopping: saving the adapter and a checkpoint… · " + text
        st.progress(frac, text=text)
        if rec.status == RunStatus.FAILED:
            st.error(md(rec.error or "failed"))
        elif rec.status == RunStatus.SUCCEEDED:
            name, value = primary_metric(rec.results)
            took = rec.results.get("train_time_s") or rec.duration
            st.success(f"Finished: {name} {value:.4f} · {fmt_duration(took)}" if value is not None
                       else f"Finished in {fmt_duration(took)}")
            if rec.results.get("early_stopped"):
                st.caption((service.results(rec.id) or {}).get("end_reason") or "stopped early")
        throughput_metrics(events, st.columns(4))
        curves(rec.name, events, key=S.key(f"curves_{rec.id}"), x=x_axis)
        with st.expander("Log tail"):
            st.code(service.log_tail(rec.id, n=30) or "(empty)", language="text")


def queue_rows(queued: list) -> None:
    st.markdown("**Queue** (starts by itself as slots free up)")
    for pos, rec in enumerate(queued):
        c = st.columns([5, 1, 1, 1])
        c[0].markdown(f"{pos + 1}. {status_text(rec.status)} **{md(rec.name)}** · {method_text(rec)} · "
                      f"`{rec.id}`" + (f" · by {md(rec.owner)}" if rec.owner else ""))
        if service.can("move", rec):
            action_button(S, "↑", service.move, rec.id, pos - 1, key=S.key(f"up_{rec.id}"), where=c[1],
                          verb="Move", disabled=pos == 0, help="Move up the queue")
            action_button(S, "↓", service.move, rec.id, pos + 1, key=S.key(f"down_{rec.id}"), where=c[2],
                          verb="Move", disabled=pos == len(queued) - 1, help="Move down the queue")
        if service.can("cancel", rec):
            action_button(S, "Cancel", service.cancel, rec.id, key=S.key(f"cancel_{rec.id}"), where=c[3],
                          icon=":material/close:")


def live_panel(ticking: bool) -> None:
    """The live runs and this session's runs. Drawn as a fragment that reruns every REFRESH_S only while
    something is queued or running (`ticking`); when that changes, the whole page reruns to start or stop the
    clock, so an idle page costs no CPU."""
    show_message(S)  # inside the fragment: a card's button reruns only the fragment, and its message shows here
    try:
        running, queued = service.live_runs()  # reconciles: dead workers -> FAILED, queue -> free slots
    except Exception as exc:  # noqa: BLE001 - an unreadable registry is shown, the page stays
        show_error(exc)
        return
    if bool(running or queued) != ticking:
        st.rerun()  # start the clock (a card's Resume launched a run) or stop it (the last run ended)
    live = {r.id for r in running + queued}
    mine = [i for i in launched_runs() if i not in live]
    x_axis = S.get("x", "step")

    st.subheader(f"Live runs ({len(running)} running, {len(queued)} queued)")
    if not running and not queued:
        st.caption("Nothing is training right now. Launch the config above: the default (the bundled MiniLM, "
                   "LoRA r=8, the 600-row sentiment sample) needs no download and trains on a CPU.")
    for rec in running:
        run_card(rec, x_axis)
    if queued:
        queue_rows(queued)
    if mine:
        st.subheader("Launched from this session")
        for rec in filter(None, map(service.find_run, reversed(mine[-5:]))):  # None: deleted meanwhile
            run_card(rec, x_axis)


def watch_for_runs() -> None:
    """While nothing is live: a run started elsewhere (another tab, a teammate, the CLI) starts the clock."""
    if service.has_live_runs():
        st.rerun()


st.title("Train")
config = current_config()
config_panel(config)
if service.can("launch"):
    launching = where_panel(config)
    tab_one, tab_sweep, tab_recipes = st.tabs(["Launch this config", "Sweep ranks / methods", "Tutorial recipes"])
    with tab_one:
        launch_tab(launching)
    with tab_sweep:
        sweep_tab(launching or config, can_launch=launching is not None)
    with tab_recipes:
        recipes_tab()
    if S.pop("open_compare", False):
        st.switch_page("pages/compare.py")
else:
    st.info("You can watch every run here; launching and stopping runs needs the operator role.",
            icon=":material/visibility:")
st.radio("Curves x-axis", list(X_AXES), key=S.key("x"), horizontal=True, format_func=X_AXES.get)
live_now = service.has_live_runs()
S["ticking"] = live_now
st.fragment(live_panel, run_every=REFRESH_S if live_now else None)(live_now)
if not live_now:
    st.fragment(watch_for_runs, run_every=IDLE_CHECK_S)()
