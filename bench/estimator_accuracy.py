"""How close is the memory estimator to what a training step really allocates, and to what a run records?

1. Fixed-length batches. For each config in CONFIGS (tiny and small models; full, LoRA, QLoRA, head-only; fp32
   and bf16 autocast; several batch sizes and lengths; checkpointing on and off) this loads the model the way the
   engine does (`models.load_for_training`) with the optimizer a run's Trainer builds (`memory.measure.
   engine_optimizer`: fused AdamW), runs one warm-up step so the optimizer states exist, then measures the next
   step with `memory.measure_step_peak`: on CPU the exact bytes of live tensors from torch.profiler's allocator
   events, on CUDA torch.cuda.max_memory_allocated. It prints estimate / measured and the % errors of our
   estimate, of the tutorial's weights x 6 rule and of an `accelerate estimate-memory`-style figure.
2. Dynamically padded batches on the bundled samples (PADDED): the real tokenized rows, collated by the engine's
   collator (padded to the longest row), in the batch that holds the longest row: the largest step a run takes.
   The estimate is `estimate_for_experiment(cfg, num_labels, lengths)`, what a run records.
3. Published GPU peaks (litgpt, torchtune) with the settings those runs used, as far as they are documented: a
   wider, honest tolerance, printed but not part of the summary line.
4. Real runs (RUNS, each in its own process, like a worker): the estimate the run recorded against the two peaks it
   measured, the tensor peak (live tensor bytes of its largest steps: what the estimate models) and the RSS
   growth (everything the process added), and what the estimate used to record (data.max_length, 2 labels,
   for-loop AdamW). Then the cost of the run's tensor-peak profiling, profiled and plain steps side by side.

    .venv/bin/python bench/estimator_accuracy.py [--quick] [--no-runs]

The last line is `median_abs_error=X% max_abs_error=Y%` over the measured steps of 1 and 2.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Small models with a real hidden size, so activations (not just logits) matter. Random weights, saved once.
SMALL = {
    "small-gpt2": {"model_type": "gpt2", "n_embd": 256, "n_layer": 4, "n_head": 8, "n_positions": 512,
                   "vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},
    "small-llama": {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                    "num_attention_heads": 8, "num_key_value_heads": 4, "max_position_embeddings": 512,
                    "vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0,
                    "tie_word_embeddings": False},
}

# name, model, task, method, batch, seq, extra config / estimator settings
CONFIGS = [
    ("minilm full fp32", "minilm", "seq-cls", "full", 8, 64, {}),
    ("minilm lora", "minilm", "seq-cls", "lora", 8, 128, {}),
    ("minilm lora ckpt", "minilm", "seq-cls", "lora", 16, 128, {"ckpt": True}),
    ("minilm qlora", "minilm", "seq-cls", "qlora", 8, 96, {}),
    ("minilm full bf16-mixed", "minilm", "seq-cls", "full", 4, 64, {"precision": "bf16"}),
    ("minilm head-only", "minilm", "seq-cls", "head-only", 16, 64, {}),
    ("minilm lora r16 all-linear eager", "minilm", "seq-cls", "lora", 4, 128,
     {"r": 16, "targets": "all-linear", "attention": "eager"}),
    ("tiny-gpt2 full", "tiny-random-gpt2", "causal-lm", "full", 4, 64, {}),
    ("tiny-gpt2 lora eager", "tiny-random-gpt2", "causal-lm", "lora", 8, 128, {"attention": "eager"}),
    ("tiny-gpt2 qlora", "tiny-random-gpt2", "causal-lm", "qlora", 4, 64, {}),
    ("tiny-llama full", "tiny-random-llama", "causal-lm", "full", 4, 128, {}),
    ("tiny-llama lora ckpt", "tiny-random-llama", "causal-lm", "lora", 8, 128, {"ckpt": True}),
    ("tiny-llama qlora bf16-mixed", "tiny-random-llama", "causal-lm", "qlora", 4, 64, {"precision": "bf16"}),
    ("small-gpt2 lora all-linear", "small-gpt2", "causal-lm", "lora", 4, 128, {"targets": "all-linear"}),
    ("small-gpt2 full ckpt", "small-gpt2", "causal-lm", "full", 4, 128, {"ckpt": True}),
    ("small-gpt2 seq-cls full bf16-mixed", "small-gpt2", "seq-cls", "full", 4, 64, {"precision": "bf16"}),
    ("small-llama full", "small-llama", "causal-lm", "full", 2, 128, {}),
    ("small-llama lora ckpt", "small-llama", "causal-lm", "lora", 8, 256, {"ckpt": True}),
    ("small-llama qlora", "small-llama", "causal-lm", "qlora", 4, 128, {}),
    ("small-llama seq-cls lora eager", "small-llama", "seq-cls", "lora", 8, 128, {"attention": "eager"}),
]
QUICK = {"minilm lora", "tiny-gpt2 full", "tiny-llama lora ckpt", "small-llama qlora", "minilm lora · sentiment-3",
         "tiny-llama lora · instructions", "minilm lora r8 · sentiment-2"}

# Configs on the bundled samples (ExperimentConfig dicts); defaults: MiniLM, LoRA r=8 on Q+V, sentiment-2,
# batch 32, data.max_length 128 (rows are ~11 tokens: padding to max_length would be 10x too long).
_LM = {"task": "causal-lm", "data": {"train": "sample:instructions"}}
PADDED = [
    ("minilm lora · sentiment-2", {}),
    ("minilm lora · sentiment-3", {"data": {"train": "sample:sentiment-3"}}),
    ("minilm full · sentiment-2", {"method": "full"}),
    ("minilm qlora · sentiment-2", {"method": "qlora", "train": {"batch_size": 16}}),
    ("minilm head-only · sentiment-3", {"method": "head-only", "data": {"train": "sample:sentiment-3"}}),
    ("tiny-llama lora · instructions", {**_LM, "model": {"source": "tiny-random-llama"}, "train": {"batch_size": 16}}),
    ("tiny-gpt2 full · instructions", {**_LM, "method": "full", "model": {"source": "tiny-random-gpt2"},
                                       "train": {"batch_size": 16}}),
    ("tiny-llama qlora ckpt · instructions", {**_LM, "method": "qlora", "model": {"source": "tiny-random-llama"},
                                              "train": {"batch_size": 8, "gradient_checkpointing": True}}),
]
# Real runs: one epoch, so every row (the longest too) is trained on.
RUNS = [
    ("minilm lora r8 · sentiment-2", {"train": {"epochs": 1}}),
    ("minilm lora · sentiment-3", {"data": {"train": "sample:sentiment-3"}, "train": {"epochs": 1}}),
    ("minilm full · sentiment-2", {"method": "full", "train": {"epochs": 1}}),
    ("minilm qlora · sentiment-2", {"method": "qlora", "train": {"epochs": 1, "batch_size": 16}}),
    ("tiny-llama lora · instructions", {**_LM, "model": {"source": "tiny-random-llama"},
                                        "train": {"epochs": 1, "batch_size": 16}}),
]

# Published GPU peaks and the settings those runs used (see /work/shared/notes/memory-formulas.md).
# litgpt tutorials/resource-tables.md: A100, bf16-true, LoRA r=8 on query+value, the longest Alpaca-2k sample
# (1,304 tokens), torch.cuda.max_memory_allocated. torchtune's QLoRA tutorial: Llama-2-7B, LoRA on q,v,output
# and the MLP, r=8, batch 2, activation checkpointing, bf16, peak *reserved*; its sequence length is not stated
# (Alpaca, padded per batch): 512 is assumed. The bitsandbytes of those runs (0.41-0.42) kept the input of every
# 4-bit matmul for backward (MatMul4Bit: ctx.tensors = (A, B)); today's keeps only the packed weight.
LITGPT = {"train.precision": "bf16-true", "lora.dropout": 0.05}  # and torchtune: pure bf16, LoRA dropout 0.05
PUBLISHED = [
    ("litgpt 7B LoRA mb1", "llama-2-7b", "lora", 1, 1304, LITGPT, 21.30e9),
    ("litgpt 7B LoRA mb2", "llama-2-7b", "lora", 2, 1304, LITGPT, 29.07e9),
    ("litgpt 7B NF4", "llama-2-7b", "qlora", 1, 1304,
     {**LITGPT, "quant.double_quant": False, "kbit_prepare": False,
      "bnb_saves_input": True}, 14.14e9),
    ("litgpt 7B NF4-dq", "llama-2-7b", "qlora", 1, 1304,
     {**LITGPT, "kbit_prepare": False, "bnb_saves_input": True}, 13.84e9),
    ("litgpt 13B LoRA", "llama-2-13b", "lora", 1, 1304, LITGPT, 38.12e9),
    ("litgpt 13B NF4", "llama-2-13b", "qlora", 1, 1304,
     {**LITGPT, "quant.double_quant": False, "kbit_prepare": False,
      "bnb_saves_input": True}, 23.14e9),
    ("litgpt 13B NF4-dq", "llama-2-13b", "qlora", 1, 1304,
     {**LITGPT, "kbit_prepare": False, "bnb_saves_input": True}, 22.55e9),
    ("torchtune 7B LoRA (reserved)", "llama-2-7b", "lora", 2, 512,
     {**LITGPT, "train.gradient_checkpointing": True,
      "lora.target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}, 15.57e9),
    ("torchtune 7B QLoRA (reserved)", "llama-2-7b", "qlora", 2, 512,
     {**LITGPT, "train.gradient_checkpointing": True, "kbit_prepare": False,
      "lora.target_modules": ["q_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}, 9.29e9),
]


def build_small_models(root: Path) -> dict[str, str]:
    """Save the SMALL models (random weights, MiniLM's tokenizer) as local model directories."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lora_core import models

    tokenizer_dir = Path(models.resolve_source("tiny-random-gpt2"))
    out = {}
    for name, spec in SMALL.items():
        path = root / name
        spec = dict(spec)
        config = AutoConfig.for_model(spec.pop("model_type"), **spec)
        torch.manual_seed(0)
        AutoModelForCausalLM.from_config(config).save_pretrained(path)
        for f in tokenizer_dir.iterdir():
            if "token" in f.name or f.name.endswith((".txt", ".json")) and f.name != "config.json" \
                    and not f.name.startswith("model"):
                shutil.copy(f, path / f.name)
        out[name] = str(path)
    return out


def experiment(name, source, task, method, batch, seq, extra):
    from lora_core.config import ExperimentConfig

    train = {"batch_size": batch, "gradient_checkpointing": extra.get("ckpt", False),
             "precision": extra.get("precision", "fp32")}
    lora = {k: extra[k] for k in ("r",) if k in extra}
    if "targets" in extra:
        lora["target_modules"] = extra["targets"]
    data = {"max_length": seq, "train": "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"}
    return ExperimentConfig.from_dict({"name": name, "task": task, "method": method, "model": {"source": source},
                                       "train": train, "lora": lora, "data": data})


def load(cfg, extra=None):
    """The model as a run trains it, and the optimizer its Trainer builds."""
    import torch

    from lora_core import models
    from lora_core.memory import engine_optimizer

    extra = extra or {}
    model, tokenizer = models.load_for_training(cfg, num_labels=extra.get("num_labels", 2),
                                                id2label=extra.get("id2label"))
    if extra.get("attention"):
        model.set_attn_implementation(extra["attention"])
    if cfg.train.gradient_checkpointing:  # what TrainingArguments(activation_checkpointing=True) does
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if torch.cuda.is_available() and cfg.method != "qlora":
        model.to("cuda")
    model.train()
    return model, tokenizer, engine_optimizer(model, cfg)  # fused AdamW, as config.OPTIMIZERS says


def measure(model, optimizer, batch, cfg):
    """One warm-up step (the optimizer states appear), then the measured step."""
    import torch

    from lora_core.memory import measure_step_peak

    device = next(model.parameters()).device
    batch = {k: v.to(device) for k, v in batch.items()}
    dtype = torch.bfloat16 if cfg.train.precision == "bf16" else None
    measure_step_peak(model, batch, optimizer, autocast_dtype=dtype)
    return measure_step_peak(model, batch, optimizer, autocast_dtype=dtype), device.type


def random_batch(cfg, seq):
    import torch

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 20000, (cfg.train.batch_size, seq), generator=g)
    labels = ids.clone() if cfg.task == "causal-lm" else torch.randint(0, 2, (cfg.train.batch_size,), generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def largest_batch(cfg, splits, tokenizer):
    """The engine's tokenization and collator; the batch holding the longest row (the run's largest step)."""
    from lora_core import tokens

    train, _ = tokens.tokenize(splits, tokenizer, cfg)
    lengths = [len(ids) for ids in train["input_ids"]]
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    rows = [longest] + [i for i in range(len(lengths)) if i != longest][:cfg.train.batch_size - 1]
    return tokens.make_collator(cfg, tokenizer)([train[i] for i in rows]), lengths


def pct(est, real):
    return 100.0 * (est - real) / real


def stats(values):
    a = [abs(v) for v in values]
    return statistics.median(a), max(a)


def fixed_configs(args, root) -> list:
    from lora_core.memory import estimate, experiment_settings

    paths = build_small_models(root)
    rows = []
    print(f"{'fixed-length batches':<38}{'measured':>11}{'estimate':>11}{'err':>8}{'naive':>8}{'accel':>8}  "
          "peak phase")
    for name, source, task, method, batch, seq, extra in CONFIGS:
        if args.quick and name not in QUICK:
            continue
        cfg = experiment(name, paths.get(source, source), task, method, batch, seq, extra)
        t0 = time.perf_counter()
        model, _, optimizer = load(cfg, extra)
        real, device = measure(model, optimizer, random_batch(cfg, seq), cfg)
        del model, optimizer
        knobs = experiment_settings(cfg, num_labels=2, device=device)
        if extra.get("attention"):
            knobs["attention"] = extra["attention"]
        est = estimate(knobs.pop("model"), knobs.pop("method"), knobs.pop("batch_size"), knobs.pop("seq_len"),
                       **knobs)
        guess = est.allocated_bytes  # live tensors: what both measurements count
        err, naive, accel = pct(guess, real["peak_bytes"]), pct(est.naive_bytes, real["peak_bytes"]), \
            pct(est.accelerate_bytes, real["peak_bytes"])
        rows.append((err, naive, accel))
        print(f"{name:<38}{real['peak_bytes'] / 1e6:>9.2f}MB{guess / 1e6:>9.2f}MB{err:>+7.1f}%{naive:>+7.0f}%"
              f"{accel:>+7.0f}%  {est.phases['peak_phase']} ({time.perf_counter() - t0:.1f}s)", flush=True)
    return rows


def padded_configs(args) -> list:
    from lora_core import data
    from lora_core.config import ExperimentConfig
    from lora_core.memory import estimate_for_experiment

    rows = []
    print(f"\n{'padded batches, bundled samples':<38}{'measured':>11}{'estimate':>11}{'err':>8}  batch (at "
          "data.max_length the estimate would be)")
    for name, spec in PADDED:
        if args.quick and name not in QUICK:
            continue
        cfg = ExperimentConfig.from_dict({"name": name, **spec})
        splits = data.load_splits(cfg)
        labels = splits.num_labels or 2
        model, tokenizer, optimizer = load(cfg, {"num_labels": labels, "id2label": splits.id2label})
        batch, lengths = largest_batch(cfg, splits, tokenizer)
        real, device = measure(model, optimizer, batch, cfg)
        del model, optimizer
        est = estimate_for_experiment(cfg, num_labels=labels, device=device, lengths=lengths)["allocated_bytes"]
        bound = estimate_for_experiment(cfg, num_labels=labels, device=device)["allocated_bytes"]
        err = pct(est, real["peak_bytes"])
        rows.append((err, None, None))
        rows_, tokens = batch["input_ids"].shape
        print(f"{name:<38}{real['peak_bytes'] / 1e6:>9.2f}MB{est / 1e6:>9.2f}MB{err:>+7.1f}%  {rows_} x {tokens} "
              f"tokens, {labels} labels ({bound / 1e6:.1f} MB, {pct(bound, real['peak_bytes']):+.0f}%)", flush=True)
    return rows


RUN = """
import json, sys
from pathlib import Path
from lora_core.config import ExperimentConfig
from lora_core.train import run_experiment
results = run_experiment(ExperimentConfig.from_dict(json.loads(sys.argv[1])), Path(sys.argv[2]))
print("RESULTS " + json.dumps(results, default=str))
"""


def real_run(spec: dict, out_dir: Path) -> dict:
    """A training run in a fresh process (a worker's view of memory): its results dict."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", RUN, json.dumps(spec), str(out_dir)], capture_output=True,
                          text=True, env=env, cwd=ROOT)
    line = next((x for x in reversed(proc.stdout.splitlines()) if x.startswith("RESULTS ")), None)
    if line is None:
        raise RuntimeError(f"the run failed: {proc.stderr.strip().splitlines()[-1:]}")
    return json.loads(line[len("RESULTS "):])


def real_runs(args, root) -> None:
    from lora_core.config import ExperimentConfig
    from lora_core.memory import estimate, experiment_settings

    print("\nreal runs (one epoch, each in its own process). tensor peak = live tensor bytes of the run's "
          "largest steps\n(torch.profiler allocator events: weights, gradients, optimizer states, activations, "
          "temporaries), the\nfigure the estimate models; RSS growth = the process's peak RSS minus its RSS before "
          "loading, which adds\nthe allocator's cached pages, Python objects, tokenizer, datasets and library code.")
    print(f"{'run':<34}{'estimate':>10}{'tensor':>10}{'err':>8}{'RSS':>10}{'err':>7}{'RSS-tensor':>11}"
          f"{'old est.':>10}{'err':>7}")
    errors = {"tensor": [], "rss": [], "old": []}
    for name, spec in RUNS:
        if args.quick and name not in QUICK:
            continue
        cfg = ExperimentConfig.from_dict({"name": name, **spec})
        results = real_run(cfg.to_dict(), root / f"run-{len(errors['rss'])}")
        est = results["memory_estimate"]["allocated_bytes"]
        tensor, rss = results["peak_tensor_bytes"], results["peak_mem_bytes"]
        # what a run recorded before: data.max_length tokens, 2 labels, a for-loop AdamW
        knobs = experiment_settings(cfg, num_labels=2, device="cpu")
        old_bytes = estimate(knobs.pop("model"), knobs.pop("method"), knobs.pop("batch_size"), knobs.pop("seq_len"),
                             **{**knobs, "adamw_impl": "for-loop"}).allocated_bytes
        errors["tensor"].append(pct(est, tensor))
        errors["rss"].append(pct(est, rss))
        errors["old"].append(pct(old_bytes, tensor))
        print(f"{name:<34}{est / 1e6:>8.1f}MB{tensor / 1e6:>8.1f}MB{errors['tensor'][-1]:>+7.1f}%{rss / 1e6:>8.1f}MB"
              f"{errors['rss'][-1]:>+6.0f}%{(rss - tensor) / 1e6:>9.1f}MB{old_bytes / 1e6:>8.1f}MB"
              f"{errors['old'][-1]:>+6.0f}%", flush=True)
        print(f"    {results['memory_estimate']['batch']['why']}; {results['peak_tensor_method']}")
    for label, key in (("recorded estimate vs tensor peak", "tensor"), ("recorded estimate vs RSS growth", "rss"),
                       ("old estimate vs tensor peak", "old")):
        med, worst = stats(errors[key])
        print(f"{label}: median |error| {med:.1f}%, worst {worst:.1f}%")


def profiler_overhead(steps: int = 6) -> None:
    """Plain and profiled training steps of the default config, alternating: what the run's meter costs."""
    import torch

    from lora_core import data
    from lora_core.config import ExperimentConfig
    from lora_core.memory import memory_profiler, replay_allocations

    cfg = ExperimentConfig.from_dict({})
    splits = data.load_splits(cfg)
    model, tokenizer, optimizer = load(cfg)
    batch, _ = largest_batch(cfg, splits, tokenizer)

    def step():
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()
    plain, profiled = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with memory_profiler() as prof:
            step()
        replay_allocations(prof.profiler.kineto_results.events())
        profiled.append(time.perf_counter() - t0)
    a, b = statistics.median(plain), statistics.median(profiled)
    print(f"\ntensor-peak profiling: a profiled step {b * 1000:.0f} ms vs {a * 1000:.0f} ms plain (median of {steps} "
          f"each, alternating; {100 * (b / a - 1):+.0f}%); a run profiles only the steps whose batch is the largest "
          "so far (a handful per run)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only a few configs (a smoke run)")
    ap.add_argument("--no-runs", action="store_true", help="skip the real training runs (section 4)")
    args = ap.parse_args()
    import warnings

    import torch
    from transformers.utils import logging as hf_logging

    from lora_core.memory import estimate

    warnings.filterwarnings("ignore")
    hf_logging.disable_progress_bar()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    root = Path(tempfile.mkdtemp(prefix="lora-lab-bench-"))
    try:
        rows = fixed_configs(args, root)
        fixed = len(rows)
        rows += padded_configs(args)
        print()
        for label, index in (("tutorial rule (weights x 6)", 1), ("accelerate estimate-memory style", 2)):
            med, worst = stats([r[index] for r in rows[:fixed]])
            print(f"{label}: median |error| {med:.1f}%, worst {worst:.1f}% (fixed-length batches)")

        print("\npublished GPU peaks (different code bases and undocumented details: a wider tolerance applies)")
        for name, model, method, batch, seq, knobs, published in PUBLISHED:
            est = estimate(model, method, batch, seq, device="cuda", **knobs)
            ours = est.peak_bytes - est.terms["cuda_context"] if "reserved" in name else est.allocated_bytes
            print(f"  {name:<32} published {published / 1e9:6.2f} GB  estimate {ours / 1e9:6.2f} GB  "
                  f"{pct(ours, published):+6.1f}%   naive {est.naive_bytes / 1e9:6.2f} GB")
        if not args.no_runs:
            real_runs(args, root)
            profiler_overhead(3 if args.quick else 6)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    med, worst = stats([r[0] for r in rows])
    print(f"\nmedian_abs_error={med:.1f}% max_abs_error={worst:.1f}% ({len(rows)} measured steps: fixed-length "
          "and padded)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
