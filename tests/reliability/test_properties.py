"""Property-based tests (Hypothesis) of the engine's front door: 2,000 generated config files and 500 generated data
files per run. Each goes through what a launch does before anything starts (`ExperimentConfig.from_file`, the
path checks of `prepare`, the pre-launch check of data, model and memory), and must be accepted or refused with
the engine's own error (`LoraLabError`) naming a config field or the file. Any other exception fails the test.
A data file the check accepts must also load as the worker loads it (datasets built from the checked rows) and
tokenize with the batch function the worker maps over them."""
from __future__ import annotations

import io
import json
import math
import re
from collections import Counter

import pandas as pd
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lora_core import data, models, preflight, tokens
from lora_core.config import ExperimentConfig, field_choices
from lora_core.errors import LoraLabError
from lora_core.runs.manager import prepare

pytestmark = pytest.mark.reliability

CONFIGS = 2000
DATA_FILES = 500
FIELD_NAME = re.compile(r"\b(model|lora|quant|data|train|generate)\.[a-z_]+\b")  # a dotted config field
FILE_NAME = re.compile(r"/\S+\.(csv|tsv|json|jsonl|parquet|yaml)\b|hub dataset \S+")  # a data file or hub set

# -- generated values: plausible ones, boundary ones, and hostile ones ---------------------------------------------

PLAUSIBLE = {
    "name": ["exp", "r8 run", "x" * 200], "task": ["seq-cls", "causal-lm"],
    "method": ["full", "lora", "qlora", "head-only"],
    "model.source": ["minilm", "tiny-random-gpt2", "tiny-random-llama", "org/not-here", "./missing-model"],
    "model.trust_remote_code": [False],
    "lora.r": [1, 2, 8, 1024], "lora.alpha": [0.5, 16, "32"], "lora.dropout": [0.0, 0.1, 0.99],
    "lora.target_modules": [None, "preset:qv", "all-linear", ["query", "value"], "c_attn", ["nope"], "q, v"],
    "lora.bias": ["none", "all"], "data.train": ["sample:sentiment-2", "sample:sentiment-3", "sample:instructions",
                                                  "missing.csv", "glue"],
    "data.max_length": [8, 32, 128, 512, 4096], "data.max_train_samples": [None, 1, 8, 16],
    "data.max_eval_samples": [None, 4], "data.eval_fraction": [0.2, 0.5, 0.99],
    "train.epochs": [0.5, 1, 3], "train.max_steps": [None, 1, 10], "train.batch_size": [1, 8, 4096],
    "train.eval_batch_size": [None, 4], "train.learning_rate": [None, 1e-3, "1e-4"], "train.seed": [0, 2**32 - 1],
    "train.warmup_ratio": [0.0, 0.5], "train.optimizer": ["adamw", "sgd"], "train.precision": ["auto", "fp32"],
    "generate.prompts": [["Hi"], [], ["word " * 300]], "generate.max_new_tokens": [1, 24, 1024],
}
HOSTILE = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, -0.0]),
    st.text(max_size=40), st.text(alphabet=st.characters(max_codepoint=0x1F), max_size=10),
    st.sampled_from(["é" * 300, "a" * 5000, "x.csv" * 60, "/" + "é" * 300, "../" * 50, "sample:nope", "\x1b[31m"]),
    st.lists(st.text(max_size=5), max_size=6), st.dictionaries(st.text(max_size=5), st.integers(), max_size=3))


def field_value(dotted: str):
    choices = PLAUSIBLE.get(dotted) or list(field_choices(dotted) or []) or [None]
    return st.one_of(st.sampled_from(choices), st.sampled_from(choices), HOSTILE)


def config_dicts():
    sections: dict[str, dict] = {}
    for dotted in PLAUSIBLE:
        head, _, tail = dotted.partition(".")
        sections.setdefault(head if tail else "", {})[tail or head] = field_value(dotted)
    top = {k: v for k, v in sections.pop("").items()}
    nested = {name: st.fixed_dictionaries({}, optional=fields) for name, fields in sections.items()}
    extra = st.dictionaries(st.one_of(st.text(max_size=8), st.integers()), HOSTILE, max_size=2)
    return st.builds(lambda a, b, c: {**a, **b, **c}, st.fixed_dictionaries({}, optional=top),
                     st.fixed_dictionaries({}, optional=nested), st.one_of(st.just({}), st.just({}), extra))


