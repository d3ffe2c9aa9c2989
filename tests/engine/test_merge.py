"""Merging a trained adapter gives a plain model with the same outputs and no LoRA parameters."""
import json

import pytest
import torch

from lora_core import merge, models
from lora_core.config import ExperimentConfig
from lora_core.models import ModelError


def make_cfg(task, source, method="lora", **lora):
    data = "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"
    return ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source},
                                       "data": {"train": data}, "lora": lora,
                                       "quant": {"compute_dtype": "float32"}})


def train_adapter(cfg, artifacts, num_labels=3, steps=4):
    """A few real optimizer steps by hand, then save the adapter the way the recipe does."""
    torch.manual_seed(0)
    id2label = {0: "neg", 1: "neu", 2: "pos"} if cfg.task == "seq-cls" else None
    model, tok = models.load_for_training(cfg, num_labels=num_labels, id2label=id2label)
    enc = tok(["a good film", "bad, very bad", "it was fine i guess"], return_tensors="pt", padding=True)
    batch = {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}
    batch["labels"] = torch.tensor([2, 0, 1]) if cfg.task == "seq-cls" else enc["input_ids"].masked_fill(
        enc["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    model.train()
    for _ in range(steps):
        model(**batch).loss.backward()
        opt.step()
        opt.zero_grad()
    lora_b = [p for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and any(p.abs().max() > 0 for p in lora_b)  # the update is non-zero, so merging matters
    model.save_pretrained(artifacts / "adapter")
    if id2label:
        (artifacts / "label_map.json").write_text(json.dumps({v: k for k, v in id2label.items()}))
    return model


def test_merge_seq_cls_keeps_the_trained_head(tmp_path):
    cfg = make_cfg("seq-cls", "minilm", target_modules="preset:attention", use_rslora=True)
    trained = train_adapter(cfg, tmp_path)
    head = trained.base_model.model.classifier.modules_to_save["default"].weight.detach().clone()

    report = merge.merge_adapter(cfg, tmp_path / "adapter", tmp_path / "merged")
    assert report["ok"] and report["max_abs_diff"] < 1e-4 and report["lora_params_left"] == 0
    assert report["merged_bytes"] > 50 * report["adapter_bytes"] > 0

    from transformers import AutoModelForSequenceClassification

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert not any("lora_" in n for n, _ in plain.named_parameters())
    assert torch.equal(plain.classifier.weight, head)  # the head trained through modules_to_save survived
    assert plain.config.id2label == {0: "neg", 1: "neu", 2: "pos"}
    # the merged weights really changed: the plain base gives different logits
    base, tok = models.load_base(cfg, num_labels=3)
    assert not torch.allclose(merge.check_logits(base.eval(), tok), merge.check_logits(plain.eval(), tok))


def test_merge_causal_lm_with_dora(tmp_path):
    cfg = make_cfg("causal-lm", "tiny-random-llama", target_modules="all-linear", use_dora=True, bias="lora_only")
    train_adapter(cfg, tmp_path)
    report = merge.merge_adapter(cfg, tmp_path / "adapter", tmp_path / "merged")
    assert report["ok"], report
    assert report["merged_class"] == "LlamaForCausalLM"


def test_merge_qlora_reloads_the_base_in_full_precision(tmp_path):
    cfg = make_cfg("causal-lm", "tiny-random-gpt2", method="qlora")
    train_adapter(cfg, tmp_path)
    report = merge.merge_adapter(cfg, tmp_path / "adapter", tmp_path / "merged")
    assert report["ok"] and "fp32" in report["note"] and "QLoRA" in report["note"]
    assert 0 < report["quantization_gap"]  # 4-bit and fp32 bases really differ
    from transformers import AutoModelForCausalLM

    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert {p.dtype for p in plain.parameters()} == {torch.float32}


def test_merge_refuses_bad_input(tmp_path):
    cfg = make_cfg("seq-cls", "minilm")
    with pytest.raises(ModelError, match="does not exist"):
        merge.merge_adapter(cfg, tmp_path / "nope", tmp_path / "out")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError, match="no adapter_config.json"):
        merge.merge_adapter(cfg, tmp_path / "empty", tmp_path / "out")
    with pytest.raises(ModelError, match="only lora/qlora"):
        merge.merge_adapter(cfg.replace(method="full"), tmp_path / "empty", tmp_path / "out")


def test_cli_merge_a_run(runs_dir, tmp_path):
    import os
    import subprocess
    import sys
    from pathlib import Path

    from lora_core import storage

    cfg = make_cfg("seq-cls", "tiny-random-gpt2", target_modules="preset:attention")
    record = storage.create_run(cfg, runs_dir=runs_dir)
    train_adapter(cfg, storage.artifacts_dir(record.id, runs_dir=runs_dir), num_labels=2, steps=2)
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-m", "lora_core", "merge", record.id, "--out", str(tmp_path / "merged"),
                          "--json"], capture_output=True, text=True, cwd=root, timeout=180,
                         env={**os.environ, "PYTHONPATH": str(root)})
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["lora_params_left"] == 0
    assert report["merged_class"] == "GPT2ForSequenceClassification"
    again = subprocess.run([sys.executable, "-m", "lora_core", "merge", record.id, "--out", str(tmp_path / "merged")],
                           capture_output=True, text=True, cwd=root, timeout=180,
                           env={**os.environ, "PYTHONPATH": str(root)})
    assert again.returncode == 2 and "not empty" in again.stderr.splitlines()[-1]
