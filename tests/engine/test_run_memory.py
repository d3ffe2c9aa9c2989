"""The memory a run records tells the truth: its estimate uses the optimizer the run really runs, its real class
count and its real (padded) batch shape, and it lands on the tensor peak the run measured."""
import pytest

from lora_core import train
from lora_core.config import OPTIMIZERS, ExperimentConfig
from lora_core.memory import optimizer_implementation

pytestmark = pytest.mark.timeout(600)


def run(tmp_path, monkeypatch, **train_settings):
    """One epoch over 48 rows of the 3-class sample, keeping the Trainer the recipe built."""
    built = {}
    original = train.build_trainer

    def keep(*args, **kwargs):
        built["trainer"] = original(*args, **kwargs)
        return built["trainer"]

    monkeypatch.setattr(train, "build_trainer", keep)
    cfg = ExperimentConfig.from_dict({
        "data": {"train": "sample:sentiment-3", "max_train_samples": 48, "max_eval_samples": 16},
        "train": {"epochs": 1, "batch_size": 16, **train_settings}})
    results = train.run_experiment(cfg, tmp_path / "out")
    return cfg, results, built["trainer"]


@pytest.mark.parametrize("optimizer", ["adamw", "sgd"])
def test_the_recorded_estimate_uses_the_optimizer_the_run_runs(tmp_path, monkeypatch, optimizer):
    cfg, results, trainer = run(tmp_path, monkeypatch, optimizer=optimizer)
    ran = optimizer_implementation(trainer.optimizer)
    settings = results["memory_estimate"]["settings"]
    assert OPTIMIZERS[settings["train.optimizer"]].implementation == ran
    if optimizer == "adamw":
        assert ran == "fused" and settings["adamw_impl"] == "fused"
        assert results["memory_estimate"]["terms"]["optimizer_step_temporaries"] == 0


def test_the_recorded_estimate_is_for_the_runs_classes_and_padded_batches(tmp_path, monkeypatch):
    cfg, results, trainer = run(tmp_path, monkeypatch)
    est = results["memory_estimate"]
    assert est["settings"]["num_labels"] == 3 == len(results["label_map"])
    lengths = [len(ids) for ids in trainer.train_dataset["input_ids"]]
    assert est["batch"]["tokens"] == est["seq_len"] == max(lengths) < cfg.data.max_length
    assert est["batch_size"] == 16 and est["batch"]["source"] == "longest tokenized training row"
    # one epoch trains every row, the longest too: the estimate lands on the tensor peak the run measured
    assert results["peak_tensor_bytes"] and "profiler" in results["peak_tensor_method"]
    assert est["allocated_bytes"] == pytest.approx(results["peak_tensor_bytes"], rel=0.03)
    assert results["peak_mem_bytes"] > 0 and results["peak_mem_method"].startswith("cpu")
