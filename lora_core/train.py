"""The training recipe: one readable setup -> train -> save function around the Hugging Face Trainer.

    results = run_experiment(cfg, out_dir, on_event=print, should_stop=lambda: False)

Setup loads and checks the data (`data.load_splits`), loads the model for the method (`models.load_for_training`)
and tokenizes. Train runs `transformers.Trainer` with one callback (events.py) that turns every log / eval into
an event dict for `on_event` and polls `should_stop` after each optimizer step. Save writes the method's
artifacts into `out_dir`, laid out as `runs.layout.Artifacts` says (the weights, the label map, the generations;
Trainer checkpoints for resume). The returned dict is the run's results (see `collect_results`).

Nothing is left half-written: weights are saved into a staging folder and renamed into place, small files are
replaced atomically, and a Trainer checkpoint counts for resume only once its completeness marker is written
after the save returned. A full disk ends the run with a StorageError naming what was being written.
"""
from __future__ import annotations

import json
import os
import platform
import shutil
import time
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from . import data, metrics, models, tokens
from .config import OPTIMIZERS, ConfigError, ExperimentConfig
from .errors import RunError, StorageError
from .events import Event, EventStream, MemoryMeter, event_callback
from .guards import early_stop_reason, early_stopping_metric, greater_is_better, guarded_trainer_class
from .memory import StepPeakMeter, estimate_for_experiment
from .paths import dir_bytes
from .precision import resolve_here as resolve_precision
from .runs import files
from .runs.layout import (CHECKPOINT_DONE, Artifacts, checkpoint_state, is_complete_checkpoint,
                          mark_checkpoint_complete)
from .tracking import Tracker

NEARLY_FULL_BYTES = 1 << 20  # a write error with less than this free on the run's disk is a full disk


def run_experiment(cfg: ExperimentConfig, out_dir: Path, *, on_event: Callable[[Event], None] | None = None,
                   should_stop: Callable[[], bool] | None = None, resume_from: Path | None = None,
                   prepare_trainer: Callable | None = None, run_info: dict | None = None) -> dict:
    """Train `cfg` and write its artifacts to `out_dir`; returns the results dict.

    on_event(event) gets every phase / log / eval event. should_stop() is polled between phases and after every
    optimizer step; once true, the run checkpoints, saves what it trained and returns with stopped=True.
    resume_from: a `checkpoint-N` folder of an earlier run of the same config; step counting continues there.
    prepare_trainer: a backend's Trainer wrapper (Ray Train's). In a multi-process run (distributed.py) every
    rank calls this; rank 0 alone writes files and reports to the trackers.
    run_info: who the run is (run_id, sweep_id, parent_id, runs_dir), for the trackers `cfg.tracking` switches on;
    they get every event and, at the end, the results and the saved weights (tracking.py).
    """
    tracker = Tracker.open(cfg, Path(out_dir), run_info) if rank() == 0 else Tracker([])
    try:
        results = _train(cfg, out_dir, on_event=tracker.wrap(on_event), should_stop=should_stop,
                         resume_from=resume_from, prepare_trainer=prepare_trainer)
    except BaseException:
        tracker.finish(None, failed=True)
        raise
    weights = Path(out_dir) / results["artifact_dir"] if results.get("artifact_dir") else None
    return tracker.finish(results, weights)


def _train(cfg: ExperimentConfig, out_dir: Path, *, on_event, should_stop, resume_from, prepare_trainer) -> dict:
    """setup -> train -> save (see run_experiment)."""
    out = Artifacts(out_dir)
    out.path.mkdir(parents=True, exist_ok=True)
    writing = {"what": f"the run's files in {out.path}"}  # named in the error when the disk fills up
    try:
        return _run(cfg, out, writing, on_event, should_stop, resume_from, prepare_trainer)
    except Exception as exc:
        if files.is_no_space(exc) or (_nearly_full(out.path) and "writ" in str(exc).lower()):
            raise StorageError(f"no space left on device while writing {writing['what']}") from exc
        raise


def _nearly_full(path: Path) -> bool:
    free = files.free_bytes(path)
    return free is not None and free < NEARLY_FULL_BYTES


