"""The training recipe: one readable setup -> train -> save function around the Hugging Face Trainer.

    results = run_experiment(cfg, out_dir, on_event=print, should_stop=lambda: False)

Setup loads and checks the data (`data.load_splits`), loads the model for the method (`models.load_for_training`)
and tokenizes. Train runs `transformers.Trainer` with one callback that turns every log / eval into an event
dict for `on_event` and polls `should_stop` after each optimizer step. Save writes the method's artifacts
(adapter/, model/ or head/), label_map.json and generations.json into `out_dir`; checkpoints for resume live in
`out_dir/checkpoints`. The returned dict is the run's results (see `collect_results`).
"""
from __future__ import annotations

import json
import os
import platform
import queue
import resource
import sys
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from .config import ConfigError, ExperimentConfig

Event = dict[str, Any]
_CLOSE = object()  # tells the event writer thread to finish
PHASES = ("loading_data", "loading_model", "training", "saving")  # the `phase` events, in order


def run_experiment(cfg: ExperimentConfig, out_dir: Path, *, on_event: Callable[[Event], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, resume_from: Path | None = None) -> dict:
    """Train `cfg` and write its artifacts to `out_dir`; returns the results dict.

    on_event(event) gets every phase / log / eval event. should_stop() is polled between phases and after every
    optimizer step; once true, the run checkpoints, saves what it trained and returns with stopped=True.
    resume_from: a `checkpoint-N` folder of an earlier run of the same config; step counting continues there.
    """
    from . import data, models
    from transformers import set_seed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    resume_from = check_checkpoint(resume_from) if resume_from else None
    precision_flags(cfg.train.precision)  # fp16 without a GPU fails here, before anything loads
    stop_requested = should_stop or (lambda: False)
    memory = MemoryMeter()  # baseline taken here: before data and model are loaded
    set_seed(cfg.train.seed)  # model init (classifier head, LoRA A) and the eval split depend on it

    with EventStream(on_event, cfg) as stream:  # on leaving, every event has been handed to on_event
        # -- setup -------------------------------------------------------------------------------------------
        stream.phase("loading_data")
        splits = data.load_splits(cfg)
        if splits.label_map:
            (out_dir / "label_map.json").write_text(json.dumps(splits.label_map, indent=2), encoding="utf-8")
        if stop_requested():
            return collect_results(cfg, splits=splits, memory=memory, stopped=True, resume_from=resume_from)

        stream.phase("loading_model")
        model, tokenizer = models.load_for_training(cfg, splits.num_labels or 2, splits.id2label)
        memory.hold(model)
        train_ds, eval_ds = data.tokenize(splits, tokenizer, cfg)
        before = generations(cfg, model, tokenizer)
        if stop_requested():
            return collect_results(cfg, splits=splits, model=model, memory=memory, stopped=True,
                                   resume_from=resume_from)

        trainer = build_trainer(cfg, model, tokenizer, train_ds, eval_ds, out_dir / "checkpoints",
                                stream, stop_requested, memory)
        baseline = None if resume_from else evaluate_before(cfg, trainer)

        # -- train -------------------------------------------------------------------------------------------
        stream.phase("training")
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_time = time.perf_counter() - started
        final = final_metrics(cfg, trainer, stream)

        # -- save --------------------------------------------------------------------------------------------
        stream.phase("saving")
        artifact_dir = save_artifacts(cfg, trainer.model, tokenizer, out_dir, splits)
        after = generations(cfg, trainer.model, tokenizer)
        pairs = None
        if before is not None:
            pairs = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(cfg.generate.prompts, before, after)]
            (out_dir / "generations.json").write_text(json.dumps(pairs, indent=2, ensure_ascii=False),
                                                      encoding="utf-8")
    return collect_results(cfg, splits=splits, model=trainer.model, memory=memory, stopped=stream.stopping,
                           resume_from=resume_from, trainer=trainer, train_time=train_time, final=final,
                           artifact_dir=artifact_dir, stream=stream, generations=pairs, baseline=baseline)


# -- setup helpers ---------------------------------------------------------------------------------------------

def check_checkpoint(path: Path) -> Path:
    path = Path(path)
    if not (path / "trainer_state.json").is_file():
        raise ValueError(f"resume_from: {path} is not a Trainer checkpoint (no trainer_state.json); give a "
                         f"checkpoints/checkpoint-N folder of an earlier run")
    return path


def precision_flags(precision: str) -> dict:
    """TrainingArguments flags for cfg.train.precision; auto = bf16 on CUDA GPUs that support it, else fp32."""
    import torch

    cuda = torch.cuda.is_available()
    if precision == "auto":
        precision = "bf16" if cuda and torch.cuda.is_bf16_supported() else "fp32"
    if precision == "fp16" and not cuda:
        raise ConfigError("train.precision", "fp16 mixed precision needs a CUDA GPU; on CPU use fp32 or bf16")
    return {"bf16": precision == "bf16", "fp16": precision == "fp16", "use_cpu": not cuda, "_name": precision}


