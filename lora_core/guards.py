"""What keeps a run from wasting its time: a guard that ends it the moment its loss or gradient norm stops being
a finite number, and the record of why a run with early stopping ended before its last step.

    trainer = guarded_trainer_class()(model=..., args=..., ...)   # a transformers.Trainer that checks itself
    reason = early_stop_reason(cfg, trainer.state, stopping=False)

The loss is checked after every forward/backward (`training_step`), before the optimizer step, so the weights
still hold the last good step when TrainingDiverged is raised; the recipe then saves nothing, and the Trainer
checkpoints written before stay. The gradient norm is the one the Trainer computes for clipping (before the
optimizer step too). With fp16 mixed precision an infinite gradient is the loss scaler's normal signal to skip a
step and lower its scale, so there only the loss is checked.
"""
from __future__ import annotations

import math

from .config import ExperimentConfig
from .errors import TrainingDiverged
from .runs.layout import CHECKPOINT_PREFIX


def non_finite(value) -> str | None:
    """'NaN', 'inf' or '-inf' for a non-finite number (a float or a one-element tensor), else None."""
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "inf" if number > 0 else "-inf"
    return None


def check_finite(what: str, value, trainer) -> None:
    """Raise TrainingDiverged naming the step being computed and the learning rate, if `value` is not finite."""
    if value is None or (bad := non_finite(value)) is None:
        return
    scheduler = getattr(trainer, "lr_scheduler", None)
    lr = scheduler.get_last_lr()[0] if scheduler is not None else trainer.args.learning_rate
    raise TrainingDiverged(f"{what} became {bad} at step {trainer.state.global_step + 1}; learning rate {lr:.3g}. "
                           "The run ended without saving its weights; the checkpoints before this step are kept. "
                           "Lower train.learning_rate, keep train.max_grad_norm on, or check the data")


def guarded_trainer_class():
    """transformers.Trainer with the two checks (built here so transformers loads only when training)."""
    from transformers import Trainer

    class GuardedTrainer(Trainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            loss = super().training_step(model, inputs, num_items_in_batch)
            check_finite("loss", loss, self)
            return loss

        def _get_grad_norm(self, model, grad_norm=None):
            norm = super()._get_grad_norm(model, grad_norm=grad_norm)
            if not self.args.fp16:
                check_finite("gradient norm", norm, self)
            return norm

    return GuardedTrainer


# -- early stopping ---------------------------------------------------------------------------------------------

def early_stopping_metric(cfg: ExperimentConfig) -> str:
    """The eval metric early stopping watches: the config's, else accuracy (seq-cls) or eval_loss (causal-lm)."""
    return cfg.train.early_stopping_metric or ("accuracy" if cfg.task == "seq-cls" else "eval_loss")


def greater_is_better(metric: str) -> bool:
    return not metric.endswith("loss")


def early_stop_reason(cfg: ExperimentConfig, state, stopping: bool) -> str | None:
    """Why a run with early stopping ended before its last step, in one sentence; None if it did not."""
    patience = cfg.train.early_stopping_patience
    if not patience or stopping or state.global_step >= state.max_steps:
        return None
    metric = early_stopping_metric(cfg)
    best = ""
    if state.best_model_checkpoint and state.best_metric is not None:
        step = state.best_model_checkpoint.rstrip("/").rpartition(CHECKPOINT_PREFIX)[2]
        best = f"; kept the best checkpoint (step {step}, {metric} {state.best_metric:.4g})"
    return (f"early stopping: {metric} did not improve for {patience} evaluation{'s' if patience > 1 else ''}; "
            f"ended at step {state.global_step} of {state.max_steps}{best}")