def _run(cfg: ExperimentConfig, out: Artifacts, writing: dict, on_event, should_stop, resume_from,
         prepare_trainer) -> dict:
    from transformers import set_seed

    resume_from = check_checkpoint(resume_from) if resume_from else None
    precision_flags(cfg.train.precision)  # fp16 without a GPU fails here, before anything loads
    stop_requested = should_stop or (lambda: False)
    memory = MemoryMeter()  # baseline taken here: before data and model are loaded
    set_seed(cfg.train.seed)  # model init (classifier head, LoRA A) and the eval split depend on it

    with EventStream(on_event, cfg) as stream:  # on leaving, every event has been handed to on_event
        # -- setup -------------------------------------------------------------------------------------------
        stream.phase("loading_data")
        splits = data.load_splits(cfg)
        if splits.label_map and rank() == 0:
            writing["what"] = str(out.label_map)
            files.write_json(out.label_map, splits.label_map)
        if stop_requested():
            return collect_results(cfg, splits=splits, memory=memory, stopped=True, resume_from=resume_from)

        stream.phase("loading_model")
        model, tokenizer = models.load_for_training(cfg, splits.num_labels or 2, splits.id2label)
        memory.hold(model)
        prepared = tokens.prepare(splits, tokenizer, cfg)  # cached per data + tokenizer; packed; ordered
        train_ds, eval_ds = prepared.train, prepared.eval
        estimate = memory_estimate(cfg, splits.num_labels or 2, train_ds)  # the run's real batch shapes
        before = generations(cfg, model, tokenizer) if rank() == 0 else None
        if stop_requested():
            return collect_results(cfg, splits=splits, model=model, memory=memory, stopped=True,
                                   resume_from=resume_from, estimate=estimate, data_info=prepared.info)

        trainer = build_trainer(cfg, model, tokenizer, train_ds, eval_ds, out.checkpoints, stream, stop_requested,
                                memory)
        if prepare_trainer is not None:
            trainer = prepare_trainer(trainer)
        trainer.add_callback(checkpoint_marker(out, writing))
        baseline = None if resume_from else evaluate_before(cfg, trainer)  # every rank: evaluation is collective
        tensor_peak = StepPeakMeter()  # exact live-tensor bytes of the largest steps, beside RSS
        trainer.add_callback(tensor_peak.callback())

        # -- train -------------------------------------------------------------------------------------------
        stream.phase("training")
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        train_time = time.perf_counter() - started
        final = final_metrics(cfg, trainer, stream)
        final["end_reason"] = early_stop_reason(cfg, trainer.state, stream.stopping)
        final["early_stopped"] = final["end_reason"] is not None

        # -- save --------------------------------------------------------------------------------------------
        stream.phase("saving")
        writing["what"] = f"the trained weights ({out.weights(cfg.method)})"
        artifact_dir = save_artifacts(cfg, trainer.model, tokenizer, out, splits) if rank() == 0 else None
        pairs = None
        if before is not None:
            after = generations(cfg, trainer.model, tokenizer)
            pairs = [{"prompt": p, "before": b, "after": a} for p, b, a in zip(cfg.generate.prompts, before, after)]
            writing["what"] = str(out.generations)
            files.atomic_write(out.generations, json.dumps(pairs, indent=2, ensure_ascii=False))
    return collect_results(cfg, splits=splits, model=trainer.model, memory=memory, stopped=stream.stopping,
                           resume_from=resume_from, trainer=trainer, train_time=train_time, final=final,
                           artifact_dir=artifact_dir, stream=stream, generations=pairs, estimate=estimate,
                           tensor_peak=tensor_peak.results(), baseline=baseline, data_info=prepared.info)


# -- setup helpers ---------------------------------------------------------------------------------------------

def rank() -> int:
    """This process's rank in a multi-process run (distributed.py), 0 when it trains alone."""
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """How many processes train this run together (1 when it trains alone)."""
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def check_checkpoint(path: Path) -> Path:
    path = Path(path)
    if not is_complete_checkpoint(path):
        raise RunError(f"resume_from: {path} is not a complete checkpoint (no {CHECKPOINT_DONE} marker, or a file "
                       "it lists is missing or cut short); give a checkpoint folder of an earlier run "
                       "(`Runs.checkpoints(run_id)` lists the complete ones)")
    return path


