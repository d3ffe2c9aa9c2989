"""Model structures: described once on the meta device, kept in the model cache, and counted as arithmetic that
equals PEFT's own count for every method and LoRA setting; a second process needs no torch for a seen model."""
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lora_core import models, structure
from lora_core.config import ExperimentConfig
from lora_core.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]


def cfg_for(source, task="seq-cls", method="lora", **lora):
    data = "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"
    return ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source},
                                       "data": {"train": data}, "lora": lora})


def peft_counts(cfg, num_labels):
    """The reference: PEFT itself on the task model built on the meta device."""
    model = models.meta_model(cfg.model.source, cfg.task, num_labels)
    return models.summarize_params(cfg, models.apply_method(cfg, model, quantized=False))


@pytest.fixture(scope="module")
def small_sources(tmp_path_factory):
    """Local model directories of families the bundled models do not cover."""
    from transformers import DistilBertConfig, OPTConfig, RobertaConfig

    root = tmp_path_factory.mktemp("configs")
    out = {}
    for name, config in (
            ("distilbert", DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=1, n_heads=2)),
            ("opt", OPTConfig(vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                              num_attention_heads=2, word_embed_proj_dim=32)),
            ("roberta", RobertaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                      num_attention_heads=2))):  # a head with inner layers (dense, out_proj)
        config.save_pretrained(root / name)
        out[name] = str(root / name)
    return out


LORA_SETTINGS = [dict(target_modules=t, bias=b, use_dora=d, use_rslora=d, r=3)
                 for t, b, d in itertools.product([None, "all-linear", "preset:attention"],
                                                  ["none", "all", "lora_only"], [False, True])]


@pytest.mark.parametrize("source, task", [("minilm", "seq-cls"), ("tiny-random-gpt2", "causal-lm"),
                                          ("tiny-random-gpt2", "seq-cls"), ("tiny-random-llama", "causal-lm"),
                                          ("distilbert", "seq-cls"), ("opt", "causal-lm"), ("roberta", "seq-cls")])
def test_arithmetic_counts_equal_peft_for_every_setting(source, task, small_sources):
    source = small_sources.get(source, source)
    head = models.model_structure(source, task, 3).heads[-1]
    cases = [("full", {}), ("head-only", {})] if task == "seq-cls" else [("full", {})]
    for lora in LORA_SETTINGS:
        cases += [("lora", lora), ("qlora", {**lora, "modules_to_save": [head]})]
    for method, lora in cases:
        cfg = cfg_for(source, task, method, **lora)
        got, want = models.count_params(cfg, num_labels=3), peft_counts(cfg, 3)
        assert got == want, (method, lora)


def test_a_target_that_is_not_a_layer_fails_like_peft():
    with pytest.raises(ModelError, match="lora.target_modules"):
        models.count_params(cfg_for("minilm", target_modules=["query", "q_proj"]))


def test_described_once_then_read_from_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_SEEN", {})  # what this process has already seen
    config = models.config_json("minilm")
    first = models.config_structure(config, "seq-cls", 3)
    files = list((tmp_path / "structures").glob("*.json"))
    assert len(files) == 1 and structure.read_cached(files[0]) == first
    monkeypatch.setattr(models, "_SEEN", {})
    monkeypatch.setattr(models, "_meta_task_model", lambda *a: pytest.fail("built again instead of read"))
    assert models.config_structure(config, "seq-cls", 3) == first
    # another label count or task is another model
    monkeypatch.undo()
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_SEEN", {})
    models.config_structure(config, "seq-cls", 2)
    assert len(list((tmp_path / "structures").glob("*.json"))) == 2


def test_a_broken_cache_file_is_rebuilt(tmp_path, monkeypatch):
    monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path))
    monkeypatch.setattr(models, "_SEEN", {})
    config = models.config_json("minilm")
    good = models.config_structure(config, "seq-cls", 2)
    (path,) = (tmp_path / "structures").glob("*.json")
    path.write_text('{"model_type": "bert", "trunc')
    monkeypatch.setattr(models, "_SEEN", {})
    assert models.config_structure(config, "seq-cls", 2) == good
    assert structure.read_cached(path) == good


