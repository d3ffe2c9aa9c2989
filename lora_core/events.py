"""What a training run reports while it trains: the event stream, the Trainer callback that feeds it, and the
memory meter.

    with EventStream(on_event, cfg) as stream:        # on_event runs on a writer thread, in order
        stream.phase("training")
        callback = event_callback(stream, should_stop, MemoryMeter())

Every event is a dict: {"kind": "phase" | "log" | "eval", "step", "epoch", "progress", "elapsed_s", "eta_s",
"peak_mem_bytes", "loss", "learning_rate", "grad_norm", "samples_per_s", "tokens_per_s", "eval_*", ...}.
"""
from __future__ import annotations

import queue
import resource
import sys
import threading
import time
from typing import Any, Callable

import psutil

from .config import ExperimentConfig
from .metrics import perplexity

Event = dict[str, Any]
_CLOSE = object()  # tells the event writer thread to finish
PHASES = ("loading_data", "loading_model", "training", "saving")  # the `phase` events, in order


class EventStream:
    """Turns Trainer state and logs into event dicts for on_event, with throughput, ETA, progress and memory.

    on_event runs on a writer thread fed by a queue, in order: the training loop only builds the dict and
    enqueues it, so a slow on_event (the worker's fsync'd append to metrics.jsonl) never stalls a step.
    Leaving the `with` block waits until every event has been handed over.

    elapsed_s is wall time since training began in this process. The throughput of a log event covers the
    steps since the previous log, minus the time spent evaluating and checkpointing in between."""

    def __init__(self, on_event: Callable[[Event], None] | None, cfg: ExperimentConfig):
        self.on_event = on_event
        self.task = cfg.task
        # rows per optimizer step over all ranks (every rank takes batch_size rows per micro-step)
        self.samples_per_step = (cfg.train.batch_size * cfg.train.gradient_accumulation_steps
                                 * cfg.resources.num_workers)
        self.stopping = False
        self.started: float | None = None
        self.first_step = 0          # global step when this process began training (resume: the checkpoint's)
        self.last = (0, 0.0, 0)      # (step, time, tokens) at the previous train log
        self.paused_s = 0.0          # eval + checkpoint time since the previous train log
        self.eval_s = 0.0
        self.save_s = 0.0
        self.mark = 0.0              # when the last step / epoch / eval ended (checkpoint time starts there)
        self.last_eval: dict | None = None
        self.peak = 0
        self.errors = 0
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.writer: threading.Thread | None = None

    def __enter__(self) -> "EventStream":
        if self.on_event is not None:
            self.writer = threading.Thread(target=self._write, name="event-writer", daemon=True)
            self.writer.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.writer is not None:
            self.queue.put(_CLOSE)
            self.writer.join()

    def _write(self) -> None:
        while (event := self.queue.get()) is not _CLOSE:
            try:
                self.on_event(event)
            except Exception as exc:  # losing a metric line must not kill the training run; say so once
                self.errors += 1
                if self.errors == 1:
                    print(f"[train] on_event failed ({type(exc).__name__}: {exc}); training goes on",
                          file=sys.stderr, flush=True)

    def emit(self, event: Event) -> None:
        if self.writer is not None:
            self.queue.put(event)

    def phase(self, name: str) -> None:
        self.emit({"kind": "phase", "phase": name, "time": time.time()})

    def begin(self, state) -> None:
        self.started = self.mark = time.perf_counter()
        self.paused_s = self.eval_s = 0.0  # an evaluation before training is no part of training time
        self.first_step = state.global_step
        self.last = (state.global_step, self.started, state.num_input_tokens_seen)

    def base(self, state, kind: str) -> Event:
        now = time.perf_counter()
        elapsed = now - (self.started or now)
        done = state.global_step - self.first_step
        remaining = max(state.max_steps - state.global_step, 0)
        return {"kind": kind, "time": time.time(), "step": state.global_step, "epoch": state.epoch or 0.0,
                "progress": state.global_step / state.max_steps if state.max_steps else None,
                "elapsed_s": elapsed, "eta_s": elapsed / done * remaining if done else None,
                "peak_mem_bytes": self.peak}

    def log(self, state, logs: dict) -> None:
        is_eval = any(k.startswith("eval_") for k in logs)
        event = self.base(state, "eval" if is_eval else "log")
        event.update({k: v for k, v in logs.items() if k != "epoch"})
        if is_eval:
            if "eval_loss" in logs and self.task == "causal-lm":
                event["eval_perplexity"] = perplexity(logs["eval_loss"])
            self.last_eval = {k: v for k, v in event.items() if k.startswith("eval_") or k == "step"}
        elif "loss" in logs:
            step0, t0, tokens0 = self.last
            now = time.perf_counter()
            busy = max(now - t0 - self.paused_s, 1e-9)
            event["samples_per_s"] = (state.global_step - step0) * self.samples_per_step / busy
            event["tokens_per_s"] = (state.num_input_tokens_seen - tokens0) / busy
            self.last, self.paused_s = (state.global_step, now, state.num_input_tokens_seen), 0.0
        self.emit(event)


