"""Estimator page: the terms, the fits table and the rank table come from lora_core.memory; finished runs
show their recorded estimate beside the measured peak."""
import pytest

from apptest_helpers import errors, no_exception, open_page
from lora_core.runs import Runs, RunStatus
from lora_core.memory import estimate, lora_param_table
from lora_ui.format import fmt_bytes

pytestmark = pytest.mark.timeout(300)

PAGE_KNOBS = {"train.optimizer": "adamw", "train.gradient_checkpointing": False, "attention": "sdpa", "device": "cuda"}


def metric(at, label):
    return next(m.value for m in at.metric if m.label == label)


def frame_with(at, column):
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_default_qlora_7b(runs_dir):
    at = open_page("estimator")
    no_exception(at)
    assert not errors(at)
    expected = estimate("llama-2-7b", "qlora", 1, 512, **{"lora.r": 8, "lora.target_modules": "preset:qv",
                                                          "quant.quant_type": "nf4", "quant.double_quant": True},
                        **PAGE_KNOBS)
    assert metric(at, "Estimated peak") == fmt_bytes(expected.peak_bytes)
    assert metric(at, "Tutorial rule (weights × 6)") == fmt_bytes(expected.naive_bytes)
    terms = frame_with(at, "term")
    assert terms["GB"].tolist() == pytest.approx([v / 1e9 for v in expected.terms.values()])
    fits = frame_with(at, "GPU")
    assert list(fits["GPU"]) == [f["gpu"] for f in expected.fits]
    assert list(fits["largest batch"]) == [f["max_batch"] or 0 for f in expected.fits]
    chart = at.get("plotly_chart")[0]
    assert "Memory by term" in chart.proto.spec


def test_knobs_change_the_estimate(runs_dir):
    at = open_page("estimator")
    at.selectbox(key="est_model").set_value("gpt2").run()
    at.selectbox(key="est_method").set_value("full").run()
    at.number_input(key="est_batch").set_value(4).run()
    at.toggle(key="est_ckpt").set_value(True).run()
    no_exception(at)
    expected = estimate("gpt2", "full", 4, 512, **{**PAGE_KNOBS, "train.gradient_checkpointing": True})
    assert metric(at, "Estimated peak") == fmt_bytes(expected.peak_bytes)
    assert not any(n.key == "est_rank" for n in at.number_input)  # no LoRA knobs for full fine-tuning


def test_bad_model_is_an_error(runs_dir):
    at = open_page("estimator")
    at.selectbox(key="est_model").set_value(at.selectbox(key="est_model").options[-1]).run()
    at.text_input(key="est_custom").set_value("not a model at all!").run()
    no_exception(at)
    assert any("model" in e for e in errors(at))
    at.text_input(key="est_custom").set_value("7e9").run()  # a raw parameter count works
    no_exception(at)
    assert not errors(at)


def test_rank_table(runs_dir):
    at = open_page("estimator")
    at.number_input(key="est_din").set_value(768).run()
    at.number_input(key="est_dout").set_value(3072).run()
    table = frame_with(at, "lora_params")
    assert table.to_dict("records") == lora_param_table(768, 3072)
    assert table.set_index("rank").loc[8, "lora_params"] == 8 * (768 + 3072)


def test_estimate_vs_measured_for_finished_runs(use_seeded):
    at = open_page("estimator")
    no_exception(at)
    table = frame_with(at, "measured_gb")
    finished = [r for r in Runs(use_seeded).list() if r.status == RunStatus.SUCCEEDED]
    assert sorted(table["id"]) == sorted(r.id for r in finished)
    for _, row in table.iterrows():
        results = Runs(use_seeded).results(row["id"])
        assert row["measured_gb"] == pytest.approx(results["peak_mem_bytes"] / 1e9)
        assert row["estimate_gb"] == pytest.approx(results["memory_estimate"]["peak_bytes"] / 1e9)
