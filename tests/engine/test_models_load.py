"""Loading models for each method: the meta-device counts equal PEFT's after a real load, QLoRA really
quantizes (on CPU), tiny models are reproducible, generation is deterministic."""
import json
import os
import subprocess
import sys

import pytest

from helpers import ROOT, cli
from lora_core import models
from lora_core.config import ExperimentConfig

SEQ = {"task": "seq-cls", "data": {"train": "sample:sentiment-2"}}
LM = {"task": "causal-lm", "data": {"train": "sample:instructions"}}


def make_cfg(base, source, method, **lora):
    return ExperimentConfig.from_dict({**base, "model": {"source": source}, "method": method,
                                       "lora": lora, "quant": {"compute_dtype": "float32"}})


CASES = [
    (SEQ, "minilm", "full", {}),
    (SEQ, "minilm", "lora", {}),
    (SEQ, "minilm", "lora", {"use_rslora": True, "bias": "all", "target_modules": "preset:attention"}),
    (SEQ, "minilm", "lora", {"use_dora": True, "r": 4}),
    (SEQ, "minilm", "lora", {"bias": "lora_only", "target_modules": "all-linear"}),
    (SEQ, "minilm", "qlora", {}),
    (SEQ, "minilm", "head-only", {}),
    (SEQ, "tiny-random-gpt2", "lora", {"target_modules": "preset:attention"}),
    (SEQ, "tiny-random-llama", "head-only", {}),
    (SEQ, "tiny-random-llama", "qlora", {"target_modules": "all-linear"}),
    (LM, "tiny-random-gpt2", "full", {}),
    (LM, "tiny-random-gpt2", "lora", {"target_modules": "all-linear", "use_dora": True}),
    (LM, "tiny-random-gpt2", "qlora", {}),
    (LM, "tiny-random-llama", "lora", {"modules_to_save": ["lm_head"]}),
    (LM, "tiny-random-llama", "qlora", {"target_modules": "preset:attention", "use_rslora": True}),
]


@pytest.mark.parametrize("base,source,method,lora", CASES,
                         ids=[f"{b['task']}-{s}-{m}-{'-'.join(map(str, l.values())) or 'default'}"
                              for b, s, m, l in CASES])
def test_meta_counts_equal_peft_after_loading(base, source, method, lora):
    cfg = make_cfg(base, source, method, **lora)
    predicted = models.count_params(cfg, num_labels=3)
    model, _ = models.load_for_training(cfg, num_labels=3)
    if cfg.uses_lora:
        reported = model.get_nb_trainable_parameters()  # PEFT's own count
    else:
        reported = (sum(p.numel() for p in model.parameters() if p.requires_grad),
                    sum(p.numel() for p in model.parameters()))
    assert (predicted["trainable"], predicted["total"]) == tuple(reported)
    assert predicted["adapter_bytes"] == models.saved_bytes(cfg, model)
    assert sum(predicted["by_module"].values()) == predicted["trainable"]


# Counted from the structure file alone (no model is built): every method and the LoRA settings that change what
# trains or what is saved, checked against PEFT after a real load.
CACHED_CASES = [
    (SEQ, "minilm", "lora", {"use_rslora": True, "r": 16}),
    (SEQ, "minilm", "lora", {"use_dora": True, "target_modules": "all-linear"}),
    (SEQ, "minilm", "lora", {"bias": "all", "modules_to_save": ["pooler"]}),
    (SEQ, "minilm", "lora", {"bias": "lora_only", "target_modules": ["query", "attention.output.dense"]}),
    (SEQ, "minilm", "qlora", {"use_dora": True, "bias": "all"}),
    (SEQ, "minilm", "head-only", {}),
    (SEQ, "minilm", "full", {}),
    (SEQ, "tiny-random-llama", "lora", {"target_modules": "all-linear", "bias": "all"}),
    (LM, "tiny-random-gpt2", "lora", {"modules_to_save": ["lm_head"], "use_dora": True}),
    (LM, "tiny-random-llama", "qlora", {"target_modules": "all-linear", "use_rslora": True, "bias": "lora_only"}),
    (LM, "tiny-random-llama", "full", {}),
]


