"""What `train.precision: auto` means on this machine: bf16 mixed precision where the hardware computes bf16
natively, fp32 elsewhere, and the reason in words (a run records both).

    name, why = resolve("auto", cuda=False)   # ("bf16", "auto: the CPU reports avx512_bf16 ...") here

Native bf16 means CUDA GPUs that support it (Ampere and later) and x86 CPUs whose flags include avx512_bf16 or
amx_bf16 (oneDNN then runs autocast's bf16 matmuls in hardware; on other CPUs they are emulated and slower than
fp32). No torch here: the estimator resolves `auto` the same way without importing it.
"""
from __future__ import annotations

from pathlib import Path

CPU_BF16_FLAGS = ("amx_bf16", "avx512_bf16")  # /proc/cpuinfo flags of native bf16 matrix instructions
CPUINFO = Path("/proc/cpuinfo")


def cpu_flags() -> set[str]:
    """The CPU's feature flags (Linux); empty where /proc/cpuinfo is missing."""
    try:
        text = CPUINFO.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def cpu_bf16_flag() -> str | None:
    """The first native-bf16 flag this CPU reports, or None."""
    flags = cpu_flags()
    return next((f for f in CPU_BF16_FLAGS if f in flags), None)


def resolve(precision: str, cuda: bool, cuda_bf16: bool = True) -> tuple[str, str]:
    """(fp32 | bf16 | fp16, why) for a train.precision value on this machine."""
    if precision != "auto":
        return precision, f"train.precision: {precision} (set in the config)"
    if cuda:
        if cuda_bf16:
            return "bf16", "auto: bf16 mixed precision, this CUDA GPU computes bf16 natively"
        return "fp32", "auto: fp32, this CUDA GPU has no native bf16"
    flag = cpu_bf16_flag()
    if flag:
        return "bf16", f"auto: bf16 mixed precision (autocast), the CPU reports {flag}"
    return "fp32", f"auto: fp32, no CUDA GPU and the CPU reports none of {', '.join(CPU_BF16_FLAGS)}"


def resolve_here(precision: str) -> tuple[str, str]:
    """resolve() for the device this process trains on (imports torch)."""
    import torch

    cuda = torch.cuda.is_available()
    return resolve(precision, cuda, cuda and torch.cuda.is_bf16_supported())
