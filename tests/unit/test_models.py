"""Model sources, adaptable layers, presets and meta-device parameter counts (no weights are loaded here)."""
from pathlib import Path

import pytest

from lora_core import models
from lora_core.config import ExperimentConfig
from lora_core.models import ModelError


def cfg_for(source="minilm", task="seq-cls", method="lora", **lora):
    data = "sample:instructions" if task == "causal-lm" else "sample:sentiment-2"
    return ExperimentConfig.from_dict({"task": task, "method": method, "model": {"source": source},
                                       "data": {"train": data}, "lora": lora})


# -- sources ---------------------------------------------------------------------------------------------------

def test_bundled_minilm_resolves_to_a_model_dir():
    path = Path(models.resolve_source("minilm"))
    assert (path / "config.json").is_file() and (path / "model.safetensors").is_file()


def test_missing_local_dir_is_named(tmp_path):
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelError, match="does not exist") as err:
        models.resolve_source(str(missing))
    assert str(missing) in str(err.value)


def test_dir_without_config_json_is_refused_without_listing_it(tmp_path):
    """Issue #11: the error used to list the folder's files (`/root has no config.json … (files there: .bashrc,
    …)`), which read any folder on the server from the browser."""
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(ModelError, match="no config.json") as err:
        models.resolve_source(str(tmp_path))
    assert str(tmp_path) in str(err.value) and "weights.bin" not in str(err.value)


def test_uncached_hub_id_offline_says_the_hub_is_unreachable(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="unreachable") as err:
        models.resolve_source("some-org/definitely-not-cached-model")
    assert "minilm" in str(err.value)  # and says what works offline


def test_nonsense_source_is_refused():
    with pytest.raises(ModelError, match="neither a bundled model"):
        models.resolve_source("what is this?")


# -- layers and presets ----------------------------------------------------------------------------------------

def test_minilm_targets_have_shapes_and_the_head_is_marked():
    targets = models.list_targets("minilm")
    body = [t for t in targets if not t["head"]]
    # 6 layers x (query, key, value, attention.output.dense, intermediate.dense, output.dense) + pooler.dense
    assert len(body) == 6 * 6 + 1
    q = next(t for t in targets if t["name"] == "bert.encoder.layer.0.attention.self.query")
    assert (q["leaf"], q["type"], q["in_features"], q["out_features"], q["params"]) == \
        ("query", "Linear", 384, 384, 384 * 384 + 384)
    ffn = next(t for t in targets if t["name"] == "bert.encoder.layer.0.intermediate.dense")
    assert (ffn["in_features"], ffn["out_features"]) == (384, 1536)
    assert [t["name"] for t in targets if t["head"]] == ["classifier"]


def test_gpt2_conv1d_shapes_are_read_transposed():
    targets = {t["name"]: t for t in models.list_targets("tiny-random-gpt2")}
    c_attn = targets["transformer.h.0.attn.c_attn"]
    assert c_attn["type"] == "Conv1D" and (c_attn["in_features"], c_attn["out_features"]) == (64, 192)
    fc = targets["transformer.h.0.mlp.c_fc"]
    assert (fc["in_features"], fc["out_features"]) == (64, 256)
    assert targets["lm_head"]["head"]