@pytest.fixture
def structures_only(monkeypatch):
    """Structures come from the cache files: building a model to describe it fails the test."""
    monkeypatch.setattr(models, "_SEEN", {})
    monkeypatch.setattr(models, "_meta_task_model", lambda *a: pytest.fail("described again, not read from disk"))


@pytest.mark.parametrize("base,source,method,lora", CACHED_CASES,
                         ids=[f"{b['task']}-{s}-{m}-{'-'.join(map(str, l.values())) or 'default'}"
                              for b, s, m, l in CACHED_CASES])
def test_cached_counts_equal_peft_after_loading(base, source, method, lora, request):
    cfg = make_cfg(base, source, method, **lora)
    models.count_params(cfg, num_labels=3)  # make sure the structure is on disk
    request.getfixturevalue("structures_only")
    predicted = models.count_params(cfg, num_labels=3)
    model, _ = models.load_for_training(cfg, num_labels=3)
    reported = model.get_nb_trainable_parameters() if cfg.uses_lora else models.nb_params(model)
    assert (predicted["trainable"], predicted["total"]) == tuple(reported)
    assert predicted["adapter_bytes"] == models.saved_bytes(cfg, model)
    assert predicted["by_module"] == models.by_module(model)


def test_adapter_bytes_match_the_saved_file(tmp_path):
    cfg = make_cfg(SEQ, "minilm", "lora", use_dora=True)
    predicted = models.count_params(cfg)["adapter_bytes"]
    model, _ = models.load_for_training(cfg, num_labels=2)
    model.save_pretrained(tmp_path)
    on_disk = (tmp_path / "adapter_model.safetensors").stat().st_size
    assert predicted <= on_disk < predicted + 32_000  # the safetensors header is the only extra


def test_qlora_loads_4bit_layers_on_cpu_and_trains_only_lora():
    cfg = make_cfg(SEQ, "minilm", "qlora")
    model, _ = models.load_for_training(cfg, num_labels=2)
    kinds = {type(m).__name__ for m in model.modules()}
    assert "Linear4bit" in kinds
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    # the head is skipped by quantization: it is a full-precision Linear that trains
    head = model.base_model.model.classifier.modules_to_save["default"]
    assert type(head).__name__ == "Linear" and head.weight.requires_grad


@pytest.mark.parametrize("source", ["tiny-random-gpt2", "tiny-random-llama"])
def test_tiny_models_are_built_identically(source, tmp_path, monkeypatch):
    import torch

    weights = []
    for cache in ("a", "b"):
        monkeypatch.setenv("LORA_LAB_CACHE", str(tmp_path / cache))
        torch.manual_seed(len(cache) * 99 + len(weights))  # the caller's RNG must not matter
        model, tok = models.load_base(source, task="causal-lm")
        assert models.resolve_source(source).startswith(str(tmp_path / cache))
        weights.append({k: v.clone() for k, v in model.state_dict().items()})
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k
    assert len(tok) == 30522 and tok.bos_token_id is not None and tok.eos_token_id is not None
    assert tok("The movie was")["input_ids"][-1] != tok.eos_token_id  # prompts do not end in EOS


def test_tiny_llama_uses_grouped_query_attention():
    cfg = models.load_config("tiny-random-llama")
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_act) == (4, 2, "silu")
    shapes = {t["leaf"]: (t["in_features"], t["out_features"]) for t in models.list_targets("tiny-random-llama")}
    assert shapes["q_proj"] == (64, 64) and shapes["k_proj"] == (64, 32) and shapes["v_proj"] == (64, 32)


