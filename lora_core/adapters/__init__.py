"""Adapter analysis: what a saved LoRA / QLoRA adapter learned, read from its files (no model is built).

    report = inspect_run(runs, run_id)               # or inspect_adapter(adapter_dir, base="minilm")
    report.to_dict()                                 # per module: delta_norm, relative_norm, singular_values, ...
    rank_advice(report).text                         # "r=64 used an effective rank of at most 6 in 22 of 24 ..."
    similarity(report_r8, report_r64)                # Hu et al. §7 subspace similarity per module

Modules: tensors (safetensors → numpy, base weights by module path), spectrum (the linear algebra), report (one
adapter), similarity (two adapters), advice (the rank advice and its rule). numpy only: no torch.
"""
from __future__ import annotations

from ..errors import ModelError
from .advice import Advice, rank_advice
from .report import AdapterReport, ModuleUpdate, inspect_adapter
from .similarity import BASES, ModuleSimilarity, similarity
from .spectrum import ENERGY
from .tensors import BaseWeights, base_weights

__all__ = ["AdapterReport", "Advice", "BASES", "BaseWeights", "ENERGY", "ModuleSimilarity", "ModuleUpdate",
           "base_weights", "inspect_adapter", "inspect_run", "rank_advice", "similarity"]


def inspect_run(runs, run_id: str, energy: float = ENERGY, base: BaseWeights | None = None) -> AdapterReport:
    """The report of a LoRA / QLoRA run's saved adapter, with ‖W‖ from the run's base model (`base`: weights
    already opened, e.g. for a second run of the same base)."""
    record = runs.get(run_id, reconcile=False)
    cfg = runs.config(record.id)
    if not cfg.uses_lora:
        raise ModelError(f"run {record.id} is a {cfg.method} run: only lora and qlora runs save an adapter to "
                         "inspect")
    report = inspect_adapter(runs.dir(record.id).artifacts.adapter, base=base or cfg.model.source, energy=energy,
                             revision=cfg.model.revision)
    report.run_id, report.method, report.base_model = record.id, cfg.method, cfg.model.source
    return report
