"""`python -m lora_core …`: the engine from a terminal. Each handler is a thin call into the public API.

Run commands (train, sweep, status, list, logs, stop, resume, delete, reindex, cluster status) go through one
`Runs` manager built from `--runs-dir`. Model commands (params, targets, merge, estimate) live in cli_models.py,
the analysis commands (inspect, compare) in cli_insight.py and the team commands (users, audit, settings, serve) in
cli_team.py; each is imported only when one of its commands runs: they need pandas, numpy or the model code, and
`list` / `status` must start without them. The CLI acts as the OS user, trusted.

Every refusal is one line on stderr (`error: ...`, exit 2), never a traceback. Text that came from a user or a
file (run names, errors) is printed with control characters escaped, so a name cannot move the cursor or fake a
line of output.
"""
from __future__ import annotations

import argparse
import importlib
import json
import re
import sys
from typing import Callable

import yaml

from .config import BUNDLED_MODELS, ConfigError, ExperimentConfig, field_choices
from .errors import LoraLabError
from .memory import settings as memory_settings
from . import checks, recipes
from .runs import Runs, RunStatus

MODEL_COMMANDS = "lora_core.cli_models"
INSIGHT_COMMANDS = "lora_core.cli_insight"
TEAM_COMMANDS = "lora_core.cli_team"
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def safe(text) -> str:
    """`text` with control characters (newlines, ANSI escapes, ...) shown as escapes instead of acted on."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), str(text))


def emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=2, default=str))


def model_command(name: str, module: str = MODEL_COMMANDS) -> Callable:
    """The handler `name` of cli_models (or `module`), loaded when its command runs (see the module docstring)."""
    def run(args) -> int:
        return getattr(importlib.import_module(module), name)(args)
    return run


# -- run commands --------------------------------------------------------------------------------------------

def with_resources(cfg: ExperimentConfig, args) -> ExperimentConfig:
    """The config with --backend / --workers / --ray-address applied (validated like the file itself)."""
    changes = {"resources.backend": args.backend, "resources.num_workers": args.workers,
               "resources.ray_address": args.ray_address}
    changes = {k: v for k, v in changes.items() if v is not None}
    return cfg.replace(**changes) if changes else cfg


def cmd_train(args) -> int:
    runs: Runs = args.runs
    # every problem of the file at once, as the dashboard reports them
    run_id = runs.launch(with_resources(checks.load_file(args.config), args),
                         ignore_memory=args.ignore_memory_estimate)
    if not args.wait:
        emit({"run_id": run_id}, args.json, run_id)
        return 0
    print(run_id, file=sys.stderr if args.json else sys.stdout, flush=True)
    try:
        # The worker's log, live, on stderr: stdout stays clean for the results.
        for line in runs.follow_log(run_id):
            print(line, end="", file=sys.stderr, flush=True)
        record = runs.wait(run_id)
    except KeyboardInterrupt:
        print(f"\nthe run continues in the background; stop it with: python -m lora_core stop {run_id}",
              file=sys.stderr)
        return 130
    out = {**(runs.results(run_id) or {}), "run_id": run_id, "status": record.status, "error": record.error}
    emit(out, args.json)
    return 0 if record.status == RunStatus.SUCCEEDED else 1


def cmd_status(args) -> int:
    runs: Runs = args.runs
    record = runs.get(args.run_id)  # reconciles first: a dead worker shows FAILED
    latest = runs.latest(record.id)  # the end of the metrics stream only: as fast at 1e6 events as at 10
    last, phase = latest["last"], latest["phase"]
    progress = latest["progress"] if latest["progress"] is not None else record.progress
    out = {**record.to_dict(), "progress": progress, "phase": phase, "last_metrics": last}
    text = (f"{record.id}  {record.status}  pid={record.pid}  phase={phase}  step={last.get('step')}  "
            f"progress={'-' if progress is None else f'{100 * progress:.0f}%'}")
    if record.error:
        text += f"\n{safe(record.error)}"
    if record.status == RunStatus.FAILED and record.error_log:
        text += f"\n--- last lines of {record.dir.log.name} ---\n" + record.error_log
    emit(out, args.json, text)
    return 0


def cmd_list(args) -> int:
    records = args.runs.list(owner=args.owner)  # reconciles first
    if args.json:
        emit([r.to_dict() for r in records], True)
        return 0
    for r in records:
        rank = "-" if r.lora_r is None else r.lora_r
        where = f"{r.backend or 'local'}×{r.world_size or 1}"
        print(f"{r.id:<48} {r.status:<10} {safe(r.method or '-'):<10} r={rank!s:<5} {where:<8} "
              f"{safe(r.owner or '-'):<12} {safe(r.name)}")
    return 0


def cmd_reindex(args) -> int:
    print(args.runs.reindex())
    return 0


def cmd_cluster_status(args) -> int:
    status = args.runs.cluster(args.ray_address)
    if args.json:
        emit(status, True)
        return 0
    print(f"Ray cluster {status['address']}: {len(status['nodes'])} nodes, "
          f"CPUs {status['cpus_used']:g}/{status['cpus']:g} used, GPUs {status['gpus_used']:g}/{status['gpus']:g} used")
    for n in status["nodes"]:
        print(f"  {n['node_id'][:12]}  {safe(n['host'] or n['ip']):<16} {'head ' if n['head'] else ''}"
              f"{'alive' if n['alive'] else 'DEAD '}  CPU {n['cpus_used']:g}/{n['cpus']:g}  "
              f"GPU {n['gpus_used']:g}/{n['gpus']:g}")
    print(f"our runs on it: {len(status['runs'])}")
    for r in status["runs"]:
        print(f"  {r['id']:<48} {r['status']:<10} ×{r['world_size']}  job {r['job_id'] or '-'}")
    return 0


def cmd_stop(args) -> int:
    print(args.runs.stop(args.run_id, timeout=args.timeout))
    return 0


def cmd_resume(args) -> int:
    print(args.runs.resume(args.run_id, ignore_memory=args.ignore_memory_estimate))
    return 0


def cmd_sweep(args) -> int:
    cfg = with_resources(checks.load_file(args.config), args)
    vary: dict[str, list] = {}
    for item in args.vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(key, "--vary takes KEY=V1,V2,… (e.g. lora.r=4,8,16)")
        vary.setdefault(key.strip(), []).extend(yaml.safe_load(v) for v in values.split(","))
    sweep_id, run_ids = args.runs.sweep(cfg, vary, args.seeds, ignore_memory=args.ignore_memory_estimate)
    emit({"sweep_id": sweep_id, "run_ids": run_ids}, args.json, "\n".join([sweep_id, *run_ids]))
    return 0


def cmd_recipe(args) -> int:
    if not args.key:
        for r in recipes.RECIPES.values():
            print(f"{r.key:<24} {r.title}\n{'':<24} {r.command()}")
        return 0
    sweep_id, run_ids = recipes.launch(args.key, args.runs)
    emit({"sweep_id": sweep_id, "run_ids": run_ids}, args.json, "\n".join([*([sweep_id] if sweep_id else []),
                                                                              *run_ids]))
    return 0


def cmd_logs(args) -> int:
    runs: Runs = args.runs
    if not args.follow:
        print(runs.log_tail(args.run_id, n=args.lines))
        return 0
    for line in runs.follow_log(args.run_id):
        print(line, end="", flush=True)
    return 0


def cmd_push(args) -> int:
    from .hub import push

    url = push(args.runs, args.run_id, args.repo, private=args.private, merged=args.merged)
    emit({"run_id": args.run_id, "repo": args.repo, "url": url}, args.json, f"pushed {args.run_id} to {url}")
    return 0


def cmd_delete(args) -> int:
    args.runs.delete(args.run_id)
    print(f"deleted {args.run_id}")
    return 0


# -- the parser ---------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m lora_core", description="LoRA Lab: LoRA / QLoRA experiments.")
    sub = p.add_subparsers(dest="command", required=True)

    def cmd(name, func, help):
        sp = sub.add_parser(name, help=help, description=help)
        sp.set_defaults(func=func)
        return sp

    def with_runs_dir(sp):
        sp.add_argument("--runs-dir", help="runs directory (default: $LORA_LAB_RUNS_DIR or ./runs)")
        return sp

    def with_resources_flags(sp):
        sp.add_argument("--backend", choices=field_choices("resources.backend"),
                        help="where it trains (default: the config's resources.backend)")
        sp.add_argument("--workers", type=int, help="training processes (resources.num_workers)")
        sp.add_argument("--ray-address", help="Ray dashboard address http://HOST:8265 (default: the config's, "
                                              "else $LORA_LAB_RAY_ADDRESS)")
        return sp

    def with_memory_override(sp):
        sp.add_argument("--ignore-memory-estimate", action="store_true",
                        help="launch even when the estimated peak memory exceeds this machine's")
        return sp

    sp = with_resources_flags(with_memory_override(with_runs_dir(cmd(
        "train", cmd_train, "Launch a training run in the background and print its id."))))
    sp.add_argument("config", help="experiment config (YAML or JSON)")
    sp.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it succeeded")
    sp.add_argument("--json", action="store_true", help="with --wait: final results as JSON on the last line")

    sp = cmd("params", model_command("cmd_params"),
             "Trainable/total parameters and adapter size for a config (no training).")
    sp.add_argument("config")
    sp.add_argument("--json", action="store_true")

    sp = cmd("targets", model_command("cmd_targets"),
             "List the adaptable layers of a model and the architecture presets.")
    sp.add_argument("model", help=f"a bundled model ({', '.join(BUNDLED_MODELS)}), a hub id or a local directory")
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("merge", model_command("cmd_merge"),
                           "Merge a LoRA run's adapter into its base and save a plain model."))
    sp.add_argument("run_id")
    sp.add_argument("--out", help="output directory for the merged model (default: the run's merged/ folder)")
    sp.add_argument("--overwrite", action="store_true", help="replace a non-empty output directory")
    sp.add_argument("--json", action="store_true")

    sp = cmd("lr-find", model_command("cmd_lr_find"),
             "Learning-rate range test on the config's training rows (never its eval split): the loss per rate "
             "and a suggested rate.")
    sp.add_argument("config")
    sp.add_argument("--steps", type=int, default=60, help="optimizer steps, the rate growing each step")
    sp.add_argument("--start", type=float, default=1e-6)
    sp.add_argument("--end", type=float, default=1.0)
    sp.add_argument("--json", action="store_true")

    sp = cmd("estimate", model_command("cmd_estimate"),
             "Estimate training memory, term by term, and which GPUs it fits.")
    sp.add_argument("--model", required=True, help="a preset (e.g. llama-2-7b, gpt2, minilm), a config.json or "
                                                   "model dir, a hub id, or a parameter count like 7e9")
    sp.add_argument("--method", default="lora", choices=memory_settings.METHODS,
                    help="full = fp32; full-bf16/full-fp16 = mixed precision with fp32 master weights")
    sp.add_argument("--batch-size", type=int, default=1)
    sp.add_argument("--seq-len", type=int, default=512, help="tokens per row of the (padded) batch")
    sp.add_argument("--task", choices=field_choices("task"), help="default: causal-lm for decoders")
    sp.add_argument("--num-labels", type=int, help="classes of a seq-cls head (default 2)")
    # config fields under the config's own names (as in a config file or `sweep --vary`)
    sp.add_argument("--train.precision", choices=memory_settings.PRECISIONS,
                    help="bf16/fp16: mixed precision as in a config; *-true: pure 16-bit (default: fp32 for full, "
                         "auto = bf16 on CUDA otherwise)")
    sp.add_argument("--train.optimizer", choices=field_choices("train.optimizer"))
    sp.add_argument("--train.gradient_checkpointing", action="store_true", default=None)
    sp.add_argument("--train.gradient_accumulation_steps", type=int,
                    help="gradients live through every forward but the first")
    sp.add_argument("--lora.r", type=int, help="LoRA rank (default 8)")
    sp.add_argument("--lora.target_modules", help="comma-separated layer names, all-linear, or preset:qv / "
                                                  "preset:attention")
    sp.add_argument("--lora.dropout", type=float, help="LoRA dropout (default 0.1)")
    sp.add_argument("--lora.bias", choices=field_choices("lora.bias"))
    sp.add_argument("--lora.use_dora", action="store_true", default=None)
    sp.add_argument("--quant.quant_type", choices=field_choices("quant.quant_type"))
    sp.add_argument("--quant.double_quant", action=argparse.BooleanOptionalAction, default=None)
    # the estimator's own knobs
    sp.add_argument("--weights-dtype", choices=["fp32", "bf16", "fp16"], help="dtype the weights are loaded in")
    sp.add_argument("--adamw-impl", choices=memory_settings.ADAMW_IMPLS,
                    help="AdamW implementation, for its step temporaries (default: what the engine runs, fused)")
    sp.add_argument("--attention", choices=memory_settings.ATTENTIONS)
    sp.add_argument("--device", choices=memory_settings.DEVICES, help="cpu: no CUDA context, no allocator slack")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("status", cmd_status, "Status, pid, progress and last metrics of a run."))
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("list", cmd_list, "List runs."))
    sp.add_argument("--owner", help="only the runs this user launched")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("stop", cmd_stop, "Stop a run: graceful (saves adapter + checkpoint), then kill (whole "
                                             "run id)."))
    sp.add_argument("run_id")
    sp.add_argument("--timeout", type=float, default=15.0, help="seconds before the process group is killed")

    sp = with_memory_override(with_runs_dir(cmd("resume", cmd_resume, "Resume a STOPPED or FAILED run from its "
                                                                      "last checkpoint as a new linked run; prints "
                                                                      "the new run id.")))
    sp.add_argument("run_id")

    sp = with_resources_flags(with_memory_override(with_runs_dir(cmd(
        "sweep", cmd_sweep, "Launch one run per combination of varied fields."))))
    sp.add_argument("config")
    sp.add_argument("--vary", action="append", default=[], help="KEY=V1,V2 (repeatable), e.g. lora.r=4,8,16")
    sp.add_argument("--seeds", type=int, default=1, help="run each setting N times, with train.seed = the "
                                                          "config's seed, +1, ... (same data and eval split)")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("inspect", model_command("cmd_inspect", INSIGHT_COMMANDS),
                           "What a LoRA/QLoRA adapter learned: per module ‖ΔW‖, ‖ΔW‖/‖W‖, singular values, "
                           "effective rank, and a rank advice."))
    sp.add_argument("target", help="a run id (or unique prefix), or an adapter folder")
    sp.add_argument("--against", help="a second run (or adapter folder) of the same base: subspace similarity")
    sp.add_argument("--base", help="base model of an adapter folder (default: its adapter_config.json's)")
    sp.add_argument("--basis", choices=["A", "delta"], default="A",
                    help="similarity between the right singular vectors of A (the paper's) or of ΔW")
    sp.add_argument("--module", help="also print this module's full spectrum")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("compare", model_command("cmd_compare", INSIGHT_COMMANDS),
                           "Finished runs side by side; runs that differ only in seed as mean ± std."))
    sp.add_argument("run_ids", nargs="*", help="run ids (or unique prefixes)")
    sp.add_argument("--sweep", help="every finished run of this sweep")
    sp.add_argument("--diff", action="store_true", help="print only the config fields that differ")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("recipe", cmd_recipe, "Launch one of the tutorial's challenges (a config and its sweep); "
                                                 "without a name, list them."))
    sp.add_argument("key", nargs="?", help="recipe name, e.g. full-vs-lora-vs-frozen")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("logs", cmd_logs, "Print a run's worker log."))
    sp.add_argument("run_id")
    sp.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    sp.add_argument("-n", "--lines", type=int, default=200)

    sp = with_runs_dir(cmd("push", cmd_push, "Upload a finished run's adapter (or merged model) to the Hugging Face "
                                             "Hub with a model card generated from the run."))
    sp.add_argument("run_id")
    sp.add_argument("--repo", required=True, help="Hub repository id, e.g. your-name/minilm-sst2-lora")
    sp.add_argument("--private", action="store_true", help="create the repository private")
    sp.add_argument("--merged", action="store_true", help="push the merged model (merge the run first)")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("delete", cmd_delete, "Delete a finished or queued run and its files (whole run id)."))
    sp.add_argument("run_id")

    with_runs_dir(cmd("reindex", cmd_reindex, "Rebuild the run registry from the run directories (the old registry "
                                              "file is kept beside it)."))

    cluster = sub.add_parser("cluster", help="A Ray cluster: its nodes, free and used CPUs/GPUs, our runs on it.")
    cluster_sub = cluster.add_subparsers(dest="cluster_command", required=True)
    sp = with_runs_dir(cluster_sub.add_parser("status", help="Nodes, CPUs/GPUs free and used, our runs on it."))
    sp.set_defaults(func=cmd_cluster_status)
    sp.add_argument("--ray-address", help="http://HOST:8265 (default: $LORA_LAB_RAY_ADDRESS)")
    sp.add_argument("--json", action="store_true")
    add_team_commands(cmd, with_runs_dir)
    return p


def add_team_commands(cmd, with_runs_dir) -> None:
    """users, audit, settings, serve (handlers in cli_team.py)."""
    def team(name):
        return model_command(name, TEAM_COMMANDS)

    users = with_runs_dir(cmd("users", team("cmd_users"), "Manage who may sign in to a team server, and their role."))
    ops = users.add_subparsers(dest="users_command", required=True)
    sp = ops.add_parser("add", help="Add a local account (asks for a password) or, with --oidc, a person the "
                                    "identity provider signs in (by e-mail).")
    sp.add_argument("name")
    sp.add_argument("--role", required=True, choices=["viewer", "operator", "admin"])
    how = sp.add_mutually_exclusive_group()
    how.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    how.add_argument("--oidc", action="store_true", help="no password: signs in through the identity provider")
    sp = ops.add_parser("set-role", help="Change a user's role.")
    sp.add_argument("name")
    sp.add_argument("role", choices=["viewer", "operator", "admin"])
    sp = ops.add_parser("set-password", help="Set a local account's password (ends its sessions).")
    sp.add_argument("name")
    sp.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    sp = ops.add_parser("remove", help="Remove a user (ends their sessions).")
    sp.add_argument("name")
    sp = ops.add_parser("list", help="List users and roles (never passwords).")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("audit", team("cmd_audit"), "Print the audit log: who did what, when, to which run."))
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--limit", type=int, default=1000, help="newest N entries (default 1000)")
    sp.add_argument("--actor", help="only this user's entries")
    sp.add_argument("--action", help="only this action (launch, stop, sign-in, sign-in-failed, ...)")
    sp.add_argument("--run", help="only entries about this run id")

    sp = with_runs_dir(cmd("settings", team("cmd_settings"), "Show the server settings, or change them: "
                                                             "settings max_sweep_runs=8 hub_models=org/a,org/b"))
    sp.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    sp.add_argument("--json", action="store_true")

    sp = cmd("serve", team("cmd_serve"), "Serve the dashboard: local mode on a loopback address, team mode (sign-in "
                                         "required) when sign-in is configured; other addresses need sign-in.")
    sp.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    sp.add_argument("--port", type=int, default=8501)
    sp.add_argument("--insecure-no-auth", action="store_true",
                    help="serve without sign-in even on a network address (a warning banner shows on every page)")
    sp.add_argument("--secrets", action="append", help="secrets.toml to read (repeatable; default: Streamlit's "
                                                      "~/.streamlit and ./.streamlit, and the app's)")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if hasattr(args, "runs_dir"):
            args.runs = Runs(args.runs_dir)  # one manager per command
        return args.func(args)
    except (LoraLabError, OSError) as exc:
        # Known bad input, or a file the system refused: one clear line, no traceback.
        print(f"error: {safe(exc)}", file=sys.stderr)
        return 2

