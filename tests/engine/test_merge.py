"""Merging a trained adapter gives a plain model with the same outputs and no LoRA parameters."""
import json

import pytest
import torch

from helpers import cli, train_by_hand
from lora_core import merge, models
from lora_core.config import ExperimentConfig
from lora_core.errors import ModelError


def make_cfg(task, source, method="lora", **lora):
    data = "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"
    return ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source},
                                       "data": {"train": data}, "lora": lora,
                                       "quant": {"compute_dtype": "float32"}})


def train_adapter(cfg, artifacts, steps=4):
    """A few real optimizer steps by hand, then save the adapter the way the recipe does."""
    id2label = {0: "neg", 1: "neu", 2: "pos"} if cfg.task == "seq-cls" else None
    model, _ = train_by_hand(cfg, ["a good film", "bad, very bad", "it was fine i guess"], [2, 0, 1], steps=steps,
                             id2label=id2label)
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


def test_merge_replaces_an_output_only_when_asked_and_only_once_merged(tmp_path, monkeypatch):
    cfg = make_cfg("seq-cls", "tiny-random-gpt2")
    train_adapter(cfg, tmp_path, steps=1)
    out = tmp_path / "merged"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier merge")
    with pytest.raises(ModelError, match="not empty"):
        merge.merge_adapter(cfg, tmp_path / "adapter", out)

    def broken(*args, **kwargs):
        raise OSError("disk full")

    with monkeypatch.context() as m:  # a merge that fails half way leaves the earlier output as it was
        m.setattr(merge, "_merge_into", broken)
        with pytest.raises(OSError, match="disk full"):
            merge.merge_adapter(cfg, tmp_path / "adapter", out, overwrite=True)
    assert (out / "keep.txt").read_text() == "an earlier merge"

    report = merge.merge_adapter(cfg, tmp_path / "adapter", out, overwrite=True)
    assert report["ok"] and report["out_dir"] == str(out)
    assert not (out / "keep.txt").exists() and (out / "config.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["adapter", "label_map.json", "merged"]  # no staging left


def test_cli_merge_a_run(runs, runs_dir, tmp_path):
    cfg = make_cfg("seq-cls", "tiny-random-gpt2", target_modules="preset:attention")
    record = runs.create(cfg)
    train_adapter(cfg, runs.dir(record.id).artifacts.path, steps=2)
    out = cli("merge", record.id, "--out", str(tmp_path / "merged"), "--json", "--runs-dir", str(runs_dir),
              timeout=180)
    report = json.loads(out.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["lora_params_left"] == 0
    assert report["merged_class"] == "GPT2ForSequenceClassification"
    again = cli("merge", record.id, "--out", str(tmp_path / "merged"), "--runs-dir", str(runs_dir), check=False,
                timeout=180)
    assert again.returncode == 2 and "not empty" in again.stderr.splitlines()[-1]
    # without --out the merged model goes into the run's own artifacts (where the dashboard looks for it)
    default = json.loads(cli("merge", record.id, "--json", "--runs-dir", str(runs_dir), timeout=180).stdout
                         .strip().splitlines()[-1])
    assert default["out_dir"] == str(runs_dir / record.id / "artifacts" / "merged") and default["ok"]