@pytest.mark.parametrize("source,expected", [
    ("minilm", {"qv": ["query", "value"], "attention": ["query", "key", "value", "attention.output.dense"],
                "all-linear": ["query", "key", "value", "dense"]}),
    ("tiny-random-gpt2", {"qv": ["c_attn"], "attention": ["c_attn", "attn.c_proj"],
                          "all-linear": ["c_attn", "c_proj", "c_fc"]}),
    ("tiny-random-llama", {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
                           "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                          "down_proj"]}),
])
def test_presets_per_family(source, expected):
    assert models.target_presets(source) == expected


def _save_config(path: Path, config) -> str:
    path.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(path)
    return str(path)


def test_distilbert_presets_and_head(tmp_path):
    from transformers import DistilBertConfig

    src = _save_config(tmp_path / "distil", DistilBertConfig(vocab_size=100, dim=32, hidden_dim=64, n_layers=1,
                                                             n_heads=2))
    assert models.target_presets(src)["qv"] == ["q_lin", "v_lin"]
    heads = {t["name"] for t in models.list_targets(src) if t["head"]}
    assert heads == {"pre_classifier", "classifier"}  # both are trained with the adapter (modules_to_save)
    counts = models.count_params(cfg_for(src))
    assert (counts["by_module"]["pre_classifier"], counts["by_module"]["pre_classifier.bias"]) == (32 * 32, 32)
    assert (counts["by_module"]["classifier"], counts["by_module"]["classifier.bias"]) == (32 * 2, 2)


def test_unknown_family_presets_are_derived_from_the_layers(tmp_path):
    from transformers import OPTConfig

    src = _save_config(tmp_path / "opt", OPTConfig(vocab_size=100, hidden_size=32, ffn_dim=64, num_hidden_layers=1,
                                                   num_attention_heads=2, word_embed_proj_dim=32))
    presets = models.target_presets(src)
    assert presets["qv"] == ["q_proj", "v_proj"]
    assert presets["attention"] == ["k_proj", "v_proj", "q_proj", "out_proj"]
    assert presets["all-linear"] == ["k_proj", "v_proj", "q_proj", "out_proj", "fc1", "fc2"]  # no lm_head


def test_wrong_target_name_lists_the_existing_leaves():
    with pytest.raises(ModelError) as err:
        models.count_params(cfg_for(target_modules=["query", "q_proj"]))
    msg = str(err.value)
    assert msg.startswith("lora.target_modules:") and "'q_proj'" in msg and "'query'" not in msg
    for leaf in ("query", "key", "value", "dense"):
        assert leaf in msg


def test_head_as_a_target_points_to_modules_to_save():
    with pytest.raises(ModelError, match="modules_to_save"):
        models.count_params(cfg_for(target_modules=["classifier"]))


def test_dotted_target_names_match_by_suffix():
    counts = models.count_params(cfg_for(target_modules=["attention.output.dense"], r=2))
    assert counts["by_module"]["dense"] == 6 * 2 * (384 + 384)


# -- counts on the meta device, checked against the LoRA formula r * (d_in + d_out) ----------------------------

HEAD = 384 * 2 + 2  # MiniLM classifier for 2 labels, trained in full with the adapter


def test_lora_count_follows_the_formula():
    c = models.count_params(cfg_for(r=8))  # default targets: the family's Q+V preset
    lora = 6 * 2 * 8 * (384 + 384)
    assert c["trainable"] == lora + HEAD
    assert c["by_module"] == {"query": 6 * 8 * 768, "value": 6 * 8 * 768, "classifier": 384 * 2,
                              "classifier.bias": 2}
    assert c["adapter_bytes"] == 4 * c["trainable"]  # fp32 adapter: LoRA weights + head
    assert c["total"] == 22_713_986 + lora + HEAD  # base with head + adapters + the trained copy of the head
    assert c["percent"] == pytest.approx(100 * c["trainable"] / c["total"])


def test_dora_adds_one_magnitude_per_output_and_bias_all_trains_every_bias():
    plain = models.count_params(cfg_for(r=4))["trainable"]
    assert models.count_params(cfg_for(r=4, use_dora=True))["trainable"] == plain + 6 * 2 * 384
    assert models.count_params(cfg_for(r=4, use_rslora=True))["trainable"] == plain  # only the scaling changes
    with_bias = models.count_params(cfg_for(r=4, bias="all"))["trainable"]
    assert with_bias > plain + 6 * 2 * 384  # every bias in the model, not just the adapted layers'


def test_full_head_only_and_causal_counts():
    full = models.count_params(cfg_for(method="full"))
    assert full["trainable"] == full["total"] == 22_713_986 and full["percent"] == 100.0
    head = models.count_params(cfg_for(method="head-only"), num_labels=5)
    assert head["trainable"] == 384 * 5 + 5 and head["adapter_bytes"] == 4 * head["trainable"]
    gpt2 = models.count_params(cfg_for("tiny-random-gpt2", task="causal-lm", method="full"))
    assert gpt2["adapter_bytes"] == 4 * gpt2["total"]  # the tied lm_head is saved once
    lm = models.count_params(cfg_for("tiny-random-llama", task="causal-lm", target_modules="preset:attention", r=2))
    assert lm["trainable"] == 2 * 2 * ((64 + 64) + (64 + 32) + (64 + 32) + (64 + 64))  # GQA: k/v are 64 -> 32


def test_counts_need_only_config_json(tmp_path):
    """Meta device: a directory with a config and no weights is enough (a 7B model costs no memory)."""
    from transformers import LlamaConfig

    src = _save_config(tmp_path / "big", LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                                                     num_attention_heads=32, vocab_size=32000))
    c = models.count_params(cfg_for(src, task="causal-lm", r=8))
    assert c["trainable"] == 32 * 2 * 8 * (4096 + 4096)  # LLaMA-2-7B q,v at r=8: 4,194,304
    assert 6.7e9 < c["total"] < 6.8e9
