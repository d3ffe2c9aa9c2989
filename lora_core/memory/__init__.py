"""Training memory, term by term, for full / LoRA / QLoRA / head-only fine-tuning: the estimator and its checks.

    estimate(model="llama-2-7b", method="qlora", batch_size=1, seq_len=512, **{"lora.r": 16}) -> Estimate
    estimate_for_experiment(cfg, num_labels, lengths=...) -> dict   # what a run records

One way through the package, each module using only those above it:

    settings.py      the knobs (config fields by their dotted names), checked into `Settings`
    presets.py       config.json of well-known models, and the GPUs
    architecture.py  the `model` argument -> the model's structure (lora_core.structure, cached on disk)
    parameters.py    what is stored and trains (structure.plan: PEFT's rules), quantization, optimizer bytes
    activations.py   a symbolic forward pass: what autograd saves, op by op, per model family
    timeline.py      forward and backward replayed; the peak for any batch size
    estimator.py     estimate() and the Estimate it returns
    experiment.py    an ExperimentConfig as the engine trains it, with the run's real batch shapes
    measure.py       the real thing: exact live-tensor bytes of a step, and of a run's largest steps

Checked against reality by bench/estimator_accuracy.py (CPU allocator events, published GPU peaks). Limits: the
CUDA-only rules (1-byte dropout masks, flash attention, foreach AdamW temporaries, CUDA autocast's fp32 ops) are
checked only against published peaks; the CUDA context and allocator slack are assumptions (knobs);
architectures outside the four families get exact parameters but borrowed activations; DoRA's extra
activations are not modelled.
"""
from ..errors import EstimateError
from .architecture import ModelRef
from .estimator import Estimate, estimate
from .experiment import estimate_for_experiment, experiment_settings
from .measure import (StepPeakMeter, engine_optimizer, live_tensor_bytes, measure_step_peak, memory_profiler,
                      optimizer_implementation, replay_allocations)
from .parameters import lora_param_table
from .presets import GPUS, MODEL_PRESETS
from .settings import KNOBS

__all__ = ["estimate", "Estimate", "estimate_for_experiment", "experiment_settings", "lora_param_table",
           "measure_step_peak", "live_tensor_bytes", "StepPeakMeter", "engine_optimizer", "optimizer_implementation",
           "memory_profiler", "replay_allocations", "ModelRef", "EstimateError", "MODEL_PRESETS", "GPUS", "KNOBS"]
