"""`python -m lora_core …`: the engine from a terminal. Each handler is a thin call into the public API."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .config import BUNDLED_MODELS, ConfigError


def _emit(obj, as_json: bool, text: str | None = None) -> None:
    if as_json:
        print(json.dumps(obj, default=str))
    else:
        print(text if text is not None else json.dumps(obj, indent=2, default=str))


def _runs_dir(args) -> Path | None:
    return Path(args.runs_dir) if getattr(args, "runs_dir", None) else None


# -- engine commands -----------------------------------------------------------------------------------------

def cmd_train(args) -> int:
    from . import launcher, storage
    from .config import ExperimentConfig

    cfg = ExperimentConfig.from_file(args.config)
    runs_dir = _runs_dir(args)
    run_id = launcher.launch(cfg, runs_dir=runs_dir)
    if not args.wait:
        _emit({"run_id": run_id}, args.json, run_id)
        return 0
    print(run_id, file=sys.stderr if args.json else sys.stdout, flush=True)
    try:
        # The worker's log, live, on stderr: stdout stays clean for the results.
        for line in launcher.follow_log(run_id, runs_dir=runs_dir):
            print(line, end="", file=sys.stderr, flush=True)
        record = launcher.wait(run_id, runs_dir=runs_dir)
    except KeyboardInterrupt:
        print(f"\nthe run continues in the background; stop it with: python -m lora_core stop {run_id}",
              file=sys.stderr)
        return 130
    results = storage.read_results(run_id, runs_dir=runs_dir) or {}
    out = {**results, "run_id": run_id, "status": record.status, "error": record.error}
    _emit(out, args.json)
    return 0 if record.status == "SUCCEEDED" else 1


def cmd_params(args) -> int:
    from .config import ExperimentConfig
    from .models import count_params

    cfg = ExperimentConfig.from_file(args.config)
    num_labels = 2
    if cfg.task == "seq-cls":  # the head's size depends on the class count: read it off the data when we can
        try:
            from .data import label_counts

            num_labels = max(2, len(label_counts(cfg.data.train, cfg.data.label_column, subset=cfg.data.subset,
                                                 split=cfg.data.train_split)))
        except Exception as exc:  # unreadable data is reported by `train`; counts still help here
            print(f"note: counting with 2 labels ({exc})", file=sys.stderr)
    counts = {**count_params(cfg, num_labels=num_labels), "num_labels": num_labels if cfg.task == "seq-cls" else None}
    text = (f"trainable {counts['trainable']:,} / total {counts['total']:,} ({counts['percent']:.4f}%), "
            f"adapter {counts['adapter_bytes'] / 1e6:.2f} MB\n"
            + "\n".join(f"  {name:<24} {n:>12,}" for name, n in counts["by_module"].items()))
    _emit(counts, args.json, text)
    return 0


def cmd_targets(args) -> int:
    from .models import list_targets, load_config, target_presets

    model_type = load_config(args.model, args.trust_remote_code).model_type
    targets = list_targets(args.model, trust_remote_code=args.trust_remote_code)
    presets = target_presets(args.model, args.trust_remote_code, layers=targets, model_type=model_type)
    if args.json:
        _emit({"model_type": model_type, "targets": targets, "presets": presets}, True)
        return 0
    for t in targets:
        mark = "  (head: not a LoRA target)" if t["head"] else ""
        print(f"{t['name']:<60} {t['type']:<12} {t['in_features']:>6} -> {t['out_features']:<6}{mark}")
    for name, leaves in presets.items():
        print(f"preset:{name}: {', '.join(leaves)}")
    return 0


def cmd_merge(args) -> int:
    from . import storage
    from .merge import merge_adapter

    record = storage.get_run(args.run_id, runs_dir=_runs_dir(args))
    cfg = storage.read_config(record.id, runs_dir=_runs_dir(args))
    report = merge_adapter(cfg, storage.artifacts_dir(record.id, runs_dir=_runs_dir(args)) / "adapter",
                           Path(args.out))
    text = (f"merged into {report['out_dir']} ({report['merged_bytes'] / 1e6:.1f} MB; adapter "
            f"{report['adapter_bytes'] / 1e6:.2f} MB)\nmax |logit diff| vs adapter model: "
            f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.0e}), LoRA params left: "
            f"{report['lora_params_left']}\n{report['note']}")
    _emit(report, args.json, text)
    return 0 if report["ok"] else 1


def cmd_estimate(args) -> int:
    from .estimator import estimate

    knobs = {k: v for k, v in vars(args).items()
             if k not in ("func", "json", "command", "model", "method", "batch_size", "seq_len") and v is not None}
    est = estimate(model=args.model, method=args.method, batch_size=args.batch_size, seq_len=args.seq_len, **knobs)
    _emit(est.to_dict(), args.json, est.summary())
    return 0


# -- run commands --------------------------------------------------------------------------------------------

def cmd_status(args) -> int:
    from . import launcher, storage

    record = launcher.get(args.run_id, runs_dir=_runs_dir(args))  # reconciles first: a dead worker shows FAILED
    metrics = storage.read_metrics(record.id, runs_dir=_runs_dir(args))
    last = next((e for e in reversed(metrics) if e.get("kind") in ("log", "eval")), {})
    phase = next((e.get("phase") for e in reversed(metrics) if e.get("kind") == "phase"), None)
    progress = next((e["progress"] for e in reversed(metrics) if e.get("progress") is not None), record.progress)
    out = {**record.to_dict(), "progress": progress, "phase": phase, "last_metrics": last}
    text = (f"{record.id}  {record.status}  pid={record.pid}  phase={phase}  step={last.get('step')}  "
            f"progress={'-' if progress is None else f'{100 * progress:.0f}%'}")
    if record.error:
        text += f"\n{record.error}"
    if record.status == "FAILED" and record.error_log:
        text += "\n--- last lines of worker.log ---\n" + record.error_log
    _emit(out, args.json, text)
    return 0


def cmd_list(args) -> int:
    from . import launcher

    runs = launcher.list_runs(runs_dir=_runs_dir(args))  # reconciles first
    if args.json:
        _emit([r.to_dict() for r in runs], True)
        return 0
    for r in runs:
        rank = "-" if r.rank is None else r.rank
        print(f"{r.id:<48} {r.status:<10} {r.method or '-':<10} r={rank!s:<5} {r.name}")
    return 0


def cmd_stop(args) -> int:
    from . import launcher

    print(launcher.stop(args.run_id, timeout=args.timeout, runs_dir=_runs_dir(args)))
    return 0


def cmd_resume(args) -> int:
    from . import launcher

    print(launcher.resume(args.run_id, runs_dir=_runs_dir(args)))
    return 0


def cmd_sweep(args) -> int:
    import yaml

    from . import launcher
    from .config import ExperimentConfig

    cfg = ExperimentConfig.from_file(args.config)
    vary: dict[str, list] = {}
    for item in args.vary:
        key, sep, values = item.partition("=")
        if not sep or not values:
            raise ConfigError(key, "--vary takes KEY=V1,V2,… (e.g. lora.r=4,8,16)")
        vary.setdefault(key.strip(), []).extend(yaml.safe_load(v) for v in values.split(","))
    sweep_id, run_ids = launcher.sweep(cfg, vary, runs_dir=_runs_dir(args))
    _emit({"sweep_id": sweep_id, "run_ids": run_ids}, args.json, "\n".join([sweep_id, *run_ids]))
    return 0


def cmd_recipe(args) -> int:
    from . import recipes

    if not args.key:
        for r in recipes.RECIPES.values():
            print(f"{r.key:<24} {r.title}\n{'':<24} {r.command()}")
        return 0
    sweep_id, run_ids = recipes.launch(args.key, runs_dir=_runs_dir(args))
    _emit({"sweep_id": sweep_id, "run_ids": run_ids}, args.json, "\n".join([*([sweep_id] if sweep_id else []),
                                                                              *run_ids]))
    return 0


def cmd_logs(args) -> int:
    from . import launcher, storage

    if not args.follow:
        print(storage.log_tail(args.run_id, n=args.lines, runs_dir=_runs_dir(args)))
        return 0
    for line in launcher.follow_log(args.run_id, runs_dir=_runs_dir(args)):
        print(line, end="", flush=True)
    return 0


def cmd_delete(args) -> int:
    from . import launcher

    launcher.delete(args.run_id, runs_dir=_runs_dir(args))
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

    sp = with_runs_dir(cmd("train", cmd_train, "Launch a training run in the background and print its id."))
    sp.add_argument("config", help="experiment config (YAML or JSON)")
    sp.add_argument("--wait", action="store_true", help="wait for the run to end; exit 1 unless it succeeded")
    sp.add_argument("--json", action="store_true", help="with --wait: final results as JSON on the last line")

    sp = cmd("params", cmd_params, "Trainable/total parameters and adapter size for a config (no training).")
    sp.add_argument("config")
    sp.add_argument("--json", action="store_true")

    sp = cmd("targets", cmd_targets, "List the adaptable layers of a model and the architecture presets.")
    sp.add_argument("model", help=f"a bundled model ({', '.join(BUNDLED_MODELS)}), a hub id or a local directory")
    sp.add_argument("--trust-remote-code", action="store_true")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("merge", cmd_merge, "Merge a LoRA run's adapter into its base and save a plain model."))
    sp.add_argument("run_id")
    sp.add_argument("--out", required=True, help="output directory for the merged model")
    sp.add_argument("--json", action="store_true")

    sp = cmd("estimate", cmd_estimate, "Estimate training memory, term by term, and which GPUs it fits.")
    sp.add_argument("--model", required=True, help="a preset (e.g. llama-2-7b, gpt2, minilm), a config.json or "
                                                   "model dir, a hub id, or a parameter count like 7e9")
    sp.add_argument("--method", default="lora", choices=["full", "full-bf16", "full-fp16", "lora", "qlora",
                                                         "head-only"],
                    help="full = fp32; full-bf16/full-fp16 = mixed precision with fp32 master weights")
    sp.add_argument("--batch-size", type=int, default=1)
    sp.add_argument("--seq-len", type=int, default=512)
    sp.add_argument("--task", choices=["causal-lm", "seq-cls"], help="default: causal-lm for decoders")
    sp.add_argument("--num-labels", type=int, help="classes of a seq-cls head (default 2)")
    sp.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16", "bf16-mixed", "fp16-mixed",
                                            "bf16-true", "fp16-true"],
                    help="compute precision (default: fp32 for full, auto = bf16-mixed on CUDA otherwise)")
    sp.add_argument("--weights-dtype", choices=["fp32", "bf16", "fp16"], help="dtype the weights are loaded in")
    sp.add_argument("--rank", type=int, help="LoRA rank (default 8)")
    sp.add_argument("--targets", help="comma-separated layer names, all-linear, or preset:qv / preset:attention")
    sp.add_argument("--lora-dropout", type=float, help="LoRA dropout (default 0.1)")
    sp.add_argument("--optimizer", choices=["adamw", "adamw_8bit", "sgd"])
    sp.add_argument("--adamw-impl", choices=["fused", "foreach", "for-loop"],
                    help="AdamW implementation: its step temporaries (default fused)")
    sp.add_argument("--quant-type", choices=["nf4", "fp4"])
    sp.add_argument("--no-double-quant", dest="double_quant", action="store_false", default=None)
    sp.add_argument("--gradient-checkpointing", action="store_true", default=None)
    sp.add_argument("--attention", choices=["sdpa", "eager", "flash"])
    sp.add_argument("--grad-accum", type=int, help="gradient accumulation steps (gradients live through forward)")
    sp.add_argument("--device", choices=["cuda", "cpu"], help="cpu: no CUDA context, no allocator slack")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("status", cmd_status, "Status, pid, progress and last metrics of a run."))
    sp.add_argument("run_id")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("list", cmd_list, "List runs."))
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("stop", cmd_stop, "Stop a run: graceful (saves adapter + checkpoint), then kill."))
    sp.add_argument("run_id")
    sp.add_argument("--timeout", type=float, default=15.0, help="seconds before the process group is killed")

    sp = with_runs_dir(cmd("resume", cmd_resume, "Resume a STOPPED or FAILED run from its last checkpoint "
                                                 "as a new linked run; prints the new run id."))
    sp.add_argument("run_id")

    sp = with_runs_dir(cmd("sweep", cmd_sweep, "Launch one run per combination of varied fields."))
    sp.add_argument("config")
    sp.add_argument("--vary", action="append", default=[], help="KEY=V1,V2 (repeatable), e.g. lora.r=4,8,16")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("recipe", cmd_recipe, "Launch one of the tutorial's challenges (a config and its sweep); "
                                                 "without a name, list them."))
    sp.add_argument("key", nargs="?", help="recipe name, e.g. full-vs-lora-vs-frozen")
    sp.add_argument("--json", action="store_true")

    sp = with_runs_dir(cmd("logs", cmd_logs, "Print a run's worker log."))
    sp.add_argument("run_id")
    sp.add_argument("--follow", action="store_true", help="keep printing until the run ends")
    sp.add_argument("-n", "--lines", type=int, default=200)

    sp = with_runs_dir(cmd("delete", cmd_delete, "Delete a finished or queued run and its files."))
    sp.add_argument("run_id")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ConfigError, ValueError, FileNotFoundError, KeyError) as exc:
        # Known bad input: one clear line, no traceback.
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"error: {message}", file=sys.stderr)
        return 2
