"""A rank advice line derived from an adapter's singular values, with the rule it used stated beside it.

Two conditions, the larger k wins, rounded up to a power of two:
- pooled energy: truncating every module's ΔW to its top k singular directions keeps
  E(k) = Σ_m Σ_{i≤k} σ²_{m,i} / Σ_m ‖ΔW_m‖²_F of the whole update (by Eckart–Young, no rank-k update does better per
  module); k must keep E(k) ≥ 90%;
- most modules: k must be at least the effective rank of three modules in four.
Pooled energy alone let a few dominant modules decide: on MiniLM (bench/rank_advice.py) it advised r=1 where
the other modules used 3-15 directions, and r=1 trained 1.7 (bundled sample) and 3.0 (SST-2) accuracy points below
r=64. The quarter of modules left out keeps a few barely-trained modules with flat spectra from pushing the advice
up.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np


MOST_MODULES = 0.75  # the share of modules whose own effective rank the advice must cover


@dataclass
class Advice:
    text: str                 # one line for the user
    rule: str                 # how `text` was derived
    r: int                    # the adapter's rank
    advised_r: int | None     # a smaller rank that is likely enough, or None
    k: int                    # the fewest directions per module that keep `kept` of the whole update
    kept: float               # E(k)
    within: int               # modules whose own effective rank is at most k
    modules: int

    def to_dict(self) -> dict:
        return asdict(self)


def next_power_of_two(k: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(k, 1))))


def kept_energy(modules) -> np.ndarray:
    """E(k) for k = 1..max rank: the share of the adapter's total ‖ΔW‖²_F its modules' top-k directions hold."""
    width = max((len(m.singular_values) for m in modules), default=0)
    power = np.zeros(width)
    for m in modules:
        s = np.asarray(m.singular_values, dtype=np.float64) ** 2
        power[:len(s)] += s
    total = power.sum()
    return np.cumsum(power) / total if total > 0 else np.ones(width)


def rank_advice(report) -> Advice:
    energy, r, n = report.energy, report.r, len(report.modules)
    rule = (f"Effective rank of a module: the fewest singular directions of its ΔW holding ≥ {energy:.0%} of "
            f"‖ΔW‖²_F. Advice: the smallest k whose top-k directions in every module together hold ≥ "
            f"{energy:.0%} of the adapter's total ‖ΔW‖²_F and that is at least the effective rank of "
            f"{MOST_MODULES:.0%} of the modules, rounded up to a power of two, offered when it is below r. It says "
            "how many directions training used, not how many the task needs: confirm with a run at the advised "
            "rank (bench/rank_advice.py does).")
    if not n:
        return Advice("no adapted modules to judge", rule, r, None, 0, 0.0, 0, 0)
    curve = kept_energy(report.modules)
    pooled = int(np.searchsorted(curve, energy - 1e-12) + 1)
    ranks = sorted(m.effective_rank for m in report.modules)
    k = min(max(pooled, ranks[math.ceil(MOST_MODULES * n) - 1]), len(curve))
    within = sum(1 for m in report.modules if m.effective_rank <= k)
    advised = next_power_of_two(k)
    used = (f"r={r} used an effective rank of at most {k} in {within} of {n} modules, and the top {k} directions "
            f"hold {curve[k - 1]:.0%} of the whole update")
    if advised < r:
        return Advice(f"{used}: r={advised} is likely enough", rule, r, advised, k, float(curve[k - 1]), within, n)
    return Advice(f"{used}; that is more than half of its rank: a larger r may help", rule, r, None, k,
                  float(curve[k - 1]), within, n)
