"""The comparison tables: one row per finished run, with ratios relative to full fine-tuning (built from the
registry's key results, plus the Playground choices when given); or one row per setting, runs that differ only in
seed summarized as mean ± std (the engine's numbers, as the `compare` CLI prints them); and the rows of a
sweep's parallel-coordinates plot.
"""
from __future__ import annotations

from collections import Counter

import pandas as pd

from lora_core.config import get_dotted
from lora_ui import insight
from lora_ui.format import method_text, primary_metric
from lora_ui.placement import node_count, placement_text
from lora_ui.service import RunStatus

COLUMNS = ["label", "status", "method", "rank", "trainable", "trainable %", "accuracy", "macro-F1", "eval loss",
           "train time (s)", "CPU busy", "peak mem (GB)", "est. peak (GB)", "adapter (MB)", "vs full: accuracy",
           "vs full: time", "vs full: trainable", "vs full: memory", "preferred", "backend", "world size", "nodes",
           "job id", "eval rows", "data fingerprint", "id"]
STD = " ±"  # the column beside a metric holding its std across seeds


def short_label(rec) -> str:
    label = method_text(rec) if rec.method else rec.name
    return label + (" (stopped)" if rec.status == RunStatus.STOPPED else "")


def labels_for(records) -> list[str]:
    """Short labels (method + rank), made unique with the run id's tail when two runs share one."""
    base = [short_label(r) for r in records]
    seen = Counter(base)
    return [b if seen[b] == 1 else f"{b} ({r.id[-6:]})" for b, r in zip(base, records)]


def estimate_bytes(results: dict) -> float | None:
    """The memory estimate recorded with a run (flattened key `memory_estimate.peak_bytes`, or nested)."""
    if results.get("memory_estimate.peak_bytes") is not None:
        return results["memory_estimate.peak_bytes"]
    est = results.get("memory_estimate")
    if isinstance(est, dict):
        return est.get("peak_bytes")
    return None


def busy_text(results: dict) -> str | None:
    """"busy: …" when other work shared the machine while the run trained, "quiet" when not, None if unknown."""
    if results.get("machine_busy") is None:
        return None
    if not results["machine_busy"]:
        return "quiet"
    parts = []
    if results.get("machine_other_cpu_cores"):
        parts.append(f"{results['machine_other_cpu_cores']:.1f} other cores")
    if results.get("machine_other_runs"):
        parts.append(f"{results['machine_other_runs']} other runs")
    return "busy: " + ", ".join(parts) if parts else "busy"


def rows(records, votes: dict[str, dict] | None = None) -> list[dict]:
    """One row per run; `votes` ({run id: insight.votes(...)}) fills the "preferred" column."""
    out = []
    for rec, label in zip(records, labels_for(records)):
        res = rec.results or {}
        name, value = primary_metric(res)
        est = estimate_bytes(res)
        adapter = res.get("adapter_bytes_on_disk")
        out.append({
            "label": label,
            "status": rec.status,
            "method": rec.method,
            "rank": rec.lora_r,
            "trainable": res.get("trainable_params"),
            "trainable %": res.get("trainable_percent"),
            "accuracy": value if name == "accuracy" else None,
            "macro-F1": res.get("macro_f1"),
            "eval loss": res.get("eval_loss"),
            "train time (s)": res.get("train_time_s"),
            # how busy the machine was while it trained (lora_core.runs.machine): "busy" times are not clean
            "CPU busy": busy_text(res),
            "peak mem (GB)": res["peak_mem_bytes"] / 1e9 if res.get("peak_mem_bytes") else None,
            "est. peak (GB)": est / 1e9 if est else None,
            "adapter (MB)": adapter / 1e6 if adapter else None,
            "preferred": preference_text((votes or {}).get(rec.id)),
            "backend": placement_text(rec),
            "world size": rec.world_size or 1,
            "nodes": node_count(rec.nodes) or None,
            "job id": rec.job_id,
            "eval rows": res.get("eval_rows"),
            "data fingerprint": res.get("dataset_fingerprint"),
            "id": rec.id,
        })
    add_relative(out)
    return out


