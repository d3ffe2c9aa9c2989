"""A rank advice line derived from an adapter's effective ranks, with the rule it used stated beside it."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

COVERAGE = 0.9  # the advice covers this share of the adapted modules


@dataclass
class Advice:
    text: str                 # one line for the user
    rule: str                 # how `text` was derived
    r: int                    # the adapter's rank
    advised_r: int | None     # a smaller rank that is likely enough, or None
    k: int                    # the effective rank that `within` of `modules` modules stay within
    within: int
    modules: int

    def to_dict(self) -> dict:
        return asdict(self)


def next_power_of_two(k: int) -> int:
    return 1 << max(0, math.ceil(math.log2(max(k, 1))))


def rank_advice(report, coverage: float = COVERAGE) -> Advice:
    """k = the effective rank that at least `coverage` of the modules stay within; advised r = k rounded up to a
    power of two, offered when it is below the adapter's r."""
    ranks = sorted(m.effective_rank for m in report.modules)
    r, n = report.r, len(ranks)
    rule = (f"Effective rank of a module: the fewest singular directions of ΔW holding ≥ {report.energy:.0%} of "
            f"‖ΔW‖_F². Advice: the effective rank that at least {coverage:.0%} of the modules stay within, rounded "
            "up to a power of two, offered when it is below r. It says how many directions training used, not "
            "how many the task needs: confirm with a run at the advised rank (bench/rank_advice.py does).")
    if not ranks:
        return Advice("no adapted modules to judge", rule, r, None, 0, 0, 0)
    k = ranks[max(0, math.ceil(coverage * n) - 1)]
    within = sum(1 for x in ranks if x <= k)
    advised = next_power_of_two(k)
    used = f"r={r} used an effective rank of at most {k} in {within} of {n} modules"
    if advised < r:
        return Advice(f"{used}: r={advised} is likely enough", rule, r, advised, k, within, n)
    return Advice(f"{used}, more than half of its rank: a larger r may help", rule, r, None, k, within, n)