def checkpoint_marker(out: Artifacts, writing: dict):
    """A TrainerCallback that marks each checkpoint complete once the Trainer's save has returned (resume only
    trusts marked ones) and keeps `writing` naming the checkpoint while it is saved."""
    from transformers import TrainerCallback

    class CheckpointMarker(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if control.should_save:  # decided by now: the save follows this step
                writing["what"] = f"checkpoint {out.checkpoint(state.global_step)}"

        def on_epoch_end(self, args, state, control, **kwargs):
            if control.should_save:
                writing["what"] = f"checkpoint {out.checkpoint(state.global_step)}"

        def on_save(self, args, state, control, **kwargs):
            if not state.is_world_process_zero:  # rank 0 saved the checkpoint; it alone marks it
                return
            folder = out.checkpoint(state.global_step)
            if folder.is_dir():
                mark_checkpoint_complete(folder)
            writing["what"] = f"the metrics and checkpoints in {out.path}"

    return CheckpointMarker()


def precision_flags(precision: str) -> dict:
    """TrainingArguments flags for cfg.train.precision; auto = bf16 mixed precision where the hardware does bf16
    natively (precision.resolve), else fp32. `_name` / `_why`: what it resolved to and why (the run records them)."""
    import torch

    cuda = torch.cuda.is_available()
    name, why = resolve_precision(precision)
    if name == "fp16" and not cuda:
        raise ConfigError("train.precision", "fp16 mixed precision needs a CUDA GPU; on CPU use fp32 or bf16")
    return {"bf16": name == "bf16", "fp16": name == "fp16", "use_cpu": not cuda, "_name": name, "_why": why}


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
    metric = early_stopping_metric(cfg) if early else None
    flags = {k: v for k, v in precision_flags(t.precision).items() if not k.startswith("_")}
    if not t.checkpoints and not early:  # early stopping reloads the best checkpoint, so it always saves them
        save_strategy = "no"
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
        optim=OPTIMIZERS[t.optimizer].trainer_optim,
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
        metric_for_best_model=metric,
        greater_is_better=greater_is_better(metric) if early else None,
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
        # with several ranks the Trainer would multiply the loss by the rank count for models that take loss
        # kwargs, which seq-cls models (plain mean cross-entropy) do not use: their loss came out doubled on 2 ranks
        average_tokens_across_devices=False,
        **flags,
    )


def build_trainer(cfg, model, tokenizer, train_ds, eval_ds, checkpoint_dir: Path, stream: EventStream,
                  should_stop, memory: MemoryMeter):
    from transformers import EarlyStoppingCallback

    class LabTrainer(guarded_trainer_class()):  # ends the run on a NaN / inf loss or gradient norm
        def _get_train_sampler(self, train_dataset=None):
            dataset = self.train_dataset if train_dataset is None else train_dataset
            if not cfg.data.group_by_length:
                return super()._get_train_sampler(train_dataset)
            return tokens.LengthGroupedOrder([len(x) for x in dataset["input_ids"]], self.args.train_batch_size,
                                             cfg.train.seed)

    callbacks = [event_callback(stream, should_stop, memory)]
    if cfg.train.early_stopping_patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.train.early_stopping_patience))
    return LabTrainer(
        model=model,
        args=training_arguments(cfg, checkpoint_dir),
        train_dataset=train_ds,
        eval_dataset=eval_ds,
        data_collator=tokens.make_collator(cfg, tokenizer),
        processing_class=tokenizer,
        compute_metrics=metrics.classification_metrics if cfg.task == "seq-cls" else None,
        callbacks=callbacks,
    )


def generations(cfg: ExperimentConfig, model, tokenizer) -> list[str] | None:
    """Greedy generations for cfg.generate.prompts (causal-lm only)."""
    if cfg.task != "causal-lm" or not cfg.generate.prompts:
        return None
    return models.generate_texts(model, tokenizer, cfg.generate.prompts, cfg.generate.max_new_tokens)


def evaluate_before(cfg: ExperimentConfig, trainer) -> dict | None:
    """causal-lm: the eval loss and perplexity of the model before its first step, the "before" of the run's
    before/after (logged as an eval event at step 0, so the eval curve starts there). Resumed runs skip it."""
    if cfg.task != "causal-lm":
        return None
    loss = trainer.evaluate().get("eval_loss")
    return {"eval_loss_before": loss, "eval_perplexity_before": metrics.perplexity(loss) if loss is not None else None}


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