def event_callback(stream: EventStream, should_stop: Callable[[], bool], memory: "MemoryMeter"):
    """A TrainerCallback feeding `stream`; built here so transformers is imported only when training."""
    from transformers import TrainerCallback

    class StreamCallback(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            stream.peak = memory.peak()
            stream.begin(state)

        def on_step_end(self, args, state, control, **kwargs):
            stream.peak = memory.peak()
            stream.mark = time.perf_counter()
            if should_stop():
                # the Trainer checkpoints right after this callback (should_save), then leaves the loop
                stream.stopping = True
                control.should_training_stop = True
                control.should_save = True

        def on_epoch_end(self, args, state, control, **kwargs):
            stream.mark = time.perf_counter()
            if stream.stopping:  # already checkpointed at this step; a stop should not wait for an eval
                control.should_evaluate = False
                control.should_save = False

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            spent = (metrics or {}).get("eval_runtime", 0.0)
            stream.eval_s += spent
            stream.paused_s += spent
            stream.mark = time.perf_counter()

        def on_save(self, args, state, control, **kwargs):
            spent = time.perf_counter() - stream.mark
            stream.save_s += spent
            stream.paused_s += spent

        def on_log(self, args, state, control, logs=None, **kwargs):
            stream.peak = memory.peak()
            stream.log(state, dict(logs or {}))

    return StreamCallback()


# -- memory ----------------------------------------------------------------------------------------------------

def _rss() -> int:
    return psutil.Process().memory_info().rss


def _max_rss() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


class MemoryMeter:
    """Peak memory of this run. CUDA: torch.cuda.max_memory_allocated (reset at the start). CPU: peak RSS
    minus the RSS before loading; the peak is getrusage's ru_maxrss when it rose during the run (it is a
    whole-process high-water mark), else the highest RSS sampled at step ends and logs. Either is floored at the
    bytes of the model's tensors (`hold`): a process that ran earlier work can reuse freed memory, so its RSS
    need not grow although the run holds the model."""

    def __init__(self):
        import torch

        self.cuda = torch.cuda.is_available()
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.base = _rss()
        self.max_rss_at_start = _max_rss()
        self.sampled = self.base
        self.floor = 0

    def hold(self, model) -> None:
        """The run holds this model resident from now on (CPU: the lower bound of its peak)."""
        self.floor = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))

    @property
    def method(self) -> str:
        if self.cuda:
            return "cuda: torch.cuda.max_memory_allocated"
        if _max_rss() > self.max_rss_at_start:
            return "cpu: peak RSS (getrusage ru_maxrss) minus the RSS before loading"
        # the process peaked higher before this run (an earlier run in the same process): samples only
        return "cpu: highest RSS sampled at step ends minus the RSS before loading (may miss in-step peaks)"

    def peak(self) -> int:
        if self.cuda:
            import torch

            return int(torch.cuda.max_memory_allocated())
        self.sampled = max(self.sampled, _rss())
        high = self.sampled
        max_rss = _max_rss()
        if max_rss > self.max_rss_at_start:
            high = max(high, max_rss)
        return max(int(high - self.base), self.floor)
