"""The tutorial's challenges as recipes: valid configs, the same as the example files, the runs one click makes."""
from pathlib import Path

import pytest

from lora_core import recipes
from lora_core.config import DEFAULT_LEARNING_RATES, ConfigError, ExperimentConfig
from lora_core.samples.make_samples import follows_format

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("key", list(recipes.RECIPES))
def test_recipe_equals_its_example_file(key):
    recipe = recipes.RECIPES[key]
    assert recipe.example and recipe.example in recipe.command()
    assert ExperimentConfig.from_file(ROOT / recipe.example) == recipe.experiment()


def test_level1_is_two_ranks_on_three_classes():
    runs = recipes.RECIPES["rank-comparison"].runs()
    assert [(c.method, c.lora.r) for c in runs] == [("lora", 4), ("lora", 16)]
    assert {c.data.train for c in runs} == {"sample:sentiment-3"}


def test_level2_is_full_lora_and_frozen_with_the_default_learning_rates():
    runs = recipes.RECIPES["full-vs-lora-vs-frozen"].runs()
    assert [c.method for c in runs] == ["lora", "full", "head-only"]
    assert all(c.train.learning_rate is None for c in runs)  # each method's default from config.py
    assert [c.learning_rate for c in runs] == [DEFAULT_LEARNING_RATES[m] for m in ("lora", "full", "head-only")]


def test_level3_is_one_qlora_run_on_smollm2():
    (cfg,) = recipes.RECIPES["qlora-instructions"].runs()
    assert (cfg.task, cfg.method, cfg.model.source, cfg.train.epochs) == \
        ("causal-lm", "qlora", "smollm2-135m-instruct", 1)
    assert len(cfg.generate.prompts) == 5


def test_unknown_recipe_names_the_known_ones():
    with pytest.raises(ConfigError, match="rank-comparison"):
        recipes.get("level-9")


def test_format_change_counts_answers_in_the_sample_format():
    pairs = [{"prompt": "p", "before": "Sure! The answer is 42.", "after": '{"task": "arithmetic", "answer": "42"}'},
             {"prompt": "q", "before": "Blue.", "after": '{"task": "color", "answer": "Blue"} extra'}]
    change = recipes.format_change(pairs)
    assert (change["before"], change["after"], change["prompts"]) == (0, 1, 2)
    assert "1/2 tuned answers" in change["summary"]


@pytest.mark.parametrize("text, ok", [
    ('{"task": "color", "answer": "red"}', True),
    ('  {"task": "color", "answer": "red"}\n', True),
    ('{"answer": "red", "task": "color"}', False),       # key order is part of the format
    ('{"task": "color", "answer": "red", "x": "y"}', False),
    ('{"task": "color", "answer": 3}', False),
    ("The answer is red.", False),
    ("", False),
])
def test_follows_format(text, ok):
    assert follows_format(text) is ok


def test_cli_lists_the_recipes_with_their_commands(capsys):
    from lora_core.cli import main

    assert main(["recipe"]) == 0
    out = capsys.readouterr().out
    for recipe in recipes.RECIPES.values():
        assert recipe.key in out and recipe.command() in out
    assert main(["recipe", "nope"]) == 2 and "unknown recipe" in capsys.readouterr().err


def test_launch_hands_the_recipe_to_the_run_manager():
    calls = []

    class FakeRuns:  # records what a recipe asks the run manager to start
        def sweep(self, cfg, vary, actor=None):
            calls.append((cfg, vary, actor))
            return "sweep-1", ["a", "b", "c"]

        def launch(self, cfg, actor=None):
            calls.append((cfg, None, actor))
            return "r"

    assert recipes.launch("full-vs-lora-vs-frozen", FakeRuns()) == ("sweep-1", ["a", "b", "c"])
    assert recipes.launch("qlora-instructions", FakeRuns(), actor="otto") == (None, ["r"])
    (cfg2, vary2, who2), (cfg3, vary3, who3) = calls
    assert (who2, who3) == (None, "otto")  # the acting user goes to the manager, which checks and audits it
    assert cfg2 == recipes.RECIPES["full-vs-lora-vs-frozen"].experiment() and vary2 == {"method": ["full", "head-only"]}
    assert cfg3.method == "qlora" and vary3 is None
