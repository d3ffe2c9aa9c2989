"""How busy the machine was while a run trained, so a training time measured beside other work is not read as
the method's own speed (the same config can take twice as long when another job shares the CPU).

The worker starts the meter when training begins, samples it on every heartbeat and stops it when training
ends. What a run records (`summary()`, top-level keys so the registry keeps them):

    machine_cpus            logical CPUs
    machine_load_avg        mean 1-minute load average while training (includes this run's own threads)
    machine_load_avg_max    its highest sample
    machine_other_cpu_cores CPU used by every other process, in cores, averaged over training
    machine_other_runs      most other LoRA Lab runs training at the same time (this registry)
    machine_busy            True when others used at least BUSY_CORES cores or another run trained meanwhile
"""
from __future__ import annotations

import os
import time
from typing import Callable

import psutil

BUSY_CORES = 0.5  # other processes using half a core or more on average: the time is not this run's alone


def _busy_cpu_s() -> float:
    """CPU seconds every core spent working (not idle or waiting on I/O) since boot."""
    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def _own_cpu_s(process: psutil.Process) -> float:
    t = process.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _load_avg() -> float | None:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return None


class MachineMeter:
    """Samples of the machine's load while one run trains. `other_runs()` counts the other runs training now."""

    def __init__(self, other_runs: Callable[[], int] = lambda: 0):
        self.other_runs = other_runs
        self.process = psutil.Process()
        self.start: tuple[float, float, float] | None = None  # (wall, busy CPU s, own CPU s)
        self.end: tuple[float, float, float] | None = None
        self.loads: list[float] = []
        self.others = 0

    def _snapshot(self) -> tuple[float, float, float]:
        return time.monotonic(), _busy_cpu_s(), _own_cpu_s(self.process)

    @property
    def active(self) -> bool:
        return self.start is not None and self.end is None

    def begin(self) -> None:
        if self.start is None:
            self.start = self._snapshot()
            self.sample()

    def sample(self) -> None:
        """One sample (call it every few seconds while training)."""
        if not self.active:
            return
        load = _load_avg()
        if load is not None:
            self.loads.append(load)
        try:
            self.others = max(self.others, int(self.other_runs()))
        except Exception:  # noqa: BLE001 - a busy registry must not stop the measurement
            pass

    def finish(self) -> None:
        if self.active:
            self.sample()
            self.end = self._snapshot()

    def summary(self) -> dict:
        """The machine_* keys (empty when training never began)."""
        if self.start is None:
            return {}
        end = self.end or self._snapshot()
        wall = max(end[0] - self.start[0], 1e-9)
        other = max((end[1] - self.start[1]) - (end[2] - self.start[2]), 0.0) / wall
        return {
            "machine_cpus": psutil.cpu_count() or 1,
            "machine_load_avg": sum(self.loads) / len(self.loads) if self.loads else None,
            "machine_load_avg_max": max(self.loads) if self.loads else None,
            "machine_other_cpu_cores": round(other, 3),
            "machine_other_runs": self.others,
            "machine_busy": other >= BUSY_CORES or self.others > 0,
        }