@pytest.mark.parametrize("method", ["lora", "qlora"])
def test_generate_texts_is_deterministic_and_returns_new_text(method):
    cfg = make_cfg(LM, "tiny-random-llama", method)
    model, tok = models.load_for_training(cfg)
    prompts = ["The movie was", "Write a short greeting:", "hi"]
    first = models.generate_texts(model, tok, prompts, max_new_tokens=6)
    again = models.generate_texts(model, tok, prompts[:1], max_new_tokens=6)
    assert len(first) == 3 and all(isinstance(t, str) and t for t in first)
    assert again[0] == first[0]  # batching with left padding does not change a prompt's continuation
    assert model.training  # the caller's mode is restored
    assert not first[0].startswith("the movie was")


def test_seq_cls_labels_and_pad_token_for_decoders():
    cfg = make_cfg(SEQ, "tiny-random-gpt2", "lora")
    model, tok = models.load_for_training(cfg, num_labels=3, id2label={0: "neg", 1: "neu", 2: "pos"})
    assert model.config.id2label == {0: "neg", 1: "neu", 2: "pos"} and model.config.num_labels == 3
    assert model.config.pad_token_id == tok.pad_token_id is not None
    import torch

    enc = tok(["good film", "a much longer and rather bad film"], return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits
    assert logits.shape == (2, 3)


@pytest.mark.parametrize("base,source", [(SEQ, "minilm"), (LM, "tiny-random-llama")])
def test_qlora_still_trains_after_an_eval_forward(base, source):
    """Generations before training and evaluation between epochs run the 4-bit model in eval mode without
    grad; on AVX512-BF16 CPUs bitsandbytes would repack the weights then and break later training steps."""
    import torch

    cfg = make_cfg(base, source, "qlora")
    model, tok = models.load_for_training(cfg, num_labels=2)
    enc = dict(tok(["a good film", "a bad one here"], return_tensors="pt", padding=True))
    enc["labels"] = torch.tensor([1, 0]) if cfg.task == "seq-cls" else enc["input_ids"].clone()
    model.eval()
    with torch.no_grad():
        model(**enc)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    losses = []
    for _ in range(3):
        loss = model(**enc).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[2] < losses[1] < losses[0]


def test_concurrent_first_builds_agree(tmp_path):
    """Two workers starting at once on an empty cache both get the same, complete model (temp dir + rename)."""
    root = ROOT
    code = ("import hashlib, torch; from lora_core import models; "
            "m, _ = models.load_base('tiny-random-gpt2', task='causal-lm'); "
            "print(hashlib.sha256(b''.join(v.numpy().tobytes() for v in m.state_dict().values())).hexdigest())")
    env = {**os.environ, "LORA_LAB_CACHE": str(tmp_path), "PYTHONPATH": str(root)}
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env, cwd=root) for _ in range(2)]
    results = [p.communicate(timeout=180) for p in procs]
    assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in results]
    digests = {out.strip().splitlines()[-1] for out, _ in results}
    assert len(digests) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny-random-gpt2"]  # no temp dirs left behind


# -- CLI -------------------------------------------------------------------------------------------------------

def _cli(*args):
    return cli(*args, check=False)


def test_cli_targets_minilm():
    out = _cli("targets", "minilm")
    assert out.returncode == 0, out.stderr
    assert "bert.encoder.layer.5.attention.self.value" in out.stdout and "preset:qv: query, value" in out.stdout
    assert "classifier" in out.stdout and "head" in out.stdout


def test_cli_params_json(tmp_path):
    cfg = make_cfg(SEQ, "minilm", "lora", r=4)
    path = cfg.save(tmp_path / "exp.yaml")
    out = _cli("params", str(path), "--json")
    assert out.returncode == 0, out.stderr
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    assert counts == {**models.count_params(cfg), "num_labels": 2}


def test_cli_bad_target_is_one_clear_line(tmp_path):
    path = make_cfg(SEQ, "minilm", "lora", target_modules=["qkv"]).save(tmp_path / "exp.yaml")
    out = _cli("params", str(path))
    assert out.returncode == 2
    assert out.stderr.startswith("error: lora.target_modules:"), out.stderr  # no library noise before it
    assert "Traceback" not in out.stderr and "available leaf names: query, key, value, dense" in out.stderr
