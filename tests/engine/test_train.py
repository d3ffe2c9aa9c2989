"""The training recipe end to end on tiny models: every method and task trains a few steps, leaves loadable
artifacts and counts equal to models.count_params, streams events, honours stop, and resumes."""
import json

import pytest
import torch

from lora_core import models
from lora_core.config import ExperimentConfig
from lora_core.errors import DataError, RunError
from lora_core.train import run_experiment, training_arguments

pytestmark = pytest.mark.timeout(300)


def make_cfg(method="lora", task="seq-cls", source=None, **train) -> ExperimentConfig:
    seq = task == "seq-cls"
    return ExperimentConfig.from_dict({
        "task": task, "method": method,
        "model": {"source": source or ("minilm" if seq else "tiny-random-gpt2")},
        "lora": {"r": 4, "alpha": 8},
        "data": {"train": "sample:sentiment-2" if seq else "sample:instructions", "max_length": 24,
                 "max_train_samples": 48, "max_eval_samples": 16},
        "train": {"max_steps": 3, "batch_size": 8, "logging_steps": 1, **train},
        "generate": {"prompts": ["Reverse the word 'cat'.", "The movie was"], "max_new_tokens": 4},
    })


def train(cfg, out, **kw):
    events = []
    results = run_experiment(cfg, out, on_event=events.append, **kw)
    json.dumps(results)  # the worker writes it as JSON
    return results, events


def check_events(events, steps):
    assert [e["phase"] for e in events if e["kind"] == "phase"] == ["loading_data", "loading_model", "training",
                                                                     "saving"]
    logs = [e for e in events if e["kind"] == "log" and "loss" in e]
    assert [e["step"] for e in logs] == list(range(1, steps + 1))  # logging_steps=1
    for e in logs:
        assert e["loss"] > 0 and e["learning_rate"] >= 0 and e["grad_norm"] >= 0
        assert e["samples_per_s"] > 0 and e["tokens_per_s"] > 0 and e["peak_mem_bytes"] > 0
        assert 0 < e["progress"] <= 1 and e["elapsed_s"] > 0 and e["eta_s"] >= 0
    assert logs[-1]["progress"] == 1.0 and logs[-1]["eta_s"] == 0
    evals = [e for e in events if e["kind"] == "eval"]
    assert evals and evals[-1]["step"] == steps and "eval_loss" in evals[-1]
    return logs, evals


def assert_lora_trained(adapter_dir):
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_dir / "adapter_model.safetensors"))
    lora_b = [t for k, t in tensors.items() if "lora_B" in k]
    assert lora_b and any(t.abs().sum() > 0 for t in lora_b), "lora_B starts at zero; training must move it"


# -- seq-cls: every method on MiniLM -------------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["lora", "qlora", "full", "head-only"])
def test_seq_cls_every_method(tmp_path, method):
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification

    cfg = make_cfg(method)
    res, events = train(cfg, tmp_path)
    check_events(events, 3)
    assert res["stopped"] is False and res["steps"] == 3
    assert 0 <= res["accuracy"] <= 1 and 0 <= res["macro_f1"] <= 1 and res["eval_loss"] > 0
    expected = models.count_params(cfg, num_labels=2)
    assert (res["trainable_params"], res["total_params"]) == (expected["trainable"], expected["total"])
    assert res["label_map"] == {"negative": 0, "positive": 1}
    assert json.loads((tmp_path / "label_map.json").read_text()) == res["label_map"]
    assert res["peak_mem_bytes"] > 0 and res["peak_mem_method"].startswith(("cpu", "cuda"))
    assert res["versions"]["torch"] and res["versions"]["peft"] and res["dataset_fingerprint"]
    assert (tmp_path / "checkpoints" / "checkpoint-3" / "trainer_state.json").is_file()

    if method in ("lora", "qlora"):
        adapter = tmp_path / "adapter"
        assert (adapter / "adapter_config.json").is_file()
        assert res["adapter_bytes_on_disk"] == (adapter / "adapter_model.safetensors").stat().st_size
        assert_lora_trained(adapter)
        base, _ = models.load_base(cfg, num_labels=2)
        loaded = PeftModel.from_pretrained(base, str(adapter))
        assert sum(p.numel() for n, p in loaded.named_parameters() if "lora_" in n) > 0
    elif method == "full":
        model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
        assert model.config.id2label == {0: "negative", 1: "positive"}
        assert sum(p.numel() for p in model.parameters()) == res["total_params"]
    else:
        from safetensors.torch import load_file

        head = load_file(str(tmp_path / "head" / "head.safetensors"))
        assert sum(t.numel() for t in head.values()) == res["trainable_params"] == 770  # 384*2 + 2
        info = json.loads((tmp_path / "head" / "head.json").read_text())
        assert info["id2label"] == {"0": "negative", "1": "positive"}
        base, _ = models.load_base(cfg, num_labels=2)
        missing, unexpected = base.load_state_dict(head, strict=False)
        assert not unexpected and not any(k.startswith("classifier") for k in missing)
        assert torch.equal(base.classifier.weight, head["classifier.weight"])


