from pathlib import Path

import pytest

from lora_core.config import ExperimentConfig

EXAMPLES = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_example_configs_validate(path):
    cfg = ExperimentConfig.from_file(path)
    assert cfg.name and cfg.to_dict()["lora"]["r"] >= 1


def test_there_are_examples():
    assert len(EXAMPLES) >= 3
