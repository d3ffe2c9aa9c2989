"""Measuring the real thing: the exact bytes of live tensors over a training step, to check the estimate.

* `measure_step_peak` runs one step (forward, backward, clip, optimizer step, zero_grad) and returns its peak:
  CUDA: torch.cuda.max_memory_allocated; CPU: every allocation and free the CPU allocator reports to
  torch.profiler (profile_memory=True), replayed in time order on top of what was resident before the step.
* `StepPeakMeter` does the same inside a real run (a Trainer callback): it profiles only the steps whose batch is
  the largest so far, which always includes the run's largest batch and costs a handful of profiled steps per
  run (the number of new records in a shuffled sequence grows like its logarithm).

Both count tensors only: unlike a process's RSS they leave out the allocator's cached pages, Python objects, the
tokenizer, datasets and library code, which is why they can be compared with the estimate term for term.
"""
from __future__ import annotations

import time

from ..config import OPTIMIZERS

def live_tensor_bytes(model, optimizer=None, batch: dict | None = None) -> int:
    """Bytes of the distinct storages behind a model's parameters, buffers, gradients, 4-bit quantization
    states, the optimizer's states and a batch: what is resident before a step starts."""
    import torch

    storages: dict[tuple, int] = {}

    def add(t):
        if isinstance(t, torch.Tensor) and t.device.type != "meta":
            st = t.untyped_storage()
            storages[(t.device.type, st.data_ptr())] = st.nbytes()

    for p in model.parameters():
        add(p)
        add(p.grad)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            for t in (qs.absmax, qs.code, getattr(qs, "offset", None)):
                add(t)
            if getattr(qs, "state2", None) is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
    for t in model.buffers():
        add(t)
    if optimizer is not None:
        for state in optimizer.state.values():
            for t in state.values():
                add(t)
    for t in (batch or {}).values():
        add(t)
    return sum(storages.values())


def measure_step_peak(model, batch: dict, optimizer, *, autocast_dtype=None, max_grad_norm: float = 1.0) -> dict:
    """Run one training step (forward, backward, clip, optimizer step, zero_grad) and return its real peak in
    bytes of live tensors. CUDA: torch.cuda.max_memory_allocated. CPU: every allocation and free that the
    CPU allocator reports to torch.profiler (profile_memory=True), replayed in time order on top of what was
    resident before the step (parameters, buffers, optimizer states, the batch). Exact, unlike RSS.
    Returns {peak_bytes, resident_bytes, forward_bytes, backward_bytes, step_bytes, saved_bytes}: the phase
    figures are peaks of each phase; saved_bytes is what the forward left alive for backward."""
    import torch

    device = next(model.parameters()).device
    inputs = batch

    def run_step(mark):
        with mark("forward"):
            ctx = torch.autocast(device.type, dtype=autocast_dtype) if autocast_dtype is not None else \
                torch.autocast(device.type, enabled=False)
            with ctx:
                loss = model(**inputs).loss  # the outputs (and their logits) go as the forward ends
        with mark("backward"):
            loss.backward()
            del loss
        with mark("step"):
            if max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    resident = live_tensor_bytes(model, optimizer, inputs)
    if device.type == "cuda":
        import contextlib

        marks, phases = {}, {}

        @contextlib.contextmanager
        def mark(name):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            yield
            torch.cuda.synchronize()
            phases[name] = torch.cuda.max_memory_allocated()
            if name == "forward":
                marks["saved"] = torch.cuda.memory_allocated()

        start = torch.cuda.memory_allocated()
        run_step(mark)
        return {"peak_bytes": max(phases.values()), "resident_bytes": start, "forward_bytes": phases["forward"],
                "backward_bytes": phases["backward"], "step_bytes": phases["step"],
                "saved_bytes": marks["saved"] - start}

    from torch.profiler import record_function

    with memory_profiler() as prof:
        run_step(lambda name: record_function(f"lora_lab_phase:{name}"))
    events = prof.profiler.kineto_results.events()
    spans = {e.name().split(":", 1)[1]: (e.start_ns(), e.end_ns()) for e in events
             if e.name().startswith("lora_lab_phase:")}
    peak, phase_peak, saved = replay_allocations(events, spans, until=spans["forward"][1])
    return {"peak_bytes": resident + peak, "resident_bytes": resident,
            "forward_bytes": resident + phase_peak["forward"], "backward_bytes": resident + phase_peak["backward"],
            "step_bytes": resident + phase_peak["step"], "saved_bytes": saved}


def engine_optimizer(model, cfg):
    """The optimizer a run's Trainer builds for cfg.train.optimizer (config.OPTIMIZERS; Trainer's own
    get_optimizer_cls_and_kwargs), over the model's trainable parameters: measure a step as a run takes it."""
    import torch
    from transformers import Trainer, TrainingArguments

    args = TrainingArguments(output_dir="unused", optim=OPTIMIZERS[cfg.train.optimizer].trainer_optim,
                             learning_rate=cfg.learning_rate, weight_decay=cfg.train.weight_decay,
                             use_cpu=not torch.cuda.is_available(), report_to="none")
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return cls([p for p in model.parameters() if p.requires_grad], **kwargs)


