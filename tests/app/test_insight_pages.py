"""The insight pages against real runs: a 2-setting × 3-seed sweep launched from the Train page shows mean ± std
on Compare (table, error bars, bands, the same numbers as the `compare` CLI), parallel coordinates and config
differences; Inspect reads real adapters; the Playground runs several adapters of one base and records which
answer was better, which Compare then counts."""
import json
import statistics

import pytest

from apptest_helpers import errors, no_exception, open_page, texts
from helpers import cli, tiny_config
from lora_core.adapters import inspect_run, rank_advice, similarity
from lora_core.runs import Runs, RunStatus

pytestmark = pytest.mark.timeout(500)


def figures(at) -> dict[str, dict]:
    out = {}
    for chart in at.get("plotly_chart"):
        fig = json.loads(chart.proto.spec)
        out[fig["layout"].get("title", {}).get("text", "")] = fig
    return out


def test_seed_sweep_mean_and_std_on_compare(runs_dir, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "2")
    at = open_page("train", {"cfg_current": tiny_config(name="seeds").to_dict()})
    at.multiselect(key="train_sweep_ranks").set_value([2, 4]).run()
    at.multiselect(key="train_sweep_baselines").set_value([]).run()
    at.number_input(key="train_sweep_seeds").set_value(3).run()
    plan = next(d.value for d in at.dataframe if "seed" in d.value.columns)
    assert sorted(zip(plan["rank"], plan["seed"])) == [(2, 0), (2, 1), (2, 2), (4, 0), (4, 1), (4, 2)]
    next(b for b in at.button if b.key == "train_sweep_go").click().run()
    no_exception(at)
    runs = Runs(runs_dir)
    records = runs.list(reconcile=False)
    assert len(records) == 6 and len({r.sweep_id for r in records}) == 1
    for r in records:
        assert runs.wait(r.id, timeout=400).status == RunStatus.SUCCEEDED
    records = runs.list(reconcile=False)
    results = {r.id: runs.results(r.id) for r in records}
    assert len({res["dataset_fingerprint"] for res in results.values()}) == 1  # the seeds share their data
    assert sorted(res["seed"] for res in results.values()) == [0, 0, 1, 1, 2, 2]

    at = open_page("compare")
    no_exception(at)
    assert not errors(at)
    assert at.toggle(key="compare_group").value is True
    table = next(d.value for d in at.dataframe if "accuracy ±" in d.value.columns).set_index("label")
    assert sorted(table.index) == ["r=2", "r=4"]
    for label, rank in (("r=2", 2), ("r=4", 4)):
        accs = [res["accuracy"] for rid, res in results.items() if runs.config(rid).lora.r == rank]
        row = table.loc[label]
        assert row["runs"] == 3 and row["seeds"] == "0, 1, 2"
        assert row["accuracy"] == pytest.approx(statistics.fmean(accs))
        assert row["accuracy ±"] == pytest.approx(statistics.stdev(accs))
    assert "± column its sample standard deviation" in texts(at)
    figs = figures(at)
    bars = figs["Accuracy"]["data"][0]
    assert bars["error_y"]["array"] == pytest.approx(list(table.loc[bars["x"], "accuracy ±"]))
    band = figs["Train loss: mean ± std across seeds"]
    assert {t["name"] for t in band["data"] if t.get("fill") == "toself"} == {"r=2 · ± std", "r=4 · ± std"}
    assert any(t["name"] == "r=2 · train loss (n=3)" for t in band["data"])
    # parallel coordinates: the varied field, then the metric
    parallel = next(f for f in figs.values() if f["data"][0]["type"] == "parcoords")
    assert [d["label"] for d in parallel["data"][0]["dimensions"]] == ["lora.r", "accuracy"]
    # the CLI prints the same numbers
    sweep = records[0].sweep_id
    out = json.loads(cli("compare", "--sweep", sweep, "--json", "--runs-dir", str(runs_dir)).stdout)
    by_setting = {g["setting"]: g for g in out["groups"]}
    for label in ("r=2", "r=4"):
        assert by_setting[label]["accuracy"] == pytest.approx(table.loc[label, "accuracy"])
        assert by_setting[label]["accuracy ±"] == pytest.approx(table.loc[label, "accuracy ±"])
    text = cli("compare", "--sweep", sweep, "--runs-dir", str(runs_dir)).stdout
    assert f"{table.loc['r=2', 'accuracy']:.4f} ± {table.loc['r=2', 'accuracy ±']:.4f}" in text
    diff = json.loads(cli("compare", *[r.id for r in records[:2]], "--diff", "--json", "--runs-dir",
                          str(runs_dir)).stdout)
    assert set(diff) <= {"lora.r", "train.seed"} and diff
    # ungrouped: one row per run
    at.toggle(key="compare_group").set_value(False).run()
    no_exception(at)
    per_run = next(d.value for d in at.dataframe if "vs full: trainable" in d.value.columns)
    assert len(per_run) == 6
    differences = next(d.value for d in at.dataframe if "field" in d.value.columns)
    assert sorted(differences["field"]) == ["lora.r", "train.seed"]


