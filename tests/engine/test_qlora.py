"""The QLoRA loader on CPU (bitsandbytes 0.50): real 4-bit layers, measured memory, LoRA on top, perplexity."""
import math

import pytest

from lora_core import models, qlora
from lora_core.config import ConfigError, ExperimentConfig
from lora_core.errors import ModelError


@pytest.fixture(scope="module")
def minilm_4bit():
    return qlora.load_quantized("minilm", quant_type="nf4", double_quant=True, compute_dtype="float32")


def test_4bit_minilm_takes_fewer_bytes_than_fp32(minilm_4bit):
    before, after = minilm_4bit.before, minilm_4bit.after
    assert before["exact_bytes"] == before["footprint_bytes"] > 0 and before["quant_state_bytes"] == 0
    # every encoder Linear is 4-bit; the 47 MB word embedding stays fp32, so about 40% is saved
    assert after["exact_bytes"] < 0.7 * before["exact_bytes"]
    assert after["quant_state_bytes"] > 0
    assert after["exact_bytes"] == after["weights_bytes"] + after["quant_state_bytes"]
    kinds = qlora.layer_type_counts(minilm_4bit.layers)
    assert kinds["Linear4bit"] == 37 and kinds["Linear"] == 1  # the classifier is kept in full precision


def test_layer_table_rows(minilm_4bit):
    rows = {r["name"]: r for r in minilm_4bit.layers}
    q = rows["bert.encoder.layer.0.attention.self.query"]
    assert q["class"] == "Linear4bit" and q["quantized"] and q["dtype"] == "uint8" and q["shape"] == "384x384"
    packed = 384 * 384 // 2 + 384 * 4  # two 4-bit values per byte, plus the fp32 bias
    assert packed < q["bytes"] < packed + 4096  # plus the block constants
    assert rows["classifier"]["dtype"] == "float32" and not rows["classifier"]["quantized"]
    # adaptable-layer discovery sees the 4-bit layers with their logical shapes
    found = {t["name"]: t for t in models.adaptable_layers(minilm_4bit.model)}
    ffn = found["bert.encoder.layer.0.intermediate.dense"]
    assert (ffn["type"], ffn["in_features"], ffn["out_features"]) == ("Linear4bit", 384, 1536)


def test_double_quant_shrinks_the_quantization_constants():
    single = qlora.load_quantized("minilm", double_quant=False, compute_dtype="float32", measure_before=False)
    assert single.before is None and single.saving is None
    double = qlora.load_quantized("minilm", double_quant=True, compute_dtype="float32", measure_before=False)
    assert double.after["quant_state_bytes"] < 0.5 * single.after["quant_state_bytes"]
    assert double.after["weights_bytes"] == single.after["weights_bytes"]


def test_attach_lora_to_the_4bit_model_and_train_a_step():
    import torch

    loaded = qlora.load_quantized("tiny-random-llama", compute_dtype="float32", measure_before=False)
    assert (loaded.config.method, loaded.config.task, loaded.config.data.train) == \
        ("qlora", "causal-lm", "sample:instructions")  # the experiment this load starts, on the bundled sample
    with pytest.raises(ConfigError, match="lora.r"):  # LoRA settings are checked like any config, by name
        qlora.attach_lora(loaded, {"r": 0})
    with pytest.raises(ConfigError, match="lora.rank"):
        qlora.attach_lora(loaded, {"rank": 4})
    info = qlora.attach_lora(loaded, {"r": 4, "target_modules": "preset:attention"})
    assert info["adapted_4bit_layers"] == 2 * 4 and info["targets"]
    assert (loaded.config.lora.r, loaded.config.lora.target_modules) == (4, "preset:attention")
    cfg = ExperimentConfig.from_dict({"task": "causal-lm", "method": "qlora", "model": {"source": "tiny-random-llama"},
                                      "data": {"train": "sample:instructions"},
                                      "lora": {"r": 4, "target_modules": "preset:attention"}})
    assert info["trainable"] == models.count_params(cfg)["trainable"]
    with pytest.raises(ModelError, match="already attached"):
        qlora.attach_lora(loaded)

    model, tok = loaded.model, loaded.tokenizer
    ids = tok("the cat sat on the mat", return_tensors="pt")["input_ids"]
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_compare_perplexity_4bit_vs_fp32():
    out = qlora.compare_perplexity("tiny-random-gpt2", ["a short text about films", "another one here"],
                                   quant_type="fp4", compute_dtype="float32")
    fp32, q4 = out["fp32"]["perplexity"], out["4bit"]["perplexity"]
    assert math.isfinite(fp32) and math.isfinite(q4) and fp32 != q4  # quantization really changed the weights
    assert 0.8 < out["ratio"] < 1.25 and out["fp32"]["tokens"] == out["4bit"]["tokens"] > 4


def test_perplexity_refuses_an_encoder():
    with pytest.raises(ModelError, match="causal LM"):
        qlora.compare_perplexity("minilm")


def test_quant_settings_are_validated():
    with pytest.raises(ConfigError, match="quant.quant_type"):
        qlora.quant_settings("int3")
