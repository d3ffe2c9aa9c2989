"""lora_core.checks: every problem of a config at once, the same for the CLI and the dashboard."""
import pytest

from helpers import cli
from lora_core import checks
from lora_core.config import ExperimentConfig
from lora_core.errors import ConfigError, ConfigProblems

BAD = """name: bad
lora: {r: 0, rank: 4, target_modules: [query, nonexistent_layer]}
train: {learning_rate: fast}
data: {train: ""}
"""


def fields(problems) -> list[str]:
    return [p.field for p in problems]


def test_every_bad_field_at_once():
    problems = checks.check(checks.parse_text(BAD))
    assert fields(problems) == ["lora.rank", "lora.r", "train.learning_rate", "data.train", "lora.target_modules"]
    text = "\n".join(map(str, problems))
    assert "nonexistent_layer" in text and "available leaf names: query, key, value" in text
    assert "data.train: must not be empty" in text  # not "data.train: .: is a folder"


def test_a_valid_config_has_no_problems_and_the_default_needs_no_model():
    assert checks.check(ExperimentConfig()) == []
    assert checks.check({"lora": {"target_modules": ["query", "value"]}}) == []


def test_cross_field_rules_skip_fields_that_are_already_wrong():
    # task is wrong: the rule tying data.train to the task must not guess with the default task
    problems = checks.check({"task": "bogus", "data": {"train": "sample:instructions"}}, deep=False)
    assert fields(problems) == ["task"]


def test_paths_and_data_columns(tmp_path):
    csv = tmp_path / "reviews.csv"
    csv.write_text("sentence,label\nnice,1\nbad,0\n")
    problems = checks.check({"data": {"train": str(csv), "eval": str(tmp_path)}})
    assert fields(problems) == ["data.eval"] and "a folder, not a data file" in str(problems[0])
    problems = checks.check({"data": {"train": str(csv)}})
    assert fields(problems) == ["data.text_column"] and "no column 'text'" in str(problems[0])
    assert checks.check({"data": {"train": str(csv), "text_column": "sentence"}}) == []


def test_validated_raises_all_problems_and_yaml_errors_keep_their_lines():
    with pytest.raises(ConfigProblems) as info:
        checks.load_text(BAD, source="bad.yaml")
    assert len(info.value.problems) == 5 and str(info.value).startswith("5 problems in bad.yaml:\n  - lora.rank")
    with pytest.raises(ConfigError) as info:
        checks.load_text("name: x\nlora:\n  r: 8\n   alpha: 3\n", source="broken.yaml")
    assert "broken.yaml is not valid YAML:\n" in str(info.value) and "line 4" in str(info.value)


def test_the_cli_fails_where_the_dashboard_does(tmp_path, runs_dir):
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    proc = cli("train", str(path), check=False)
    assert proc.returncode == 2
    expected = [str(p) for p in checks.check(checks.parse_text(BAD))]
    assert all(line in proc.stderr for line in expected), proc.stderr
    assert not list(runs_dir.iterdir()) or not any(p.is_dir() for p in runs_dir.iterdir())  # nothing launched