def test_inspect_page_reads_real_adapters(use_seeded):
    runs = Runs(use_seeded)
    loras = sorted((r for r in runs.list(reconcile=False) if r.method == "lora" and r.task == "seq-cls"),
                   key=lambda r: r.lora_r)
    at = open_page("inspect")
    no_exception(at)
    assert not errors(at)
    at.selectbox(key="insp_run").set_value(loras[1].id).run()
    no_exception(at)
    report = inspect_run(runs, loras[1].id)
    assert f"**Rank advice:** {rank_advice(report).text}" in texts(at)
    assert "Rule: Effective rank of a module" in texts(at)
    figs = figures(at)
    rank_map = next(f for t, f in figs.items() if t.startswith("Effective rank"))
    z = [v for row in rank_map["data"][0]["z"] for v in row if v is not None]
    assert sorted(z) == sorted(m.effective_rank for m in report.modules)
    spectrum = next(f for t, f in figs.items() if t.startswith("Singular values of ΔW"))
    assert spectrum["data"][0]["y"] == pytest.approx(report.modules[0].singular_values)
    # against the r=2 adapter of the same base
    at.selectbox(key="insp_against").set_value(loras[0].id).run()
    no_exception(at)
    sims = similarity(report, inspect_run(runs, loras[0].id))
    overlap = next(f for t, f in figures(at).items() if t.startswith("Subspace overlap"))
    values = [v for row in overlap["data"][0]["z"] for v in row if v is not None]
    assert sorted(values) == pytest.approx(sorted(s.overlap for s in sims))
    phi = next(f for t, f in figures(at).items() if t.startswith("φ(i, j)"))
    assert len(phi["data"][0]["z"]) == 4 and len(phi["data"][0]["z"][0]) == 2


def test_inspect_page_without_adapters(runs_dir):
    at = open_page("inspect")
    no_exception(at)
    assert "No finished LoRA or QLoRA run" in texts(at)


def test_playground_side_by_side_and_votes_on_compare(seeded_copy):
    runs = Runs(seeded_copy)
    loras = [r for r in runs.list(reconcile=False) if r.method == "lora" and r.task == "seq-cls"]
    gen = next(r for r in runs.list(reconcile=False) if r.task == "causal-lm")
    at = open_page("playground")
    at.multiselect(key="play_runs").set_value([loras[0].id, gen.id]).run()
    next(b for b in at.button if b.key == "play_load").click().run()
    assert any("cannot share a base" in e for e in errors(at)), errors(at)
    at.multiselect(key="play_runs").set_value([r.id for r in loras]).run()
    next(b for b in at.button if b.key == "play_load").click().run()
    no_exception(at)
    assert not errors(at)
    next(b for b in at.button if b.key == "play_go").click().run()
    no_exception(at)
    answers = at.dataframe[0].value
    names = [f"{r.name} · {r.id[-6:]}" for r in loras]
    # one code path with the single-run case: each side's label and confidence, ✱ where a tuned label changed
    assert list(answers.columns) == ["text", "base", "base confidence", names[0], f"{names[0]} confidence",
                                     names[1], f"{names[1]} confidence", "changed"]
    assert len(answers) == 3
    at.radio(key="play_vote_0").set_value(loras[1].id)
    at.radio(key="play_vote_1").set_value("no difference")
    next(b for b in at.button if b.label == "Record choices").click().run()
    no_exception(at)
    assert runs.votes(loras[1].id) == {"wins": 1, "comparisons": 2, "ties": 1}
    assert runs.votes(loras[0].id) == {"wins": 0, "comparisons": 2, "ties": 1}
    at = open_page("compare")
    table = next(d.value for d in at.dataframe if "preferred" in d.value.columns).set_index("id")
    assert table.loc[loras[1].id, "preferred"] == "1 of 2, 1 no difference"
    assert table.loc[loras[0].id, "preferred"] == "0 of 2, 1 no difference"