# -- causal-lm: full / lora / qlora on tiny GPT-2 and Llama ------------------------------------------------------

@pytest.mark.parametrize("source", ["tiny-random-gpt2", "tiny-random-llama"])
@pytest.mark.parametrize("method", ["lora", "qlora", "full"])
def test_causal_lm_every_method(tmp_path, source, method):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg = make_cfg(method, "causal-lm", source)
    res, events = train(cfg, tmp_path)
    _, evals = check_events(events, 3)
    assert res["eval_loss"] > 0 and res["perplexity"] == pytest.approx(torch.tensor(res["eval_loss"]).exp().item(),
                                                                       rel=1e-5)
    assert evals[-1]["eval_perplexity"] == pytest.approx(res["perplexity"])
    expected = models.count_params(cfg)
    assert (res["trainable_params"], res["total_params"]) == (expected["trainable"], expected["total"])
    assert res["label_map"] is None and not (tmp_path / "label_map.json").exists()
    gens = json.loads((tmp_path / "generations.json").read_text())
    assert [g["prompt"] for g in gens] == cfg.generate.prompts
    assert all(isinstance(g["before"], str) and isinstance(g["after"], str) for g in gens)
    assert res["generations"] == gens
    if method == "full":
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "model"))
        assert sum(p.numel() for p in model.parameters()) == res["total_params"]
    else:
        assert_lora_trained(tmp_path / "adapter")
        base, _ = models.load_base(cfg)
        PeftModel.from_pretrained(base, str(tmp_path / "adapter"))


# -- stop, resume, determinism ------------------------------------------------------------------------------------

def stop_after(n_polls):
    calls = {"n": 0}

    def should_stop():
        calls["n"] += 1
        return calls["n"] > n_polls

    return should_stop


def test_stop_checkpoints_and_resume_continues(tmp_path):
    cfg = make_cfg("lora", "causal-lm", max_steps=5)
    # polls: after loading data, after loading the model, then once per step -> stop after step 2
    first, events = train(cfg, tmp_path / "a", should_stop=stop_after(3))
    assert first["stopped"] is True and first["steps"] == 2
    ckpt = tmp_path / "a" / "checkpoints" / "checkpoint-2"
    assert (ckpt / "trainer_state.json").is_file() and (ckpt / "adapter_model.safetensors").is_file()
    assert (tmp_path / "a" / "adapter" / "adapter_model.safetensors").is_file()
    assert max(e.get("step", 0) for e in events) == 2
    evals = [e["step"] for e in events if e["kind"] == "eval"]
    assert evals == [0], "a stop must not wait for an evaluation (step 0 is the causal-lm 'before' eval)"
    assert first["eval_loss_before"] > 0

    resumed, events = train(cfg, tmp_path / "b", resume_from=ckpt)
    steps = [e["step"] for e in events if e["kind"] == "log" and "loss" in e]
    assert steps == [3, 4, 5]
    assert resumed["steps"] == 5 and resumed["resumed_from_step"] == 2 and resumed["stopped"] is False
    assert "eval_loss_before" not in resumed  # the parent run measured it

    straight, _ = train(cfg, tmp_path / "c")
    # same data order, same optimizer state: the resumed run ends where an uninterrupted one does
    assert resumed["eval_loss"] == pytest.approx(straight["eval_loss"], rel=1e-4)