def serialize(cfg: dict, fmt: str) -> bytes:
    try:
        if fmt == "json":
            return json.dumps(cfg, allow_nan=True, default=str).encode()
        return yaml.safe_dump(cfg, allow_unicode=True).encode()
    except (ValueError, TypeError, yaml.YAMLError):
        return repr(cfg).encode()


MUTATIONS = ["none", "none", "truncate", "garbage", "duplicate", "alias", "latin1", "empty", "comment"]


def mutate(raw: bytes, how: str, cut: int, junk: bytes) -> bytes:
    if how == "truncate":
        return raw[:cut % (len(raw) + 1)]
    if how == "garbage":
        at = cut % (len(raw) + 1)
        return raw[:at] + junk + raw[at:]
    if how == "duplicate":
        lines = raw.splitlines(keepends=True)
        return raw + (lines[cut % len(lines)] if lines else b"name: a\n")
    if how == "alias":
        return b"train: &a {epochs: 1}\nlora: *a\n" + raw
    if how == "latin1":
        return raw.decode("utf-8", "replace").encode("latin-1", "replace") + b"name: caf\xe9\n"
    if how == "empty":
        return b""
    if how == "comment":
        return b"# nothing here\n"
    return raw


def refused_properly(exc: LoraLabError, source: str) -> bool:
    """The error names a config field (its `field`, or a dotted name in the message) or a file."""
    text = str(exc)
    return bool(exc.field) or source in text or bool(FIELD_NAME.search(text) or FILE_NAME.search(text))


# -- configs ---------------------------------------------------------------------------------------------------------

