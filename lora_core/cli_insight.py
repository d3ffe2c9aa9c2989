"""The CLI's analysis commands: inspect (what an adapter learned) and compare (runs side by side, seeds as
mean ± std, config diffs). cli.py loads this module only when one of them runs. Thin calls into
lora_core.adapters and lora_core.runs.compare."""
from __future__ import annotations

import sys
from pathlib import Path

from . import adapters
from .adapters.report import read_config
from .cli import emit
from .errors import RunError
from .runs import Runs, RunStatus
from .runs import compare as cmp

FINISHED = (RunStatus.SUCCEEDED, RunStatus.STOPPED)


def table(rows: list[list], header: list[str]) -> str:
    """Plain fixed-width columns, numbers right-aligned."""
    cells = [header] + [["—" if v is None else str(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    numeric = [all(_is_number(r[i]) for r in cells[1:]) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) if num else c.ljust(w) for c, w, num in zip(r, widths, numeric)).rstrip()
             for r in cells]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def _is_number(text: str) -> bool:
    return text.replace(".", "", 1).replace("-", "", 1).replace("e", "", 1).isdigit() or text == "—"


# -- inspect --------------------------------------------------------------------------------------------------

def _report(runs: Runs, target: str, base: str | None, weights=None) -> adapters.AdapterReport:
    folder = Path(target).expanduser()
    if folder.is_dir():
        return adapters.inspect_adapter(folder, base=weights or base or _config_base(folder))
    return adapters.inspect_run(runs, target, base=weights)


def _config_base(folder: Path) -> str | None:
    return read_config(folder).get("base_model_name_or_path")


def cmd_inspect(args) -> int:
    report = _report(args.runs, args.target, args.base)
    out = report.to_dict()
    sims = None
    if args.against:
        other = _report(args.runs, args.against, args.base or report.base_model)
        sims = adapters.similarity(report, other, basis=args.basis)
        out["similarity"] = {"against": other.run_id or other.adapter_dir, "basis": args.basis,
                             "basis_meaning": adapters.BASES[args.basis], "r1": report.r, "r2": other.r,
                             "modules": [s.to_dict() for s in sims]}
    if args.json:
        emit(out, True)
        return 0
    print(inspect_text(report, out))
    if args.module:
        m = report.module(args.module)
        print(f"\nspectrum of {m.name}: " + ", ".join(f"{v:.4g}" for v in m.singular_values))
    if sims is not None:
        print(similarity_text(out["similarity"], sims))
    return 0


def inspect_text(report: adapters.AdapterReport, out: dict) -> str:
    head = (f"{report.run_id or report.adapter_dir} · {report.method or 'LoRA'} r={report.r} (alpha "
            f"{report.lora_alpha:g}{', rsLoRA' if report.use_rslora else ''}{', DoRA' if report.use_dora else ''}) · "
            f"base {report.base_model} · {len(report.modules)} modules\n{report.base_note}")
    rows = [[m.layer, m.module, f"{m.shape[0]}×{m.shape[1]}", f"{m.delta_norm:.4g}",
             None if m.relative_norm is None else f"{m.relative_norm:.4g}", f"{m.effective_rank} of {m.r}",
             ", ".join(f"{v:.3g}" for v in m.singular_values[:4])] for m in report.modules]
    advice = out["advice"]
    also = f"\nalso saved in full: {', '.join(report.also_saved)}" if report.also_saved else ""
    return (head + "\n\n" + table(rows, ["layer", "module", "shape", "‖ΔW‖_F", "‖ΔW‖/‖W‖",
                                         f"eff. rank ({report.energy:.0%})", "top singular values"])
            + f"\n\nAdvice: {advice['text']}\nRule: {advice['rule']}" + also)


def similarity_text(sim: dict, sims: list) -> str:
    rows = [[s.layer, s.module, f"{s.overlap:.3f}", f"{s.random_overlap:.3f}", f"{float(s.phi[0, 0]):.3f}"]
            for s in sims]
    return (f"\nSubspace similarity with {sim['against']} (Hu et al. §7; {sim['basis_meaning']}). overlap = "
            f"φ(r1={sim['r1']}, r2={sim['r2']}), the share of the smaller subspace inside the larger; random = its "
            "expectation for random subspaces; top = φ(1, 1)\n"
            + table(rows, ["layer", "module", "overlap", "random", "top"]))


# -- compare --------------------------------------------------------------------------------------------------

def chosen_runs(runs: Runs, run_ids: list[str], sweep: str | None) -> list:
    if bool(run_ids) == bool(sweep):
        raise RunError("give run ids or --sweep ID (one of the two)")
    records = runs.list(sweep_id=sweep) if sweep else [runs.get(i) for i in run_ids]
    if sweep and not records:
        raise RunError(f"no runs in sweep {sweep!r}")
    finished = [r for r in records if r.status in FINISHED and r.results]
    for r in records:
        if r not in finished:
            print(f"note: {r.id} is {r.status}, left out", file=sys.stderr)
    if not finished:
        raise RunError("none of these runs has finished with results yet")
    return sorted(finished, key=lambda r: r.created)


def cmd_compare(args) -> int:
    runs: Runs = args.runs
    records = chosen_runs(runs, args.run_ids, args.sweep)
    configs = {r.id: runs.config(r.id) for r in records}
    if args.diff:
        diff = cmp.config_diff(configs)
        rows = [[field, *(cmp.value_text(values[r.id]) for r in records)] for field, values in diff.items()]
        emit(diff, args.json, table(rows, ["field", *(r.id for r in records)]) if rows else
             "these runs have the same config (apart from their names)")
        return 0
    groups = cmp.group_by_setting(records, configs)
    rows = cmp.group_rows(groups)
    if args.json:
        emit({"groups": rows, "seed_groups": cmp.has_seed_groups(groups)}, True)
        return 0
    shown = [c for c, _ in cmp.METRICS if any(r[c] is not None for r in rows)]
    body = [[r["setting"], r["runs"], *(cmp.Stat(r[c], r[c + cmp.STD_SUFFIX], r["runs"]).text() for c in shown),
             None if r["trainable"] is None else f"{r['trainable']:,.0f}"] for r in rows]
    print(table(body, ["setting", "runs", *(f"{c} (mean ± std)" for c in shown), "trainable"]))
    print("\nstd: sample standard deviation over the seeds (n − 1); runs that differ only in train.seed are "
          "one setting")
    return 0
