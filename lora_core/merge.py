"""Merge a LoRA adapter into its base model and prove the merged model is the same function.

merge_adapter: load the base in fp32 → attach the adapter → record logits on fixed inputs → merge_and_unload →
save a plain model + tokenizer → reload it with the plain AutoModelFor… class → check it has no LoRA
parameters and the same logits (max abs difference < 1e-4 in fp32). The model is written to a staging folder
beside the output and moved into place at the end, so an existing output (replaced only with overwrite=True)
survives a merge that fails.

QLoRA adapters were trained against a 4-bit base, but 4-bit weights cannot absorb a LoRA update, so the base is
reloaded in fp32 and merged there; the report's `note` says so and `quantization_gap` gives how far the merged
model is from the 4-bit adapter model it came from.
"""
from __future__ import annotations

import json
import secrets
import shutil
from pathlib import Path

from safetensors import safe_open

from . import models
from .config import ExperimentConfig
from .errors import ModelError
from .paths import dir_bytes
from .runs.files import replace_dir
from .runs.layout import ADAPTER_CONFIG, Artifacts, adapter_config, adapter_weights

# Fixed inputs for the equivalence check: different lengths so padding is exercised too.
CHECK_TEXTS = ["a wonderful, moving film", "the worst thing i have ever seen.", "it was fine", "ok"]
TOLERANCE = 1e-4


def read_label_map(artifacts_dir: Path) -> dict[int, str] | None:
    """id -> label from the run's label map ({name: id}, {id: name} or {"id2label": {...}}), if any."""
    path = Artifacts(artifacts_dir).label_map
    if not path.is_file():
        return None
    data = json.loads(path.read_text(encoding="utf-8"))
    if isinstance(data, dict) and isinstance(data.get("id2label"), dict):
        data = data["id2label"]
    if not isinstance(data, dict) or not data:
        return None
    if all(isinstance(v, int) for v in data.values()):  # {name: id}
        return {int(v): str(k) for k, v in data.items()}
    return {int(k): str(v) for k, v in data.items()}


def adapter_num_labels(adapter_dir: Path) -> int | None:
    """The class count of a seq-cls adapter, read off its saved classifier weight (last head layer)."""
    path = adapter_weights(adapter_dir)
    if not path.is_file():
        return None
    with safe_open(str(path), "pt") as f:
        heads = [k for k in f.keys() if k.endswith(("classifier.weight", "score.weight", "out_proj.weight"))
                 and "lora_" not in k]
        return f.get_slice(heads[-1]).get_shape()[0] if heads else None


def check_adapter_dir(adapter_dir: Path) -> Path:
    adapter_dir = Path(adapter_dir)
    if not adapter_config(adapter_dir).is_file():
        what = "does not exist" if not adapter_dir.exists() else f"has no {ADAPTER_CONFIG}"
        raise ModelError(f"adapter directory {adapter_dir} {what}; merging needs a LoRA/QLoRA run's saved adapter")
    return adapter_dir


def load_adapter_model(cfg: ExperimentConfig, adapter_dir: Path, quant=None):
    """(PeftModel in eval mode, tokenizer): the base (fp32, or 4-bit with `quant`) with the adapter attached."""
    from peft import PeftModel

    adapter_dir = check_adapter_dir(adapter_dir)
    id2label = read_label_map(adapter_dir.parent) if cfg.task == "seq-cls" else None
    num_labels = adapter_num_labels(adapter_dir) or (len(id2label) if id2label else 2)
    if id2label and len(id2label) != num_labels:
        id2label = None  # a label map that disagrees with the trained head: trust the weights
    base, tok = models.load_base(cfg, num_labels=num_labels, id2label=id2label, quant=quant)
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    return model.eval(), tok


def check_logits(model, tokenizer, texts=CHECK_TEXTS):
    import torch

    enc = tokenizer(list(texts), return_tensors="pt", padding=True)
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        logits = model(**enc).logits.float()
    mask = enc["attention_mask"].bool()
    # causal-lm: compare real token positions only (logits at padding are not used by anyone)
    return logits[mask] if logits.dim() == 3 else logits


def merge_adapter(cfg: ExperimentConfig, adapter_dir: Path, out_dir: Path, *, overwrite: bool = False) -> dict:
    """Merge, save into `out_dir`, reload as a plain model and verify. A non-empty `out_dir` is refused unless
    `overwrite`, and is only replaced once the new model is saved. Returns {out_dir, max_abs_diff,
    lora_params_left, merged_bytes, adapter_bytes, note, ok, ...}."""
    if not cfg.uses_lora:
        raise ModelError(f"method: only lora/qlora runs have an adapter to merge (this run is {cfg.method}; "
                         "its saved model is already plain)")
    adapter_dir = check_adapter_dir(adapter_dir)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ModelError(f"--out: {out_dir} is a file; give a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise ModelError(f"--out: {out_dir} exists and is not empty; choose a new directory (or overwrite it)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.merging-{secrets.token_hex(3)}")
    try:
        report = _merge_into(cfg, adapter_dir, staging)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report["out_dir"] = str(out_dir)
    return report


def _merge_into(cfg: ExperimentConfig, adapter_dir: Path, out_dir: Path) -> dict:
    import torch

    model, tok = load_adapter_model(cfg, adapter_dir)
    expected = check_logits(model, tok)
    merged = model.merge_and_unload()
    merged.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    del model, merged

    plain = models._auto_class(cfg.task).from_pretrained(out_dir, dtype=torch.float32,
                                                         trust_remote_code=cfg.model.trust_remote_code).eval()
    lora_left = [n for n, _ in plain.named_parameters() if "lora_" in n]
    max_diff = float((check_logits(plain, tok) - expected).abs().max())
    report = {
        "max_abs_diff": max_diff,
        "tolerance": TOLERANCE,
        "lora_params_left": len(lora_left),
        "merged_class": type(plain).__name__,
        "merged_bytes": dir_bytes(out_dir, "*.safetensors"),
        "adapter_bytes": dir_bytes(adapter_dir, adapter_weights(adapter_dir).name),
        "note": "merged into the fp32 base",
    }
    if cfg.method == "qlora":
        qmodel, _ = load_adapter_model(cfg, adapter_dir, quant=cfg.quant)
        report["quantization_gap"] = float((check_logits(plain, tok) - check_logits(qmodel, tok)).abs().max())
        report["note"] = ("QLoRA: 4-bit weights cannot absorb the LoRA update, so the base was reloaded in fp32 and "
                          "the adapter merged there; max_abs_diff compares with the adapter on that fp32 base, "
                          "quantization_gap with the 4-bit adapter model used in training")
    report["ok"] = max_diff < TOLERANCE and not lora_left
    return report