def test_stop_before_training_returns_at_once(tmp_path):
    res, events = train(make_cfg("lora", "causal-lm"), tmp_path, should_stop=lambda: True)
    assert res["stopped"] is True and res["steps"] == 0
    assert [e["phase"] for e in events] == ["loading_data"]
    assert not (tmp_path / "checkpoints").exists()


def test_same_seed_same_run(tmp_path):
    cfg = make_cfg("lora", "causal-lm", source="tiny-random-llama")
    a, _ = train(cfg, tmp_path / "a")
    b, _ = train(cfg, tmp_path / "b")
    assert a["train_loss"] == b["train_loss"] and a["eval_loss"] == b["eval_loss"]
    assert a["dataset_fingerprint"] == b["dataset_fingerprint"]
    other = ExperimentConfig.from_dict({**cfg.to_dict(), "train": {**cfg.to_dict()["train"], "seed": 1}})
    c, _ = train(other, tmp_path / "c")
    assert c["dataset_fingerprint"] != a["dataset_fingerprint"] and c["train_loss"] != a["train_loss"]


def test_resume_from_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(RunError, match="not a complete checkpoint"):
        run_experiment(make_cfg(), tmp_path / "out", resume_from=tmp_path)


def test_early_stopping_ends_a_run_that_does_not_improve(tmp_path):
    # a learning rate too small to change any prediction: accuracy never improves
    cfg = make_cfg("head-only", source="tiny-random-gpt2", max_steps=20, eval_steps=1, early_stopping_patience=2,
                   learning_rate=1e-12)
    res, events = train(cfg, tmp_path)
    assert res["steps"] == 3  # first eval sets the best, two more without improvement stop it
    assert len([e for e in events if e["kind"] == "eval"]) >= 3


def test_adamw_8bit_uses_bitsandbytes(tmp_path):
    cfg = make_cfg("lora", "causal-lm", optimizer="adamw_8bit", max_steps=2)
    assert training_arguments(cfg, tmp_path / "ckpt").optim.value == "adamw_bnb_8bit"
    res, _ = train(cfg, tmp_path)
    state = torch.load(tmp_path / "checkpoints" / "checkpoint-2" / "optimizer.pt", weights_only=False)
    per_param = next(iter(state["state"].values()))
    assert "exp_avg" not in per_param  # torch.optim.AdamW's name; bitsandbytes keeps its own quantized state
    assert set(per_param["__bnb_optimizer_quant_state__"]) == {"state1", "state2"}
    assert res["steps"] == 2


def test_bad_data_fails_before_the_model_loads(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("review,label\ngood,positive\nbad,negative\n")
    cfg = ExperimentConfig.from_dict({**make_cfg().to_dict(), "data": {"train": str(bad)}})
    events = []
    with pytest.raises(DataError, match="bad.csv: no column 'text'"):
        run_experiment(cfg, tmp_path / "out", on_event=events.append)
    assert [e["phase"] for e in events] == ["loading_data"]


def test_a_failing_on_event_does_not_stop_training(tmp_path):
    seen = []

    def flaky(event):
        seen.append(event)
        if len(seen) == 3:
            raise OSError("disk full")

    res = run_experiment(make_cfg("lora", "causal-lm", max_steps=2), tmp_path, on_event=flaky)
    assert res["steps"] == 2 and res["event_errors"] == 1
    assert [e["kind"] for e in seen][-1] == "phase" and seen[-1]["phase"] == "saving"  # all handed over, in order
