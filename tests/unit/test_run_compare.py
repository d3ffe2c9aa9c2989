"""Seeds in sweeps and the comparison algebra: config diffs, runs grouped by setting, mean ± std."""
import statistics

import pytest

from lora_core.config import ConfigError, ExperimentConfig
from lora_core.runs import RunRecord, RunStatus
from lora_core.runs import compare as cmp
from lora_core.runs.sweep import sweep_configs


def cfg(**dotted) -> ExperimentConfig:
    return ExperimentConfig.from_dict({"name": "base", "train": {"seed": 3}}).replace(**dotted)


def test_seeds_repeat_each_setting_on_the_same_data():
    configs = sweep_configs(cfg(), {"lora.r": [4, 8]}, seeds=3)
    assert [(c.lora.r, c.train.seed) for c in configs] == [(4, 3), (4, 4), (4, 5), (8, 3), (8, 4), (8, 5)]
    assert {c.data.seed for c in configs} == {3}  # pinned to the base's seed: same rows, same eval split
    assert configs[1].name == "base [lora r=4 seed=4]"
    assert len({c.name for c in configs}) == 6
    assert [c.train.seed for c in sweep_configs(cfg(**{"data.seed": 9}), {}, seeds=2)] == [3, 4]
    assert {c.data.seed for c in sweep_configs(cfg(**{"data.seed": 9}), {}, seeds=2)} == {9}
    one = sweep_configs(cfg(), {"lora.r": [4]})
    assert one[0].data.seed is None and one[0].name == "base [lora r=4]"  # seeds=1 changes nothing


@pytest.mark.parametrize("seeds", [0, 21, 1.5, True])
def test_bad_seed_counts_are_refused(seeds):
    with pytest.raises(ConfigError, match="seeds: runs per setting must be a whole number from 1 to 20"):
        sweep_configs(cfg(), {"lora.r": [4]}, seeds=seeds)


def test_a_sweep_needs_a_field_or_seeds():
    with pytest.raises(ConfigError, match="vary"):
        sweep_configs(cfg(), {})


def record(run_id: str, accuracy: float | None, seed: int) -> RunRecord:
    return RunRecord(id=run_id, name=run_id, status=RunStatus.SUCCEEDED, created=0.0,
                     results={"accuracy": accuracy, "seed": seed, "train_time_s": 2.0 + seed,
                              "trainable_params": 100})


def test_groups_by_setting_with_mean_and_std():
    configs = {c.name: c for c in sweep_configs(cfg(), {"lora.r": [4, 8]}, seeds=3)}
    names = list(configs)
    accs = [0.5, 0.6, 0.7, 0.8, 0.8, None]  # the last run has no metric: left out of its mean
    records = [record(n, a, configs[n].train.seed) for n, a in zip(names, accs)]
    groups = cmp.group_by_setting(records, {r.id: configs[r.id] for r in records})
    assert [g.label for g in groups] == ["r=4", "r=8"] and [len(g.records) for g in groups] == [3, 3]
    rows = cmp.group_rows(groups)
    assert rows[0]["accuracy"] == pytest.approx(0.6) and rows[0]["accuracy ±"] == pytest.approx(
        statistics.stdev([0.5, 0.6, 0.7]))
    assert rows[1]["accuracy"] == pytest.approx(0.8) and rows[1]["accuracy ±"] == pytest.approx(0.0)
    assert rows[0]["seeds"] == "3, 4, 5" and rows[0]["runs"] == 3 and rows[0]["trainable"] == 100
    assert rows[0]["eval loss"] is None and cmp.has_seed_groups(groups)
    assert cmp.Stat(0.6, 0.1, 3).text() == "0.6000 ± 0.1000" and cmp.Stat(0.6, None, 1).text() == "0.6000"


def test_one_setting_keeps_its_name_without_the_seed():
    configs = {c.name: c for c in sweep_configs(cfg(), {}, seeds=2)}
    records = [record(n, 0.5, c.train.seed) for n, c in configs.items()]
    (group,) = cmp.group_by_setting(records, configs)
    assert group.label == "base [lora]"


def test_config_diff_names_only_what_differs():
    a, b = cfg(**{"lora.r": 4}), cfg(**{"lora.r": 8, "lora.target_modules": ["query", "key"], "name": "other"})
    diff = cmp.config_diff({"a": a, "b": b})
    assert diff == {"lora.r": {"a": 4, "b": 8}, "lora.target_modules": {"a": None, "b": ("query", "key")}}
    assert cmp.config_diff({"a": a, "c": cfg(**{"lora.r": 4})}) == {}
    assert "train.seed" not in cmp.config_diff({"a": a, "d": cfg(**{"lora.r": 4, "train.seed": 5})},
                                               ignore=(*cmp.LABEL_FIELDS, cmp.SEED_FIELD))
