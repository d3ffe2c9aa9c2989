"""The learning-rate range test: it reads only the training rows, the rate grows step by step, it stops when the
loss blows up, and it suggests a rate inside the range it tried; the CLI prints the suggestion."""
import json

import pytest

from lora_core import data
from lora_core.lr_find import lr_find, suggest
from tests.helpers import cli, tiny_config

pytestmark = pytest.mark.timeout(300)


def test_suggest_picks_the_steepest_descent_before_the_minimum():
    lrs = [10 ** (-6 + i / 2) for i in range(10)]
    losses = [1.0, 0.99, 0.95, 0.7, 0.5, 0.45, 0.44, 0.6, 2.0, 9.0]
    lr, why = suggest(lrs, losses)
    assert lr == lrs[3] and "steepest" in why


def test_lr_find_reads_only_training_rows(monkeypatch):
    seen = []
    real = data.load_splits

    def spy(cfg):
        splits = real(cfg)
        seen.append(splits)
        return splits
    monkeypatch.setattr(data, "load_splits", spy)
    res = lr_find(tiny_config(**{"data.max_train_samples": 32}), steps=12, start=1e-5, end=10.0)
    assert res["train_rows"] == len(seen[0].train) and res["train_rows"] != len(seen[0].train) + len(seen[0].eval)
    assert res["lrs"] == sorted(res["lrs"]) and res["lrs"][0] == pytest.approx(1e-5)
    assert len(res["lrs"]) == len(res["losses"]) == res["steps"] <= 12
    assert res["lrs"][0] <= res["suggestion"] <= res["lrs"][-1]


def test_lr_find_cli(tmp_path):
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(tiny_config().to_dict()))
    proc = cli("lr-find", str(path), "--steps", "8", "--start", "1e-4", "--end", "1", "--json", timeout=250)
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["suggestion"] > 0 and len(res["losses"]) == res["steps"]