SECOND_PROCESS = """
import json, sys
from lora_core.config import ExperimentConfig
from lora_core.memory import estimate, estimate_for_experiment
from lora_core.models import count_params, list_targets, target_presets

out = {"targets": len(list_targets("minilm")), "presets": target_presets("minilm"), "counts": {}}
for method, lora in json.loads(sys.argv[1]):
    cfg = ExperimentConfig.from_dict({"method": method, "lora": lora})
    out["counts"][method + json.dumps(lora)] = count_params(cfg, num_labels=3)
cfg = ExperimentConfig.from_dict({"lora": {"r": 32, "target_modules": "all-linear"}})
out["estimate"] = estimate_for_experiment(cfg, num_labels=3, lengths=[5, 17, 9])["allocated_bytes"]
out["preset_estimate"] = estimate("llama-2-7b", "qlora", 1, 512).peak_bytes
out["heavy"] = sorted(m for m in ("torch", "transformers", "peft", "bitsandbytes", "datasets") if m in sys.modules)
print(json.dumps(out))
"""
SETTINGS = [("lora", {}), ("lora", {"r": 64, "use_rslora": True}), ("lora", {"use_dora": True, "bias": "all"}),
            ("lora", {"target_modules": "all-linear", "bias": "lora_only"}),
            ("lora", {"modules_to_save": ["pooler"]}), ("qlora", {"target_modules": "preset:attention"}),
            ("head-only", {}), ("full", {})]


def test_a_second_process_needs_no_torch_for_a_seen_model(tmp_path):
    from lora_core.memory import estimate, estimate_for_experiment

    env = {**os.environ, "LORA_LAB_CACHE": str(tmp_path), "PYTHONPATH": str(ROOT)}
    first = subprocess.run([sys.executable, "-c", SECOND_PROCESS, json.dumps(SETTINGS)], env=env, cwd=ROOT,
                           capture_output=True, text=True, check=True)
    assert "torch" in json.loads(first.stdout)["heavy"]  # the first time, the model is built on the meta device
    second = subprocess.run([sys.executable, "-c", SECOND_PROCESS, json.dumps(SETTINGS)], env=env, cwd=ROOT,
                            capture_output=True, text=True, check=True)
    out = json.loads(second.stdout)
    assert out["heavy"] == []
    for method, lora in SETTINGS:  # and it says what PEFT says
        assert out["counts"][method + json.dumps(lora)] == peft_counts(ExperimentConfig.from_dict(
            {"method": method, "lora": lora}), 3), (method, lora)
    cfg = ExperimentConfig.from_dict({"lora": {"r": 32, "target_modules": "all-linear"}})
    assert out["estimate"] == estimate_for_experiment(cfg, num_labels=3, lengths=[5, 17, 9])["allocated_bytes"]
    assert out["preset_estimate"] == estimate("llama-2-7b", "qlora", 1, 512).peak_bytes


def test_one_table_of_model_families():
    for model_type in ("olmo", "olmo2", "smollm3", "starcoder2", "gpt2", "llama"):
        assert structure.default_task({"model_type": model_type}) == "causal-lm"
    assert structure.default_task({"model_type": "bert"}) == "seq-cls"
    assert structure.default_task({"model_type": "newarch", "architectures": ["NewArchForCausalLM"]}) == "causal-lm"
    assert [structure.family(t) for t in ("olmo", "olmo2", "smollm3", "starcoder2")] == ["llama", "llama", "llama",
                                                                                         None]


def test_presets_fall_back_to_the_layers_when_the_family_renamed_them():
    """phi3 is Llama-like but fuses q/k/v into qkv_proj: the llama presets would name layers it does not have."""
    def layer(name):
        return {"name": name, "leaf": name.split(".")[-1], "head": False}

    layers = [layer(f"model.layers.0.self_attn.{n}") for n in ("qkv_proj", "o_proj")] + \
        [layer(f"model.layers.0.mlp.{n}") for n in ("gate_up_proj", "down_proj")]
    presets = structure.presets_for(layers, "phi3")
    assert presets["attention"] == ["qkv_proj", "o_proj"]
    assert presets["all-linear"] == ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