def test_generated_configs_are_accepted_or_refused_by_name(tmp_path):
    seen, why = {"accepted": 0, "refused": 0}, Counter()
    checker = preflight.Preflight()  # one per run, as a sweep shares one: data and model configs read once

    @settings(max_examples=CONFIGS, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(cfg=config_dicts(), fmt=st.sampled_from(["yaml", "json"]), how=st.sampled_from(MUTATIONS),
           cut=st.integers(0, 10_000), junk=st.binary(max_size=8))
    def check(cfg, fmt, how, cut, junk):
        path = tmp_path / f"generated.{fmt}"
        path.write_bytes(mutate(serialize(cfg, fmt), how, cut, junk))
        try:
            checked = prepare(ExperimentConfig.from_file(path))
            checker.check(checked)
        except LoraLabError as exc:
            assert refused_properly(exc, str(path)), f"refused without naming a field or file: {exc}"
            seen["refused"] += 1
            why[f"{type(exc).__name__} {exc.field or '-'}"] += 1
            return
        seen["accepted"] += 1

    check()
    print(f"configs: {seen}; refused by error and field: {dict(why.most_common(12))}")
    assert sum(seen.values()) >= CONFIGS and seen["accepted"] and seen["refused"]


# -- data files ------------------------------------------------------------------------------------------------------

CELLS = st.one_of(
    st.text(max_size=30), st.sampled_from(["", " ", "pos", "neg", "0", "1", "2", "-1", "1e3", "1000000000000",
                                           "a,b", 'say "hi"', "line\nbreak", "\t", "é"]),
    st.integers(-3, 5), st.sampled_from([10**12, 2**63, -(2**63)]), st.floats(allow_nan=True, allow_infinity=True),
    st.none(), st.booleans(), st.lists(st.integers(), max_size=2))
TEXTS = st.one_of(st.text(min_size=1, max_size=40), st.sampled_from(["good", "bad film", "é ü 漢字", "a,b", "x" * 300]))
LABELS = st.sampled_from([["0", "1"], [0, 1, 2], ["pos", "neg", "neutral"], [True, False], ["1", "2", "10"]])
NAMES = st.sampled_from(["text", "label", "prompt", "response", "sentence", "", "label ", "x"])


@st.composite
def tables(draw, task: str) -> tuple[list[str], list[list]]:
    """A table that fits the task, then a few hostile changes: odd cells, renamed, dropped or extra columns."""
    n = draw(st.integers(0, 24))
    if task == "seq-cls":
        columns, pool = ["text", "label"], draw(LABELS)
        rows = [[draw(TEXTS), draw(st.sampled_from(pool))] for _ in range(n)]
    else:
        columns = ["prompt", "response"]
        rows = [[draw(TEXTS), draw(TEXTS)] for _ in range(n)]
    for _ in range(draw(st.integers(0, 3))):
        if rows:
            rows[draw(st.integers(0, len(rows) - 1))][draw(st.integers(0, 1))] = draw(CELLS)
    change = draw(st.sampled_from(["none", "none", "none", "rename", "drop", "extra"]))
    if change == "rename":
        columns[draw(st.integers(0, 1))] = draw(NAMES)
    elif change == "drop":
        columns, rows = columns[:1], [r[:1] for r in rows]
    elif change == "extra":
        columns, rows = columns + [draw(NAMES)], [r + [draw(CELLS)] for r in rows]
    return columns, rows


def table_bytes(columns: list[str], rows: list[list], fmt: str) -> bytes:
    records = [dict(zip(columns, row)) for row in rows]
    if fmt == "jsonl":
        return "".join(json.dumps(r, default=str) + "\n" for r in records).encode()
    if fmt == "json":
        return json.dumps(records, default=str).encode()
    frame = pd.DataFrame(rows, columns=columns) if rows else pd.DataFrame(columns=columns)
    if fmt == "parquet":
        buf = io.BytesIO()
        try:
            frame.to_parquet(buf)
        except Exception:  # noqa: BLE001 - mixed cell types pyarrow cannot store: store them as text
            try:
                frame.astype(str).to_parquet(buf)
            except Exception:  # noqa: BLE001 - duplicate column names: parquet cannot hold them at all
                return b"PAR1" + json.dumps(records, default=str).encode()[:200] + b"PAR1"
        return buf.getvalue()
    return frame.to_csv(index=False, sep="," if fmt == "csv" else "\t").encode()


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer("minilm")  # the bundled tiny models use MiniLM's tokenizer too


def test_generated_data_files_are_accepted_or_refused_by_name(tmp_path, tokenizer):
    seen, why = {"accepted": 0, "refused": 0}, Counter()

    @settings(max_examples=DATA_FILES, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(fmt=st.sampled_from(["csv", "tsv", "json", "jsonl", "parquet"]), task=st.sampled_from(
               ["seq-cls", "causal-lm"]), how=st.sampled_from(["none", "none", "none", "truncate", "garbage"]),
           cut=st.integers(0, 5000), junk=st.binary(max_size=6), draw=st.data())
    def check(fmt, task, how, cut, junk, draw):
        columns, rows = draw.draw(tables(task))
        path = tmp_path / f"generated.{fmt}"
        path.write_bytes(mutate(table_bytes(columns, rows, fmt), how, cut, junk))
        model = "minilm" if task == "seq-cls" else "tiny-random-gpt2"
        try:
            cfg = prepare({"task": task, "model": {"source": model}, "data": {"train": str(path), "max_length": 16}})
            preflight.Preflight().rows(cfg)
        except LoraLabError as exc:
            assert refused_properly(exc, str(path)), f"refused without naming a field or file: {exc}"
            seen["refused"] += 1
            why[re.sub(r"\d+|'[^']*'", "#", str(exc).replace(str(path), "FILE"))[:60]] += 1
            return
        splits = data.load_splits(cfg)  # what the worker does first: must work for every accepted file
        for split in (splits.train, splits.eval):  # and the function its tokenizing maps over the rows
            tokens.encoder(tokenizer, cfg)(split.to_dict())
        seen["accepted"] += 1

    check()
    print(f"data files: {seen}; refused because: {dict(why.most_common(10))}")
    assert sum(seen.values()) >= DATA_FILES and seen["accepted"] and seen["refused"]