def optimizer_implementation(optimizer) -> str:
    """How a torch optimizer steps, in config.OPTIMIZERS' words (fused / foreach / for-loop / 8bit / sgd)."""
    optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    name = type(optimizer).__name__
    if name == "SGD":
        return "sgd"
    if "8bit" in name or type(optimizer).__module__.startswith("bitsandbytes"):
        return "8bit"
    if optimizer.defaults.get("fused"):
        return "fused"
    return "foreach" if optimizer.defaults.get("foreach") else "for-loop"


def memory_profiler():
    """torch.profiler recording the CPU allocator's allocations and frees ([memory] events)."""
    from torch.profiler import ProfilerActivity, profile

    return profile(activities=[ProfilerActivity.CPU], profile_memory=True)


def replay_allocations(events, spans: dict | None = None, until: int | None = None) -> tuple[int, dict, int]:
    """The allocator's [memory] events in time order -> (the most bytes allocated at once since profiling began,
    that peak within each (start, end) span, the bytes allocated at time `until`)."""
    memory = sorted(((e.start_ns(), e.nbytes()) for e in events if e.name() == "[memory]"), key=lambda x: x[0])
    spans = spans or {}
    live = peak = at_until = 0
    span_peak = {name: 0 for name in spans}
    for t, nbytes in memory:
        live += nbytes
        peak = max(peak, live)
        for name, (a, b) in spans.items():
            if a <= t <= b:
                span_peak[name] = max(span_peak[name], live)
        if until is not None and t <= until:
            at_until = live
    return peak, span_peak, at_until


class StepPeakMeter:
    """The exact tensor peak of a real run's training steps (see the module docstring), as a Trainer callback:

        meter = StepPeakMeter(); trainer.add_callback(meter.callback()); ...; meter.results()

    On CPU a step is profiled when its batch (rows x padded length, read by a forward pre-hook) is the largest so
    far; the peak is what was resident when it began (model, gradients, optimizer states, the batch) plus the
    most its allocations held at once. On CUDA torch.cuda.max_memory_allocated gives the same figure for free."""

    def __init__(self):
        self.peak = 0
        self.largest = 0          # rows x tokens of the largest batch profiled so far
        self.shape: tuple | None = None
        self.steps = 0            # steps profiled
        self.seconds = 0.0        # wall time of the profiler's own bookkeeping (start, stop, reading events)
        self.cuda = False
        self._profile = None
        self._resident = 0
        self._optimizer = None
        self._hook = None

    def callback(self):
        from transformers import TrainerCallback

        meter = self

        class StepPeakCallback(TrainerCallback):
            def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
                meter.begin(model, optimizer)

            def on_step_end(self, args, state, control, **kwargs):
                meter.step_end()

            def on_train_end(self, args, state, control, **kwargs):
                meter.end()

        return StepPeakCallback()

    def begin(self, model, optimizer) -> None:
        import torch

        self.cuda = torch.cuda.is_available()
        self._optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate wraps the torch optimizer
        if not self.cuda and model is not None:
            self._hook = model.register_forward_pre_hook(self._before_forward, with_kwargs=True)

    def _before_forward(self, module, args, kwargs) -> None:
        import torch

        ids = kwargs.get("input_ids")
        if self._profile is not None or not module.training or not torch.is_grad_enabled() or ids is None:
            return
        if ids.numel() <= self.largest:
            return
        started = time.perf_counter()
        self.largest, self.shape = ids.numel(), tuple(ids.shape)
        self._resident = live_tensor_bytes(module, self._optimizer, kwargs)
        self._profile = memory_profiler()
        self._profile.__enter__()
        self.seconds += time.perf_counter() - started

    def step_end(self) -> None:
        if self._profile is None:
            return
        started = time.perf_counter()
        self._profile.__exit__(None, None, None)
        peak, _, _ = replay_allocations(self._profile.profiler.kineto_results.events())
        self._profile = None
        self.peak = max(self.peak, self._resident + peak)
        self.steps += 1
        self.seconds += time.perf_counter() - started

    def end(self) -> None:
        self.step_end()  # a run stopped inside a profiled step still counts it
        if self._hook is not None:
            self._hook.remove()
            self._hook = None

    def results(self) -> dict:
        """What a run records: peak_tensor_bytes and how it was measured."""
        if self.cuda:
            import torch

            return {"peak_tensor_bytes": int(torch.cuda.max_memory_allocated()),
                    "peak_tensor_method": "cuda: torch.cuda.max_memory_allocated"}
        if not self.steps:
            return {"peak_tensor_bytes": None, "peak_tensor_method": "no training step was measured"}
        rows, tokens = self.shape
        return {"peak_tensor_bytes": int(self.peak),
                "peak_tensor_method": f"cpu: live tensor bytes from torch.profiler allocator events over the "
                                      f"{self.steps} steps whose batch was the largest so far (largest: {rows} x "
                                      f"{tokens} tokens; profiler bookkeeping {self.seconds:.2f} s)"}