# adamw: the fused torch AdamW (transformers' default since torch 2.8); adamw_8bit: bitsandbytes' 8-bit AdamW
OPTIMIZERS = {"adamw": "adamw_torch_fused", "adamw_8bit": "adamw_bnb_8bit", "sgd": "sgd"}


def training_arguments(cfg: ExperimentConfig, checkpoint_dir: Path):
    """TrainingArguments from the config. Evaluation runs at each epoch end (or every eval_steps); checkpoints
    follow evaluation unless save_steps is set; early stopping keeps them in step, as the Trainer requires."""
    from transformers import TrainingArguments

    t = cfg.train
    eval_strategy = "steps" if t.eval_steps else "epoch"
    save_strategy, save_steps = eval_strategy, t.eval_steps
    if t.save_steps and not t.early_stopping_patience:
        save_strategy, save_steps = "steps", t.save_steps
    early = t.early_stopping_patience is not None
    flags = precision_flags(t.precision)
    flags.pop("_name")
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps or -1,
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.eval_batch_size or t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=cfg.learning_rate,
        weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        optim=OPTIMIZERS[t.optimizer],
        max_grad_norm=t.max_grad_norm,
        activation_checkpointing=t.gradient_checkpointing,  # transformers 5 name of gradient checkpointing
        # non-reentrant checkpointing needs no input grads, so frozen-embedding LoRA models work as they are
        activation_checkpointing_kwargs={"use_reentrant": False} if t.gradient_checkpointing else None,
        eval_strategy=eval_strategy,
        eval_steps=t.eval_steps,
        save_strategy=save_strategy,
        save_steps=save_steps or 500,
        save_total_limit=2,
        load_best_model_at_end=early,
        metric_for_best_model=("accuracy" if cfg.task == "seq-cls" else "eval_loss") if early else None,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        logging_first_step=True,
        include_num_input_tokens_seen="non_padding",
        prediction_loss_only=cfg.task == "causal-lm",  # perplexity needs the loss only, not vocab-sized logits
        label_names=["labels"],  # PeftModel's forward hides the name, so say it
        seed=t.seed,
        data_seed=t.seed,
        report_to="none",
        disable_tqdm=True,
        dataloader_num_workers=0,
        **flags,
    )


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, checkpoint_dir: Path, stream: "EventStream",
                  should_stop, memory: "MemoryMeter"):
    from transformers import EarlyStoppingCallback, Trainer

    from . import data, metrics

    callbacks = [event_callback(stream, should_stop, memory)]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return Trainer(
        model=model,
        args=training_arguments(cfg, checkpoint_dir),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=data.make_collator(cfg, tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics.classification_metrics if cfg.task == "seq-cls" else None,
        callbacks=callbacks,
    )


def generations(cfg: ExperimentConfig, model, tokenizer) -> list[str] | None:
    """Greedy generations for cfg.generate.prompts (causal-lm only)."""
    if cfg.task != "causal-lm" or not cfg.generate.prompts:
        return None
    from .models import generate_texts

    return generate_texts(model, tokenizer, cfg.generate.prompts, cfg.generate.max_new_tokens)


def evaluate_before(cfg: ExperimentConfig, trainer) -> dict | None:
    """causal-lm: the eval loss and perplexity of the model before its first step, the "before" of the run's
    before/after (logged as an eval event at step 0, so the eval curve starts there). Resumed runs skip it."""
    if cfg.task != "causal-lm":
        return None
    from .metrics import perplexity

    loss = trainer.evaluate().get("eval_loss")
    return {"eval_loss_before": loss, "eval_perplexity_before": perplexity(loss) if loss is not None else None}


# -- events ----------------------------------------------------------------------------------------------------

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
        self.samples_per_step = cfg.train.batch_size * cfg.train.gradient_accumulation_steps
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
                from .metrics import perplexity

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
    import psutil

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


# -- train end ---------------------------------------------------------------------------------------------------

def final_metrics(cfg: ExperimentConfig, trainer, stream: EventStream) -> dict:
    """Eval metrics of the saved model. The epoch-end evaluation usually ran at the last step already; reuse it
    unless the best checkpoint was reloaded. A stopped run is not evaluated again (stops must be quick)."""
    step = trainer.state.global_step
    last = stream.last_eval
    reloaded = trainer.args.load_best_model_at_end and trainer.state.best_model_checkpoint
    if stream.stopping or (last and last.get("step") == step and not reloaded):
        out = dict(last or {})
    else:
        out = trainer.evaluate()  # logs an eval event through the callback
        out = dict(stream.last_eval or out)
    out.pop("step", None)
    names = ("accuracy", "macro_f1", "loss") if cfg.task == "seq-cls" else ("loss", "perplexity")
    result = {("eval_loss" if n == "loss" else n): out.get(f"eval_{n}") for n in names}
    result["metrics_step"] = (last or {}).get("step") if stream.stopping else step
    return result


def _trained_tensors(model) -> dict:
    return {name: p.detach().to("cpu").contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_artifacts(cfg: ExperimentConfig, model, tokenizer, out_dir: Path, splits) -> Path:
    """adapter/ (lora, qlora), model/ (full) or head/ (head-only) in out_dir; returns that folder."""
    if cfg.uses_lora:
        target = out_dir / "adapter"
        model.save_pretrained(target)  # adapter_config.json + adapter_model.safetensors
    elif cfg.method == "full":
        target = out_dir / "model"
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    else:
        from safetensors.torch import save_file

        target = out_dir / "head"
        target.mkdir(parents=True, exist_ok=True)
        tensors = _trained_tensors(model)
        save_file(tensors, str(target / "head.safetensors"))
        info = {"base_model": cfg.model.source, "task": cfg.task, "num_labels": splits.num_labels,
                "id2label": splits.id2label, "tensors": {k: list(v.shape) for k, v in tensors.items()},
                "how_to_load": "load the base with AutoModelForSequenceClassification (same num_labels), then "
                               "model.load_state_dict(safetensors.torch.load_file('head.safetensors'), strict=False)"}
        (target / "head.json").write_text(json.dumps(info, indent=2), encoding="utf-8")
    return target


def param_counts(model) -> tuple[int, int]:
    """(trainable, total); PEFT's own count for a PeftModel (it counts 4-bit weights at full size)."""
    if hasattr(model, "get_nb_trainable_parameters"):
        trainable, total = model.get_nb_trainable_parameters()
        return int(trainable), int(total)
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total


def versions() -> dict:
    out = {"python": platform.python_version()}
    for name in ("torch", "transformers", "peft", "bitsandbytes", "accelerate", "datasets"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_name() -> str:
    import torch

    if torch.cuda.is_available():
        return f"cuda:0 ({torch.cuda.get_device_name(0)})"
    return f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def memory_estimate(cfg: ExperimentConfig) -> tuple[dict | None, str | None]:
    """The estimator's prediction for this config, or (None, why not)."""
    try:
        from .estimator import estimate_for_experiment

        return estimate_for_experiment(cfg), None
    except Exception as exc:  # the estimator is optional for a run: record why it is missing
        return None, f"{type(exc).__name__}: {exc}"


def collect_results(cfg: ExperimentConfig, *, splits, memory: MemoryMeter, stopped: bool, resume_from=None,
                    model=None, trainer=None, train_time: float = 0.0, final: dict | None = None,
                    artifact_dir: Path | None = None, stream: EventStream | None = None,
                    generations: list | None = None, baseline: dict | None = None) -> dict:
    """The results dict: final eval metrics, time, params, artifact size, memory (measured + estimated),
    versions, device, data fingerprint, seed. Runs stopped before training carry what they have."""
    trainable = total = None
    if model is not None:
        trainable, total = param_counts(model)
    estimate, estimate_error = memory_estimate(cfg)
    flags = precision_flags(cfg.train.precision)
    results: dict[str, Any] = {
        "task": cfg.task, "method": cfg.method, "model": cfg.model.source,
        "stopped": stopped,
        **(final or {}),
        **(baseline or {}),
        "train_time_s": train_time,
        "eval_time_s": stream.eval_s if stream else 0.0,
        "checkpoint_time_s": stream.save_s if stream else 0.0,
        "event_errors": stream.errors if stream else 0,
        "learning_rate": cfg.learning_rate,
        "steps": trainer.state.global_step if trainer else 0,
        "epochs": trainer.state.epoch if trainer else 0.0,
        "train_loss": _train_loss(trainer),
        "trainable_params": trainable, "total_params": total,
        "trainable_percent": 100.0 * trainable / total if total else None,
        "artifact_dir": artifact_dir.name if artifact_dir else None,
        "adapter_bytes_on_disk": sum(f.stat().st_size for f in artifact_dir.glob("*.safetensors"))
        if artifact_dir else None,
        "peak_mem_bytes": memory.peak(), "peak_mem_method": memory.method,
        "memory_estimate": estimate, "memory_estimate_error": estimate_error,
        "versions": versions(), "device": device_name(), "precision": flags["_name"],
        "dataset_fingerprint": splits.fingerprint, "train_rows": len(splits.train), "eval_rows": len(splits.eval),
        "train_source": splits.train_source, "eval_source": splits.eval_source,
        "seed": cfg.train.seed, "label_map": splits.label_map,
        "resumed_from": str(resume_from) if resume_from else None,
        "resumed_from_step": _checkpoint_step(resume_from),
    }
    if generations is not None:
        results["generations"] = generations
    return results


def _train_loss(trainer) -> float | None:
    if trainer is None:
        return None
    for entry in reversed(trainer.state.log_history):
        if "train_loss" in entry:
            return entry["train_loss"]
        if "loss" in entry:
            return entry["loss"]
    return None


def _checkpoint_step(path) -> int | None:
    if not path:
        return None
    state = json.loads((Path(path) / "trainer_state.json").read_text(encoding="utf-8"))
    return state.get("global_step")
