"""The Playground's run loader: base vs tuned side by side for every kind of saved artifact."""
import json

import pytest
import torch

from helpers import train_by_hand
from lora_core import inference, models
from lora_core.config import ExperimentConfig
from lora_core.errors import ModelError

TEXTS = ["a wonderful film", "dull and far too long", "fine"]


def make_cfg(task, source, method, **lora):
    data = "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"
    return ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source},
                                       "data": {"train": data}, "lora": lora, "quant": {"compute_dtype": "float32"}})


def train(cfg, steps=4, id2label=None):
    return train_by_hand(cfg, TEXTS, [1, 0, 1], steps=steps, id2label=id2label)


def probs(model, tok, texts=TEXTS):
    enc = tok(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        return torch.softmax(model(**{k: v for k, v in enc.items()}).logits, -1)


def initial_probs(cfg, num_labels=2):
    from transformers import set_seed

    set_seed(cfg.train.seed)
    base, tok = models.load_base(cfg, num_labels=num_labels)
    return probs(base.eval(), tok)


def side(rows, name):
    return torch.tensor([list(r[name]["probs"].values()) for r in rows])


def test_lora_classify_base_vs_tuned(tmp_path):
    cfg = make_cfg("seq-cls", "minilm", "lora")
    model, tok = train(cfg, id2label={0: "negative", 1: "positive"})
    model.save_pretrained(tmp_path / "adapter")
    (tmp_path / "label_map.json").write_text(json.dumps({"negative": 0, "positive": 1}))
    expected_tuned = probs(model, tok)

    run = inference.load_run(cfg, tmp_path)
    rows = run.classify(TEXTS)
    assert [r["text"] for r in rows] == TEXTS
    assert set(rows[0]["tuned"]["probs"]) == {"negative", "positive"}
    assert torch.allclose(side(rows, "tuned"), expected_tuned, atol=1e-5)
    assert torch.allclose(side(rows, "base"), initial_probs(cfg), atol=1e-5)  # the untrained starting point
    assert not torch.allclose(side(rows, "base"), side(rows, "tuned"), atol=1e-3)
    assert rows[0]["tuned"]["label"] == max(rows[0]["tuned"]["probs"], key=rows[0]["tuned"]["probs"].get)
    # the adapter is on again after the base side ran
    assert torch.allclose(side(run.classify(TEXTS), "tuned"), expected_tuned, atol=1e-5)
    with pytest.raises(ModelError, match="causal-lm"):
        run.generate(["hi"])


def test_qlora_generate_base_vs_tuned(tmp_path):
    cfg = make_cfg("causal-lm", "tiny-random-llama", "qlora", target_modules="all-linear")
    model, tok = train(cfg, steps=8)
    model.save_pretrained(tmp_path / "adapter")
    prompts = ["The movie was", "a wonderful film"]
    expected = models.generate_texts(model, tok, prompts, max_new_tokens=5)

    run = inference.load_run(cfg, tmp_path)
    rows = run.generate(prompts, max_new_tokens=5)
    assert [r["tuned"] for r in rows] == expected
    base, _ = models.load_base(cfg, quant=cfg.quant)
    assert [r["base"] for r in rows] == models.generate_texts(base, tok, prompts, max_new_tokens=5)
    assert [r["base"] for r in rows] != expected  # training changed what the model says
    with pytest.raises(ModelError, match="seq-cls"):
        run.classify(["x"])


def test_full_and_head_only_runs(tmp_path):
    from safetensors.torch import save_file

    full_cfg = make_cfg("seq-cls", "tiny-random-gpt2", "full")
    model, tok = train(full_cfg)
    model.save_pretrained(tmp_path / "full" / "model")
    tok.save_pretrained(tmp_path / "full" / "model")
    rows = inference.load_run(full_cfg, tmp_path / "full").classify(TEXTS)
    assert torch.allclose(side(rows, "tuned"), probs(model, tok), atol=1e-5)
    assert torch.allclose(side(rows, "base"), initial_probs(full_cfg), atol=1e-5)

    head_cfg = make_cfg("seq-cls", "minilm", "head-only")
    model, tok = train(head_cfg, id2label={0: "neg", 1: "neu", 2: "pos"})
    trained = {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}
    (tmp_path / "head" / "head").mkdir(parents=True)
    save_file(trained, str(tmp_path / "head" / "head" / "head.safetensors"))
    (tmp_path / "head" / "head" / "head.json").write_text(json.dumps(
        {"num_labels": 3, "id2label": {"0": "neg", "1": "neu", "2": "pos"}}))
    run = inference.load_run(head_cfg, tmp_path / "head")
    rows = run.classify(TEXTS)
    assert set(rows[0]["base"]["probs"]) == {"neg", "neu", "pos"}
    assert torch.allclose(side(rows, "tuned"), probs(model, tok), atol=1e-5)
    assert torch.allclose(side(rows, "base"), initial_probs(head_cfg, 3), atol=1e-5)
    assert torch.allclose(side(run.classify(TEXTS), "tuned"), probs(model, tok), atol=1e-5)  # head restored


def test_missing_artifacts_are_named(tmp_path):
    with pytest.raises(ModelError, match="adapter_config.json"):
        inference.load_run(make_cfg("seq-cls", "minilm", "lora"), tmp_path)
    with pytest.raises(ModelError, match="head.safetensors"):
        inference.load_run(make_cfg("seq-cls", "minilm", "head-only"), tmp_path)
