import json

import pytest

from lora_core.config import (DEFAULT_LEARNING_RATES, ConfigError, ExperimentConfig, TrainConfig, field_choices,
                              field_help, get_dotted)

ISSUE_EXAMPLE = """
name: agnews-lora-r8
task: seq-cls
model: {source: minilm}
method: lora
lora: {r: 8, alpha: 16, dropout: 0.1, target_modules: [query, value], bias: none}
quant: {bits: 4, quant_type: nf4, double_quant: true, compute_dtype: bfloat16}
data: {train: path/or/hub-id, eval: path/or/hub-id, text_column: text, label_column: label, max_length: 128}
train: {epochs: 2, batch_size: 32, learning_rate: 1.0e-3, seed: 0}
"""


def test_issue_example_parses_and_round_trips(tmp_path):
    cfg = ExperimentConfig.from_text(ISSUE_EXAMPLE)
    assert cfg.lora.target_modules == ["query", "value"] and cfg.train.learning_rate == 1e-3
    for suffix in (".yaml", ".json"):
        path = cfg.save(tmp_path / f"c{suffix}")
        assert ExperimentConfig.from_file(path) == cfg
    assert json.loads(cfg.to_json())["lora"]["r"] == 8


@pytest.mark.parametrize("data, field, words", [
    ({"colour": 1}, "colour", "allowed keys: name, task"),
    ({"lora": {"rank": 8}}, "lora.rank", "allowed keys: r, alpha"),
    ({"method": "prefix"}, "method", "allowed: full, lora, qlora, head-only"),
    ({"task": "ner"}, "task", "allowed: seq-cls, causal-lm"),
    ({"lora": {"r": 0}}, "lora.r", ">= 1"),
    ({"lora": {"r": "eight"}}, "lora.r", "whole number"),
    ({"lora": {"dropout": 1.0}}, "lora.dropout", "< 1.0"),
    ({"lora": {"bias": "some"}}, "lora.bias", "allowed: none, all, lora_only"),
    ({"lora": {"target_modules": "preset:everything"}}, "lora.target_modules", "preset:qv"),
    ({"quant": {"quant_type": "int4"}}, "quant.quant_type", "allowed: nf4, fp4"),
    ({"quant": {"bits": 8}}, "quant.bits", "allowed: 4"),
    ({"train": {"batch_size": 0}}, "train.batch_size", ">= 1"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate", "must be a number"),
    ({"train": {"gradient_checkpointing": "yes"}}, "train.gradient_checkpointing", "true or false"),
    ({"data": {"max_length": 4}}, "data.max_length", ">= 8"),
    ({"data": {"train": "sample:movies"}}, "data.train", "sample:sentiment-2"),
    ({"task": "causal-lm", "method": "head-only", "data": {"train": "sample:instructions"}}, "method", "seq-cls"),
    ({"task": "causal-lm"}, "data.train", "sample:instructions"),
    ({"name": "  "}, "name", "empty"),
    ({"model": "minilm"}, "model", "mapping"),
])
def test_bad_values_name_the_field_and_the_allowed_values(data, field, words):
    with pytest.raises(ConfigError) as err:
        ExperimentConfig.from_dict(data)
    assert err.value.field == field
    assert words in str(err.value)


def test_yaml_quirks_are_accepted():
    # YAML reads 1e-3 (no dot) as a string; forms send "query, value" as one string.
    cfg = ExperimentConfig.from_text("train: {learning_rate: 1e-3}\nlora: {target_modules: 'query, value'}")
    assert cfg.train.learning_rate == 0.001 and cfg.lora.target_modules == ["query", "value"]
    assert ExperimentConfig.from_dict({"lora": {"target_modules": "all-linear"}}).lora.target_modules == "all-linear"


@pytest.mark.parametrize("given, stored", [
    (["all-linear"], "all-linear"), (["preset:qv"], "preset:qv"), ("preset:attention", "preset:attention"),
    (["query"], ["query"]), ("query,value", ["query", "value"]), ([], None)])
def test_target_modules_have_one_spelling_after_validation(given, stored):
    # a one-item list naming all-linear or a preset means that (PEFT reads ["all-linear"] the same way), so
    # code downstream of the config sees one spelling, whatever order typing tries Union[str, list[str]] in
    assert ExperimentConfig.from_dict({"lora": {"target_modules": given}}).lora.target_modules == stored


def test_invalid_yaml_and_missing_file_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="not valid YAML"):
        ExperimentConfig.from_text("name: [unclosed")
    with pytest.raises(ConfigError, match="must be a mapping"):
        ExperimentConfig.from_text("- a\n- b")
    with pytest.raises(ConfigError, match="not found"):
        ExperimentConfig.from_file(tmp_path / "nope.yaml")


def test_replace_uses_dotted_keys_and_validates():
    base = ExperimentConfig()
    changed = base.replace(**{"lora.r": 16, "method": "full"})
    assert (changed.lora.r, changed.method, base.lora.r) == (16, "full", 8)
    assert get_dotted(changed, "lora.r") == 16
    with pytest.raises(ConfigError, match="lora.r"):
        base.replace(**{"lora.r": -1})


def test_derived_values():
    for method, lr in DEFAULT_LEARNING_RATES.items():  # one default per method, from one table
        assert ExperimentConfig(method=method).learning_rate == lr
        assert f"{method} {lr:g}" in field_help("train.learning_rate")
    assert ExperimentConfig(method="full", train=TrainConfig(learning_rate=3e-4)).learning_rate == 3e-4
    assert set(DEFAULT_LEARNING_RATES) == set(field_choices("method"))
    cfg = ExperimentConfig.from_dict({"lora": {"r": 16, "alpha": 32, "use_rslora": True}})
    assert cfg.lora_scaling == pytest.approx(32 / 4)


def test_help_and_choices_for_the_dashboard():
    assert "rank" in field_help("lora.r").lower()
    assert field_choices("method") == ("full", "lora", "qlora", "head-only")
    assert field_choices("lora.r") is None
