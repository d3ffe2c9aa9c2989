"""A short real training run on a CUDA GPU for each config below: the estimator's figure beside
torch.cuda.max_memory_allocated, tokens/s, and for QLoRA the GPU memory the base model takes loaded in 4-bit
against loaded in full precision. Measured and printed; nothing is asserted.

    .venv/bin/python bench/gpu_check.py [--steps 5]

Without CUDA it prints one line saying it skipped and exits 0 (this machine and CI have no GPU).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SEQ = {"task": "seq-cls", "model": {"source": "minilm"}, "data": {"train": "sample:sentiment-2", "max_length": 64}}
LLAMA = {"task": "causal-lm", "model": {"source": "tiny-random-llama"},
         "data": {"train": "sample:instructions", "max_length": 128}}
# label -> (base, overrides as dotted keys)
CONFIGS = {
    "MiniLM full": (SEQ, {"method": "full"}),
    "MiniLM LoRA r=8": (SEQ, {"method": "lora", "lora.r": 8}),
    "MiniLM LoRA r=8, gradient checkpointing": (SEQ, {"method": "lora", "lora.r": 8,
                                                      "train.gradient_checkpointing": True}),
    "tiny Llama LoRA bf16": (LLAMA, {"method": "lora", "train.precision": "bf16"}),
    "tiny Llama LoRA bf16, gradient checkpointing": (LLAMA, {"method": "lora", "train.precision": "bf16",
                                                            "train.gradient_checkpointing": True}),
    "tiny Llama QLoRA nf4, double quant": (LLAMA, {"method": "qlora", "quant.double_quant": True}),
    "tiny Llama QLoRA nf4, no double quant": (LLAMA, {"method": "qlora", "quant.double_quant": False}),
}


def config(base: dict, dotted: dict, steps: int):
    from lora_core.config import ExperimentConfig

    cfg = ExperimentConfig.from_dict({
        **base, "name": "gpu-check", "method": "lora",
        "data": {**base["data"], "max_train_samples": 256, "max_eval_samples": 32},
        "train": {"max_steps": steps, "batch_size": 16, "logging_steps": 1, "checkpoints": False},
        "generate": {"prompts": []},
    })
    return cfg.replace(**dotted)


def load_memory(cfg) -> tuple[int, int]:
    """GPU bytes allocated by the base model loaded as the run loads it (4-bit), and in full precision."""
    import gc

    import torch

    from lora_core import models

    measured = []
    for c in (cfg, cfg.replace(method="lora")):
        torch.cuda.empty_cache()
        before = torch.cuda.memory_allocated()
        model, _ = models.load_for_training(c, 2, None)
        measured.append(torch.cuda.memory_allocated() - before)
        del model
        gc.collect()
    return measured[0], measured[1]


def check(label: str, cfg) -> None:
    import torch

    from lora_core.train import run_experiment

    events: list[dict] = []
    torch.cuda.reset_peak_memory_stats()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as out:
        res = run_experiment(cfg, Path(out), on_event=events.append)
    est = res.get("memory_estimate") or {}
    tps = [e["tokens_per_s"] for e in events if e.get("kind") == "log" and e.get("tokens_per_s")]
    measured = torch.cuda.max_memory_allocated()
    line = (f"{label:<46} estimate {est.get('allocated_bytes', 0) / 2**20:9.1f} MiB allocated "
            f"({est.get('peak_bytes', 0) / 2**20:.1f} peak)  measured max_memory_allocated {measured / 2**20:9.1f} MiB"
            f"  tokens/s {sorted(tps)[len(tps) // 2] if tps else float('nan'):9.0f}  {res['precision']}")
    if cfg.method == "qlora":
        four_bit, full = load_memory(cfg)
        line += f"  base model loaded: 4-bit {four_bit / 2**20:.1f} MiB vs full {full / 2**20:.1f} MiB"
    print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=5, help="optimizer steps per config")
    args = p.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("SKIP: bench/gpu_check.py needs a CUDA GPU; torch sees none here, nothing measured.")
        return 0
    print(f"{torch.cuda.get_device_name()}: {args.steps} steps per config, batch 16", flush=True)
    for label, (base, dotted) in CONFIGS.items():
        try:
            check(label, config(base, dotted, args.steps))
        except Exception as exc:  # one config failing must not hide the others' figures
            print(f"{label:<46} FAILED: {type(exc).__name__}: {exc}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
