"""The tutorial's three challenges as recipes: a config and what to vary, ready for one click or one command.

    recipe = RECIPES["full-vs-lora-vs-frozen"]
    sweep_id, run_ids = Runs().sweep(recipe.experiment(), recipe.vary)   # or Runs().launch() when no vary

The same recipes are the example configs in examples/ (a test keeps the two equal); the Train page offers them
as buttons that launch the sweep and open Compare on it. Learning rates and epochs are the config defaults
(config.DEFAULT_LEARNING_RATES), which were chosen so that Level 2 shows the tutorial's lesson on a CPU.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

from .config import ConfigError, ExperimentConfig
from .runs import Runs
from .runs.sweep import sweep_configs
from .samples.make_samples import follows_format


@dataclass(frozen=True)
class Recipe:
    key: str
    title: str
    lesson: str                                   # what the user should see when it has run
    config: dict                                  # ExperimentConfig.from_dict input
    vary: dict[str, list] = field(default_factory=dict)  # Runs.sweep's vary; empty: a single run
    example: str = ""                             # its file in examples/

    def experiment(self) -> ExperimentConfig:
        return ExperimentConfig.from_dict(copy.deepcopy(self.config))

    def runs(self) -> list[ExperimentConfig]:
        """The configs one click launches (validated, nothing started)."""
        if not self.vary:
            return [self.experiment()]
        return sweep_configs(self.experiment(), copy.deepcopy(self.vary))

    def command(self) -> str:
        """The terminal equivalent, from the repository root."""
        if not self.vary:
            return f"python -m lora_core train {self.example}"
        flags = " ".join(f"--vary {k}={','.join(map(str, v))}" for k, v in self.vary.items())
        return f"python -m lora_core sweep {self.example} {flags}"


_SENTIMENT_3 = {"task": "seq-cls", "model": {"source": "minilm"}, "data": {"train": "sample:sentiment-3"}}

RECIPES: dict[str, Recipe] = {r.key: r for r in (
    Recipe(
        key="rank-comparison",
        title="Rank comparison: r=4 vs r=16 on a 3-class task",
        lesson="A 4x larger rank trains 4x the parameters for little or no accuracy gain: the update a task "
               "needs is low-rank.",
        config={"name": "level1-rank-comparison", "method": "lora", **_SENTIMENT_3},
        vary={"lora.r": [4, 16]},
        example="examples/level1-rank-comparison.yaml",
    ),
    Recipe(
        key="full-vs-lora-vs-frozen",
        title="Full vs LoRA vs frozen backbone",
        lesson="LoRA r=8 comes close to full fine-tuning with well under 1% of its trainable parameters; training "
               "only the classifier head on a frozen backbone is clearly worse.",
        config={"name": "level2-full-lora-frozen", "method": "lora", "lora": {"r": 8}, **_SENTIMENT_3},
        vary={"method": ["full", "head-only"]},
        example="examples/level2-full-lora-frozen.yaml",
    ),
    Recipe(
        key="qlora-instructions",
        title="QLoRA on SmolLM2: one epoch of instruction tuning",
        lesson="After one epoch on sample:instructions the model answers the held-out prompts in the sample's "
               "JSON format ({\"task\": ..., \"answer\": ...}), which the base model never uses; eval loss falls.",
        config={"name": "level3-smollm2-qlora", "task": "causal-lm", "method": "qlora",
                "model": {"source": "smollm2-135m-instruct"},
                "lora": {"r": 8, "alpha": 16, "dropout": 0.05, "target_modules": "preset:attention"},
                "quant": {"compute_dtype": "float32"},
                "data": {"train": "sample:instructions", "max_length": 128},
                # a pretrained chat model: a gentler rate than the classification defaults (not grid-searched)
                "train": {"epochs": 1, "batch_size": 8, "learning_rate": 1e-3, "logging_steps": 2}},
        example="examples/level3-smollm2-qlora.yaml",
    ),
)}


def get(key: str) -> Recipe:
    if key not in RECIPES:
        raise ConfigError("recipe", f"unknown recipe {key!r}; allowed: {', '.join(RECIPES)}")
    return RECIPES[key]


def launch(key: str, runs: Runs, overrides: dict | None = None, *, actor=None) -> tuple[str | None, list[str]]:
    """Start a recipe: (sweep id, run ids) for a sweep, (None, [run id]) for a single run. Returns at once.
    `overrides` changes config fields by dotted name first (e.g. {"train.max_steps": 10} for a quick look);
    `actor` (lora_core.team.access.Actor, default the CLI's OS user) is who launches, checked and audited."""
    recipe = get(key)
    cfg = recipe.experiment().replace(**overrides) if overrides else recipe.experiment()
    if recipe.vary:
        return runs.sweep(cfg, copy.deepcopy(recipe.vary), actor=actor)
    return None, [runs.launch(cfg, actor=actor)]


def format_change(pairs: list[dict]) -> dict:
    """How many before / after answers follow sample:instructions' JSON format, for a run's generations
    ([{prompt, before, after}]); the Playground and bench/level3.py state it beside the answers."""
    before = sum(follows_format(p["before"]) for p in pairs)
    after = sum(follows_format(p["after"]) for p in pairs)
    return {"prompts": len(pairs), "before": before, "after": after,
            "summary": f"{after}/{len(pairs)} tuned answers are one JSON object with task and answer "
                       f"({before}/{len(pairs)} before tuning)"}
