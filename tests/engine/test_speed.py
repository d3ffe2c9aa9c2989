"""The recipe's speed choices: each one is a config field, on by default where it holds accuracy, switchable
off, and recorded in results.json; batches of similar length come in a seeded, reproducible order; the
tokenization cache is hit by a second run of the same data; packed causal-LM rows keep examples apart and keep
prompt masking."""
import json

import pytest
import torch

from lora_core import tokens
from lora_core.config import ExperimentConfig
from lora_core.train import run_experiment
from tests.helpers import tiny_causal, tiny_config

pytestmark = pytest.mark.timeout(300)

SPEED_OFF = {"data.group_by_length": False, "data.cache_tokenized": False, "train.precision": "fp32",
             "train.checkpoints": False}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A tokenization cache of this test's own (the model cache stays shared: tokens.tokenized_cache moves)."""
    folder = tmp_path / "tokenized"
    monkeypatch.setattr(tokens, "tokenized_cache", lambda: folder)
    return folder


def test_defaults_are_on_recorded_and_cached(tmp_path, private_cache):
    cfg = tiny_config()
    assert (cfg.data.group_by_length, cfg.data.cache_tokenized, cfg.data.packing) == (True, True, False)
    assert (cfg.train.precision, cfg.train.checkpoints) == ("auto", True)
    first = run_experiment(cfg, tmp_path / "a")
    second = run_experiment(cfg, tmp_path / "b")
    for res in (first, second):
        speed = json.loads(json.dumps(res))["speed"]  # as results.json holds it
        assert speed["group_by_length"] is True and speed["precision"] == "auto" and speed["save_checkpoints"] is True
        assert speed["padding_ratio"] <= speed["padding_ratio_random"]
        assert res["precision"] in ("bf16", "fp32") and res["precision_reason"].startswith("auto:")
    assert (first["speed"]["tokenize_cache"], second["speed"]["tokenize_cache"]) == ("miss", "hit")
    assert second["eval_loss"] == pytest.approx(first["eval_loss"], rel=1e-5)  # the cache changes nothing
    assert any(private_cache.iterdir())
    assert (tmp_path / "a" / "checkpoints").is_dir()


def test_every_speed_default_switches_off(tmp_path, private_cache):
    res = run_experiment(tiny_config(**SPEED_OFF), tmp_path)
    speed = res["speed"]
    assert speed["group_by_length"] is False and speed["cache_tokenized"] is False and speed["save_checkpoints"] is False
    assert speed["tokenize_cache"] == "off" and speed["padding_ratio"] == speed["padding_ratio_random"]
    assert res["precision"] == "fp32" and "set in the config" in res["precision_reason"]
    assert not private_cache.exists()
    assert not (tmp_path / "checkpoints").exists() or not any((tmp_path / "checkpoints").iterdir())


def test_length_grouped_order_is_a_seeded_permutation():
    lengths = [int(x) for x in torch.randint(3, 60, (203,), generator=torch.Generator().manual_seed(1))]
    order = tokens.LengthGroupedOrder(lengths, 8, seed=5)
    first = list(order)
    assert sorted(first) == list(range(203))
    assert list(tokens.LengthGroupedOrder(lengths, 8, seed=5)) == first  # reproducible
    order.set_epoch(1)
    assert list(order) != first  # a new order each epoch
    grouped = tokens.padding_ratio(lengths, order.batches())
    assert grouped < tokens.padding_ratio(lengths, tokens.random_batches(203, 8, 5))
    batches = order.batches()
    assert max(lengths[i] for i in batches[0]) == max(lengths)  # the longest batch first: fails at step 1 if too big


# -- packing (causal-lm) ------------------------------------------------------------------------------------------

def packed_setup(mask_prompt=True):
    from lora_core import data, models

    cfg = tiny_causal(**{"data.packing": True, "data.max_length": 64, "data.mask_prompt": mask_prompt,
                         "data.cache_tokenized": False})
    splits = data.load_splits(cfg)
    model, tokenizer = models.load_for_training(cfg, 2, None)
    return cfg, splits, model, tokenizer


def test_packing_keeps_examples_apart_and_masks_prompts():
    cfg, splits, model, tokenizer = packed_setup()
    plain_train, _ = tokens.tokenize(splits, tokenizer, cfg)
    prepared = tokens.prepare(splits, tokenizer, cfg)
    packed = prepared.train
    assert prepared.info["packed_examples"] == len(plain_train) > len(packed) == prepared.info["packed_rows"]
    assert all(len(ids) <= 64 for ids in packed["input_ids"])

    # every example sits whole in one packed row, its prompt still masked (first label -100: nothing predicts it)
    examples = {tuple(ids): labels for ids, labels in zip(plain_train["input_ids"], plain_train["labels"])}
    row_ids, row_labels, row_pos = packed[0]["input_ids"], packed[0]["labels"], packed[0]["position_ids"]
    starts = [i for i, p in enumerate(row_pos) if p == 0] + [len(row_pos)]
    assert len(starts) > 2, "the first row should hold at least two examples"
    for a, b in zip(starts, starts[1:]):
        labels = examples[tuple(row_ids[a:b])]
        assert row_labels[a:b] == [tokens.IGNORE_INDEX] + labels[1:]
        assert labels[0] == tokens.IGNORE_INDEX  # mask_prompt: the prompt's tokens are out of the loss

    # examples do not attend to each other: each segment's logits equal the example run alone
    collate = tokens.make_collator(cfg, tokenizer)
    batch = collate([packed[0]])
    assert "attention_mask" not in batch and batch["position_ids"].shape == batch["input_ids"].shape
    model.eval()
    with torch.no_grad():
        together = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False).logits[0]
        for a, b in zip(starts, starts[1:]):
            alone = model(input_ids=torch.tensor([row_ids[a:b]])).logits[0]
            torch.testing.assert_close(together[a:b], alone, rtol=1e-4, atol=1e-4)


def test_packing_unmasked_prompt_keeps_prompt_labels():
    cfg, splits, _, tokenizer = packed_setup(mask_prompt=False)
    packed = tokens.prepare(splits, tokenizer, cfg).train
    ids, labels, pos = packed[0]["input_ids"], packed[0]["labels"], packed[0]["position_ids"]
    for i, p in enumerate(pos):  # only each example's first token is out of the loss
        assert labels[i] == (tokens.IGNORE_INDEX if p == 0 else ids[i])


def test_packed_run_trains_and_records_it(tmp_path, private_cache):
    res = run_experiment(tiny_causal(max_steps=2, **{"data.packing": True, "data.max_length": 64}), tmp_path)
    assert res["speed"]["packing"] is True and res["speed"]["packed_rows"] < res["speed"]["packed_examples"]
    assert res["eval_loss"] > 0


def test_packing_is_refused_for_classification():
    from lora_core.config import ConfigError

    with pytest.raises(ConfigError, match="data.packing"):
        ExperimentConfig.from_dict({"task": "seq-cls", "data": {"packing": True}})
