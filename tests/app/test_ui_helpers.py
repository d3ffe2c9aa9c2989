"""The dashboard's pure helpers: form state <-> config, the frontier, progress text, comparison ratios."""
import pytest

from lora_core.config import ExperimentConfig
from lora_core.runs import RunRecord, RunStatus
from lora_ui import charts, compare
from lora_ui.format import error_text, fmt_bytes, fmt_count, fmt_duration
from lora_ui.config_form import (OTHER_DATA, OTHER_MODEL, SPLIT_OFF, cli_command, config_dict_from_state,
                                 state_from_config)
from lora_ui.live import progress_line


@pytest.mark.parametrize("data", [
    {},
    {"name": "x", "task": "causal-lm", "method": "qlora", "model": {"source": "org/some-model", "revision": "v2"},
     "lora": {"r": 16, "alpha": 32, "target_modules": ["q_proj", "v_proj"], "modules_to_save": ["lm_head"]},
     "quant": {"quant_type": "fp4", "double_quant": False, "compute_dtype": "float16"},
     "data": {"train": "/data/train.jsonl", "eval": "/data/eval.jsonl", "max_length": 256},
     "train": {"learning_rate": 2e-4, "max_steps": 50, "precision": "fp32"},
     "generate": {"prompts": ["a", "b"], "max_new_tokens": 8}},
    {"method": "full", "data": {"train": "sample:sentiment-3", "eval": "sample:sentiment-3"},
     "lora": {"target_modules": "preset:attention"}},
])
def test_form_state_round_trips(data):
    cfg = ExperimentConfig.from_dict(data)
    back = ExperimentConfig.from_dict(config_dict_from_state(state_from_config(cfg)))
    expected = cfg.to_dict()
    if expected["lora"]["target_modules"] is None:  # the form names the default preset explicitly
        expected["lora"]["target_modules"] = "preset:qv"
    assert back.to_dict() == expected


def test_form_state_composite_fields():
    cfg = ExperimentConfig.from_dict({"model": {"source": "/models/bert"}, "data": {"train": "x.csv"}})
    state = state_from_config(cfg)
    assert (state["cfg_model_choice"], state["cfg_model_custom"]) == (OTHER_MODEL, "/models/bert")
    assert (state["cfg_train_choice"], state["cfg_train_custom"]) == (OTHER_DATA, "x.csv")
    assert state["cfg_eval_choice"] == SPLIT_OFF
    state["cfg_train.learning_rate"] = "  "
    assert config_dict_from_state(state)["train"]["learning_rate"] is None


def test_cli_command_quotes_and_sweeps():
    cfg = ExperimentConfig.from_dict({"name": "my run; rm -rf /"})
    assert cli_command(cfg) == "python -m lora_core train my-run--rm--rf.yaml --wait"
    assert cli_command(cfg, {"lora.r": [4, 8]}).endswith("--vary lora.r=4,8")


def test_pareto_front():
    pts = [(100, 0.80), (10, 0.70), (1000, 0.79), (10, 0.65), (5000, 0.90), (50, 0.60)]
    assert charts.pareto_front(pts) == [(10, 0.70), (100, 0.80), (5000, 0.90)]


def test_progress_line_running_and_finished():
    rec = RunRecord(id="r", name="r", status=RunStatus.RUNNING, created=0.0)
    events = [{"kind": "phase", "phase": "training"},
              {"kind": "log", "step": 5, "epoch": 0.5, "progress": 0.25, "eta_s": 75, "elapsed_s": 25, "loss": 1}]
    frac, text = progress_line(rec, events)
    assert frac == 0.25 and text == "step 5/20 · epoch 0.50 · ETA 1m 15s · elapsed 25s"
    rec.status = RunStatus.SUCCEEDED
    assert "ETA" not in progress_line(rec, events)[1]
    assert progress_line(rec, [])[0] == 0.0


def record(method, rank, tail="a1b2c3", **results):
    return RunRecord(id=f"{method}-{rank}-20261128-{tail}", name=method, status=RunStatus.SUCCEEDED, created=0.0,
                     method=method, lora_r=rank, results=results)


def test_compare_rows_relative_to_full():
    rows = compare.rows([
        record("full", None, accuracy=0.9, trainable_params=1000, train_time_s=100.0, peak_mem_bytes=4e9),
        record("lora", 8, accuracy=0.88, trainable_params=10, train_time_s=50.0, peak_mem_bytes=1e9,
               **{"memory_estimate.peak_bytes": 1.1e9}),
        record("lora", 8, tail="d4e5f6", accuracy=0.87, trainable_params=10, train_time_s=40.0),
    ])
    lora = rows[1]
    assert (lora["label"], rows[2]["label"]) == ("lora r=8 (a1b2c3)", "lora r=8 (d4e5f6)")
    assert rows[0]["label"] == "full"
    assert lora["vs full: accuracy"] == pytest.approx(0.88 / 0.9)
    assert lora["vs full: time"] == pytest.approx(0.5)
    assert lora["vs full: trainable"] == pytest.approx(0.01)
    assert lora["vs full: memory"] == pytest.approx(0.25)
    assert lora["est. peak (GB)"] == pytest.approx(1.1)
    assert rows[2]["vs full: memory"] is None  # no measurement: no ratio
    no_full = compare.rows([record("lora", 4, accuracy=0.5)])
    assert no_full[0]["vs full: accuracy"] is None


def test_formatting():
    assert fmt_bytes(1536) == "1.54 KB" and fmt_bytes(None) == "—"
    assert fmt_count(74_498) == "74.50K" and fmt_count(22_713_986) == "22.71M"
    assert fmt_duration(3725) == "1h 02m" and fmt_duration(61) == "1m 01s"
    assert error_text(KeyError("unknown run id 'x'")) == "unknown run id 'x'"
    assert error_text(RuntimeError("boom")) == "RuntimeError: boom"
