"""The Compare page's diagnosis: when LoRA trails full fine-tuning or the frozen backbone keeps up, say why."""
from lora_core.config import DEFAULT_LEARNING_RATES
from lora_core.diagnose import RunSummary, diagnose

LR = DEFAULT_LEARNING_RATES


def run(label, method, accuracy, steps=120, lr=None, loss=0.3):
    return RunSummary(label, method, accuracy, steps=steps, learning_rate=lr or LR[method], train_loss=loss)


def test_the_lesson_holds():
    verdict = diagnose([run("full", "full", 0.90), run("LoRA r=8", "lora", 0.88), run("head", "head-only", 0.60)])
    assert verdict.holds is True and verdict.findings == []
    assert round(verdict.lora_gap, 3) == 0.02 and round(verdict.head_gap, 3) == 0.30


def test_too_few_steps_and_a_low_learning_rate_are_named():
    verdict = diagnose([run("full", "full", 0.82, steps=30, loss=0.4),
                        run("LoRA r=8", "lora", 0.61, steps=30, lr=LR["full"], loss=0.95),
                        run("head", "head-only", 0.45, steps=30)])
    assert verdict.holds is False
    text = " ".join(verdict.findings)
    assert "21.0 points below full" in text
    assert "only 30 optimizer steps" in text and "train.epochs" in text
    assert f"learning rate {LR['full']:g}, far below" in text
    assert "average train loss (0.950)" in text


def test_a_learning_rate_far_above_the_default_is_named():
    verdict = diagnose([run("full", "full", 0.9), run("LoRA", "lora", 0.5, lr=LR["lora"] * 20, loss=1.1)])
    assert verdict.holds is False and "high learning rate for lora" in " ".join(verdict.findings)


def test_a_frozen_backbone_that_keeps_up_means_the_task_is_too_easy():
    verdict = diagnose([run("full", "full", 0.95), run("LoRA", "lora", 0.95), run("head", "head-only", 0.93)])
    assert verdict.holds is False and "too easy" in verdict.findings[0]


def test_full_below_lora_is_reported_without_failing_the_lesson():
    verdict = diagnose([run("full", "full", 0.70, lr=1e-3, loss=0.9), run("LoRA", "lora", 0.85, loss=0.4)])
    assert verdict.holds is True
    assert "Full fine-tuning is 15.0 points below LoRA" in verdict.findings[0]
    assert "high learning rate for full" in " ".join(verdict.findings)


def test_without_a_full_run_it_cannot_tell():
    verdict = diagnose([{"label": "LoRA", "method": "lora", "accuracy": 0.8}])
    assert verdict.holds is None and "full fine-tuning run" in verdict.findings[0]


def test_the_best_lora_run_counts_and_unscored_runs_are_ignored():
    verdict = diagnose([run("full", "full", 0.90), run("r4", "lora", 0.70), run("r16", "lora", 0.89),
                        run("stopped", "lora", None)])
    assert verdict.holds is True


def test_from_results_reads_what_a_run_records():
    s = RunSummary.from_results("x", {"method": "lora", "accuracy": 0.8, "steps": 12, "learning_rate": 1e-3,
                                      "train_loss": 0.5}, rank=8)
    assert (s.method, s.accuracy, s.steps, s.learning_rate, s.train_loss, s.rank) == ("lora", 0.8, 12, 1e-3, 0.5, 8)
