"""The CLI's model commands: params, targets, merge, estimate (cli.py loads this module only when one of them
runs). Each handler is a thin call into the public API."""
from __future__ import annotations

import sys

from . import checks
from .cli import emit
from .data import label_counts
from .memory import estimate
from .models import count_params, model_structure, presets_for
from .runs import Runs


def cmd_params(args) -> int:
    cfg = checks.load_file(args.config, deep=False)  # the data may be unreadable: counts still help
    num_labels = 2
    if cfg.task == "seq-cls":  # the head's size depends on the class count: read it off the data when we can
        try:
            num_labels = max(2, len(label_counts(cfg.data.train, cfg.data.label_column, subset=cfg.data.subset,
                                                 split=cfg.data.train_split)))
        except Exception as exc:  # unreadable data is reported by `train`; counts still help here
            print(f"note: counting with 2 labels ({exc})", file=sys.stderr)
    counts = {**count_params(cfg, num_labels=num_labels), "num_labels": num_labels if cfg.task == "seq-cls" else None}
    text = (f"trainable {counts['trainable']:,} / total {counts['total']:,} ({counts['percent']:.4f}%), "
            f"adapter {counts['adapter_bytes'] / 1e6:.2f} MB\n"
            + "\n".join(f"  {name:<24} {n:>12,}" for name, n in counts["by_module"].items()))
    emit(counts, args.json, text)
    return 0


def cmd_targets(args) -> int:
    described = model_structure(args.model, trust_remote_code=args.trust_remote_code)  # no torch once seen
    targets, model_type = described.layers, described.model_type
    presets = presets_for(targets, model_type)
    if args.json:
        emit({"model_type": model_type, "targets": targets, "presets": presets}, True)
        return 0
    for t in targets:
        mark = "  (head: not a LoRA target)" if t["head"] else ""
        print(f"{t['name']:<60} {t['type']:<12} {t['in_features']:>6} -> {t['out_features']:<6}{mark}")
    for name, leaves in presets.items():
        print(f"preset:{name}: {', '.join(leaves)}")
    return 0


def cmd_merge(args) -> int:
    runs: Runs = args.runs
    report = runs.merge(args.run_id, args.out, overwrite=args.overwrite)
    text = (f"merged into {report['out_dir']} ({report['merged_bytes'] / 1e6:.1f} MB; adapter "
            f"{report['adapter_bytes'] / 1e6:.2f} MB)\nmax |logit diff| vs adapter model: "
            f"{report['max_abs_diff']:.2e} (tolerance {report['tolerance']:.0e}), LoRA params left: "
            f"{report['lora_params_left']}\n{report['note']}")
    emit(report, args.json, text)
    return 0 if report["ok"] else 1


def cmd_estimate(args) -> int:
    knobs = {k: v for k, v in vars(args).items()
             if k not in ("func", "json", "command", "model", "method", "batch_size", "seq_len") and v is not None}
    est = estimate(model=args.model, method=args.method, batch_size=args.batch_size, seq_len=args.seq_len, **knobs)
    emit(est.to_dict(), args.json, est.summary())
    return 0


def cmd_lr_find(args) -> int:
    from .lr_find import lr_find

    cfg = checks.load_file(args.config)
    res = lr_find(cfg, steps=args.steps, start=args.start, end=args.end)
    rows = "\n".join(f"  lr {lr:10.3g}  loss {loss:8.4f}" for lr, loss in zip(res["lrs"], res["losses"]))
    emit(res, args.json, f"{rows}\nsuggested learning rate: {res['suggestion']:.3g} ({res['why']})\n"
                         f"set it with train.learning_rate: {res['suggestion']:.3g}")
    return 0
