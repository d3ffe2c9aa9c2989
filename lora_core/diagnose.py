"""Why a comparison does not show the tutorial's lesson (LoRA close to full fine-tuning, the frozen backbone
clearly worse), in words a user can act on: too few steps, a learning rate far from what the method needs, a
loss that has not come down, a task too easy to separate the methods.

    verdict = diagnose(runs)      # runs: one dict per finished run of a comparison (see RunSummary.from_results)
    verdict.holds, verdict.findings

Pure: it reads the numbers a run records (method, rank, accuracy, steps, learning rate, train loss) and
nothing else, so the Compare page can call it on every refresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .config import DEFAULT_LEARNING_RATES

LORA_GAP = 0.03        # LoRA within 3 accuracy points of full fine-tuning: "close"
HEAD_GAP = 0.05        # the frozen backbone at least 5 points below full fine-tuning: "clearly worse"
MIN_STEPS = 60         # fewer optimizer steps than this rarely lets LoRA (B starts at zero) catch up
LR_FACTOR = 4.0        # a learning rate this far below or above the method's default is worth a word
LOSS_RATIO = 1.5       # a train loss this many times full fine-tuning's has not come down yet


@dataclass
class RunSummary:
    label: str
    method: str
    accuracy: float | None
    steps: int | None = None
    learning_rate: float | None = None
    train_loss: float | None = None
    rank: int | None = None

    @classmethod
    def from_results(cls, label: str, results: dict, rank: int | None = None) -> "RunSummary":
        """From a run's results dict (results.json or the registry's key results)."""
        return cls(label=label, method=results.get("method", ""), accuracy=results.get("accuracy"),
                   steps=results.get("steps"), learning_rate=results.get("learning_rate"),
                   train_loss=results.get("train_loss"), rank=rank)


@dataclass
class Diagnosis:
    holds: bool | None                 # None: the runs cannot tell (no full run, no LoRA run, no accuracy)
    lora_gap: float | None = None      # full's accuracy minus the best LoRA / QLoRA run's
    head_gap: float | None = None      # full's accuracy minus the head-only run's
    findings: list[str] = field(default_factory=list)


def diagnose(runs: list[RunSummary | dict]) -> Diagnosis:
    runs = [r if isinstance(r, RunSummary) else RunSummary(**r) for r in runs]
    scored = [r for r in runs if r.accuracy is not None]
    full = _best(scored, ("full",))
    lora = _best(scored, ("lora", "qlora"))
    head = _best(scored, ("head-only",))
    if full is None or lora is None:
        missing = "a full fine-tuning run" if full is None else "a LoRA run"
        return Diagnosis(None, findings=[f"Add {missing} with an accuracy to compare against."])
    out = Diagnosis(True, lora_gap=full.accuracy - lora.accuracy,
                    head_gap=full.accuracy - head.accuracy if head else None)
    if out.lora_gap > LORA_GAP:
        out.holds = False
        out.findings.append(f"{lora.label} is {out.lora_gap * 100:.1f} points below full fine-tuning "
                            f"(the lesson expects at most {LORA_GAP * 100:.0f}).")
        out.findings += _why_behind(lora, full)
    elif out.lora_gap < -LORA_GAP:
        out.findings.append(f"Full fine-tuning is {-out.lora_gap * 100:.1f} points below {lora.label}.")
        out.findings += _why_behind(full, lora)
    if head is not None and out.head_gap < HEAD_GAP:
        out.holds = False
        out.findings.append(
            f"{head.label} is within {max(out.head_gap, 0) * 100:.1f} points of full fine-tuning: the pretrained "
            "features already separate these classes, so the task is too easy to show what adapting the backbone "
            "adds. Try a harder dataset (more classes, negations, contrasts).")
    return out


def _best(runs: list[RunSummary], methods: tuple[str, ...]) -> RunSummary | None:
    matching = [r for r in runs if r.method in methods]
    return max(matching, key=lambda r: r.accuracy) if matching else None


def _why_behind(run: RunSummary, other: RunSummary) -> list[str]:
    """Reasons `run` trailed `other`: steps, learning rate, a loss still high."""
    reasons = []
    if run.steps is not None and run.steps < MIN_STEPS:
        reasons.append(f"{run.label} trained only {run.steps} optimizer steps: too few for it to converge. Raise "
                       "train.epochs or lower train.batch_size.")
    default = DEFAULT_LEARNING_RATES.get(run.method)
    if run.learning_rate and default:
        if run.learning_rate * LR_FACTOR <= default:
            reasons.append(f"{run.label} used learning rate {run.learning_rate:g}, far below the {default:g} this "
                           f"method usually needs" + (" (LoRA's few parameters need a much higher rate than full "
                                                      "fine-tuning)." if run.method in ("lora", "qlora") else "."))
        elif run.learning_rate >= default * LR_FACTOR:
            reasons.append(f"{run.learning_rate:g} is a high learning rate for {run.method} (default {default:g}): "
                           "training may have overshot.")
    if run.train_loss is not None and other.train_loss is not None and \
            run.train_loss > LOSS_RATIO * other.train_loss and run.train_loss - other.train_loss > 0.05:
        reasons.append(f"Its average train loss ({run.train_loss:.3f}) is well above {other.label}'s "
                       f"({other.train_loss:.3f}): it had not finished learning.")
    if not reasons:
        reasons.append("Steps, learning rate and loss look reasonable; try another seed or more data before "
                       "drawing a conclusion.")
    return reasons