def save_artifacts(cfg: ExperimentConfig, model, tokenizer, out: Artifacts, splits) -> Path:
    """The trained weights: the adapter (lora, qlora), the whole model (full) or the head (head-only); returns
    their folder. Saved into a staging folder and renamed into place, so the folder is whole or absent."""
    target = out.weights(cfg.method)
    staging = out.staging(target)
    try:
        _save_weights(cfg, model, tokenizer, staging, splits)
        files.replace_dir(staging, target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def _save_weights(cfg: ExperimentConfig, model, tokenizer, folder: Path, splits) -> None:
    if cfg.uses_lora:
        model.save_pretrained(folder)  # PEFT's adapter config + weights
    elif cfg.method == "full":
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    else:
        from safetensors.torch import save_file

        head = Artifacts(folder.parent)  # the head's file names, inside the staging folder
        weights, info_file = folder / head.head_weights.name, folder / head.head_info.name
        folder.mkdir(parents=True, exist_ok=True)
        tensors = _trained_tensors(model)
        save_file(tensors, str(weights))
        info = {"base_model": cfg.model.source, "task": cfg.task, "num_labels": splits.num_labels,
                "id2label": splits.id2label, "tensors": {k: list(v.shape) for k, v in tensors.items()},
                "how_to_load": "load the base with AutoModelForSequenceClassification (same num_labels), then "
                               f"model.load_state_dict(safetensors.torch.load_file('{weights.name}'), "
                               "strict=False)"}
        info_file.write_text(json.dumps(info, indent=2), encoding="utf-8")


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


def memory_estimate(cfg: ExperimentConfig, num_labels: int, train_ds) -> tuple[dict | None, str | None]:
    """The estimator's prediction for this run (its class count, the optimizer it runs, the longest padded batch
    its tokenized data gives), or (None, why not)."""
    try:
        lengths = [len(ids) for ids in train_ds["input_ids"]]
        return estimate_for_experiment(cfg, num_labels=num_labels, lengths=lengths), None
    except Exception as exc:  # the estimator is optional for a run: record why it is missing
        return None, f"{type(exc).__name__}: {exc}"


def collect_results(cfg: ExperimentConfig, *, splits, memory: MemoryMeter, stopped: bool, resume_from=None,
                    model=None, trainer=None, train_time: float = 0.0, final: dict | None = None,
                    artifact_dir: Path | None = None, stream: EventStream | None = None,
                    generations: list | None = None, estimate: tuple | None = None,
                    tensor_peak: dict | None = None, baseline: dict | None = None,
                    data_info: dict | None = None) -> dict:
    """The results dict: final eval metrics, time, params, artifact size, memory (measured + estimated),
    versions, device, precision (as resolved, and why), the speed choices (`speed`), data fingerprint, seed.
    Runs stopped before training carry what they have."""
    trainable = total = None
    if model is not None:
        trainable, total = models.nb_params(model)
    estimate, estimate_error = estimate or (None, "the run stopped before its data was tokenized")
    flags = precision_flags(cfg.train.precision)
    world = world_size()
    results: dict[str, Any] = {
        "task": cfg.task, "method": cfg.method, "model": cfg.model.source,
        "backend": cfg.resources.backend, "world_size": world,
        "global_batch_size": cfg.train.batch_size * cfg.train.gradient_accumulation_steps * world,
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
        "adapter_bytes_on_disk": dir_bytes(artifact_dir, "*.safetensors") if artifact_dir else None,
        "peak_mem_bytes": memory.peak(), "peak_mem_method": memory.method,
        **(tensor_peak or {"peak_tensor_bytes": None, "peak_tensor_method": "the run stopped before training"}),
        "memory_estimate": estimate, "memory_estimate_error": estimate_error,
        "versions": versions(), "device": device_name(), "precision": flags["_name"],
        "precision_reason": flags["_why"], "speed": speed_choices(cfg, data_info),
        "dataset_fingerprint": splits.fingerprint, "train_rows": len(splits.train), "eval_rows": len(splits.eval),
        "train_source": splits.train_source, "eval_source": splits.eval_source,
        "seed": cfg.train.seed, "label_map": splits.label_map,
        "resumed_from": str(resume_from) if resume_from else None,
        "resumed_from_step": _checkpoint_step(resume_from),
    }
    if generations is not None:
        results["generations"] = generations
    return results


def speed_choices(cfg: ExperimentConfig, data_info: dict | None) -> dict:
    """The run's speed choices as the config set them, with what they did (cache hit, padding, packed rows)."""
    return {"precision": cfg.train.precision, "save_checkpoints": cfg.train.checkpoints,
            "cache_tokenized": cfg.data.cache_tokenized, "group_by_length": cfg.data.group_by_length,
            "packing": cfg.data.packing, **(data_info or {})}


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
    state = json.loads(checkpoint_state(path).read_text(encoding="utf-8"))
    return state.get("global_step")