def preference_text(votes: dict | None) -> str | None:
    """How often the Playground's "which answer is better" picked this run: "2 of 5" (None: never compared)."""
    if not votes or not votes["comparisons"]:
        return None
    ties = f", {votes['ties']} no difference" if votes["ties"] else ""
    return f"{votes['wins']} of {votes['comparisons']}{ties}"


def grouped_rows(groups) -> list[dict]:
    """One row per setting: mean and std across its seeds of each metric that any setting has, with the keys
    the bar and frontier charts read (label, method, trainable, accuracy, eval loss, train time (s))."""
    table = insight.group_rows(groups)
    present = [c for c in ("accuracy", "macro-F1", "eval loss", "perplexity", "train time (s)")
               if any(r[c] is not None for r in table)]
    out = []
    for group, row in zip(groups, table):
        shown = {"label": row["setting"], "method": row["method"], "rank": row["rank"], "runs": row["runs"],
                 "seeds": row["seeds"]}
        for column in present:
            shown[column], shown[column + STD] = row[column], row[column + STD]
        shown.update({"trainable": row["trainable"], "CPU busy": group_busy_text(group.records),
                      "peak mem (GB)": None, "ids": row["ids"]})
        out.append(shown)
    return out


def group_busy_text(records) -> str | None:
    """A setting's "CPU busy" cell: "busy: 2 of 3 runs" when some of its seeds trained on a busy machine."""
    known = [busy_text(r.results or {}) for r in records]
    busy = sum(1 for b in known if b and b.startswith("busy"))
    if busy:
        return f"busy: {busy} of {len(records)} runs"
    return "quiet" if all(known) else None


def busy_labels(records) -> list[str]:
    """The labels of the runs whose training times were measured while other work shared the CPU."""
    return [label for rec, label in zip(records, labels_for(records))
            if (busy_text(rec.results or {}) or "").startswith("busy")]


def parallel_rows(records, fields: list[str]) -> list[dict]:
    """One row per run: the value of each varied config field, and its metrics by table column name."""
    configs = insight.run_configs([r.id for r in records])
    out = []
    for rec, row in zip(records, rows(records)):
        flat = {f: _hashable(get_dotted(configs[rec.id], f)) for f in fields}
        out.append({**flat, **{k: row[k] for k in ("accuracy", "macro-F1", "eval loss", "train time (s)")}})
    return out


def _hashable(value):
    return ",".join(map(str, value)) if isinstance(value, list) else value


def add_relative(table: list[dict]) -> None:
    """Ratios to the (first) full fine-tuning run in the table; None when there is none."""
    full = next((r for r in table if r["method"] == "full"), None)

    def ratio(row, key):
        if full is None or row.get(key) in (None, 0) or full.get(key) in (None, 0):
            return None
        return row[key] / full[key]

    for row in table:
        row["vs full: accuracy"] = ratio(row, "accuracy")
        row["vs full: time"] = ratio(row, "train time (s)")
        row["vs full: trainable"] = ratio(row, "trainable")
        row["vs full: memory"] = ratio(row, "peak mem (GB)")


def frame(table: list[dict]) -> pd.DataFrame:
    return pd.DataFrame(table, columns=COLUMNS)


def same_eval_set(table: list[dict]) -> bool:
    """True when every run was scored on the same data (same fingerprint): a fair comparison."""
    prints = {r["data fingerprint"] for r in table if r.get("data fingerprint")}
    return len(prints) <= 1


def estimate_rows(records) -> list[dict]:
    """Recorded memory estimate beside the measured peak, one row per run that measured one."""
    measured = [r for r in records if (r.results or {}).get("peak_mem_bytes")]
    out = []
    for rec, label in zip(measured, labels_for(measured)):
        est = estimate_bytes(rec.results)
        peak, tensors = rec.results["peak_mem_bytes"], rec.results.get("peak_tensor_bytes")
        out.append({"label": f"{label} · {rec.name}"[:60], "model": rec.model,
                    "estimate_gb": est / 1e9 if est else None, "tensor_gb": tensors / 1e9 if tensors else None,
                    "error vs tensors %": (est / tensors - 1) * 100 if est and tensors else None,
                    "measured_gb": peak / 1e9, "error %": (est / peak - 1) * 100 if est else None,
                    "how measured": rec.results.get("peak_mem_method", ""), "id": rec.id})
    return out
