"""The estimate a run records beside its measured peak, in the run's own terms.

The recipe calls `estimate_for_experiment` after tokenizing, with the class count its data really has and the
token length of every training row: batches are padded to their longest row (`tokens.make_collator`), so the
largest step the run will take is a full batch padded to the longest row, not `data.max_length`. Before a launch
(the Config builder) the lengths are unknown and `data.max_length` bounds the estimate.
"""
from __future__ import annotations

import statistics

from .. import precision
from ..config import ExperimentConfig, get_dotted
from .architecture import ModelRef
from .estimator import estimate
from .settings import CONFIG_FIELDS, detected_device


def experiment_settings(cfg: ExperimentConfig, num_labels: int = 2, device: str | None = None,
                        seq_len: int | None = None) -> dict:
    """estimate() arguments for a config as the engine trains it: the config's own fields, weights loaded in
    fp32 (models.load_model), the optimizer config.OPTIMIZERS says it runs, on this machine's device, and
    train.precision: auto resolved as the recipe resolves it (precision.resolve: bf16 on a CPU with native bf16)."""
    m = cfg.model
    device = device or detected_device()
    fields = {name: get_dotted(cfg, name) for name in CONFIG_FIELDS}
    fields["train.precision"] = precision.resolve(fields["train.precision"], cuda=device == "cuda")[0]
    return {"model": ModelRef(m.source, source=m.source, revision=m.revision), "method": cfg.method,
            "batch_size": cfg.train.batch_size, "seq_len": seq_len or cfg.data.max_length, "task": cfg.task,
            "num_labels": num_labels, "device": device, "weights_dtype": "fp32", **fields}


def estimate_for_experiment(cfg: ExperimentConfig, num_labels: int = 2, device: str | None = None,
                            lengths: list[int] | None = None) -> dict:
    """The estimate a run records (Estimate.to_dict() plus `batch`, how the batch shape was chosen). `lengths`:
    the tokens of each training row after tokenizing; the estimate is then for a full batch padded to the longest
    of them, else for data.max_length tokens. Compare `allocated_bytes` with the run's tensor peak; `peak_bytes`
    adds the CUDA context and allocator slack. Reads only the model's structure (no weights, no torch once the
    model has been seen)."""
    longest = max(lengths) if lengths else None
    kwargs = experiment_settings(cfg, num_labels, device, longest)
    model, method = kwargs.pop("model"), kwargs.pop("method")
    out = estimate(model, method, kwargs.pop("batch_size"), kwargs.pop("seq_len"), **kwargs).to_dict()
    out["batch"] = batch_shape(cfg, lengths)
    out["notes"].append(out["batch"]["why"])
    return out


def batch_shape(cfg: ExperimentConfig, lengths: list[int] | None) -> dict:
    """The batch the estimate is for, and the token-length distribution behind it."""
    rows, max_length = cfg.train.batch_size, cfg.data.max_length
    if not lengths:
        return {"rows": rows, "tokens": max_length, "source": "data.max_length",
                "why": f"sequence length = data.max_length ({max_length}): the longest a padded batch can be; "
                       "real batches are padded to their longest row, so they use less"}
    ordered = sorted(lengths)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {"rows": rows, "tokens": ordered[-1], "source": "longest tokenized training row",
            "tokens_mean": round(statistics.fmean(ordered), 1), "tokens_p95": p95, "train_rows": len(ordered),
            "why": f"sequence length {ordered[-1]}: the longest of {len(ordered)} tokenized training rows (mean "
                   f"{statistics.fmean(ordered):.1f}, 95th percentile {p95}); batches are padded to their longest "
                   f"row, so the largest step is {rows} rows x {ordered[-1]} tokens (data.max_length "
                   f"{max_length} is only the cap)"}
