"""Datasets for a run: bundled samples, local files and hub ids, validated, split, label-mapped and tokenized.

    splits = load_splits(cfg)                  # Splits(train, eval, label_map, fingerprint)
    train_ds, eval_ds = tokenize(splits, tokenizer, cfg)
    collate = make_collator(cfg, tokenizer)

Every refusal is a `DataError` that names the file, the column and the row (rows are counted from 1, header not
counted), so a bad CSV is caught before a worker starts. The splits always carry canonical columns:
`text`, `label` (int ids) for seq-cls and `prompt`, `response` for causal-lm.

pandas is imported at module level (pages use `preview`); `datasets` and `torch` only inside functions.
"""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .config import MAX_CLASSES, SAMPLE_DATASETS, ExperimentConfig
from .errors import DataError
from .paths import DATA_SUFFIXES, is_local_path
from .tokens import IGNORE_INDEX, encode_causal

SAMPLES_DIR = Path(__file__).resolve().parent / "samples"
SAMPLE_FILES = {
    "sample:sentiment-2": "sentiment-2.csv",
    "sample:sentiment-3": "sentiment-3.csv",
    "sample:instructions": "instructions.jsonl",
}


@dataclass
class Rows:
    """The checked rows of a config's data, before they become datasets: canonical columns ({text, label} or
    {prompt, response}), labels as ids. What the pre-launch check reads, without importing `datasets`."""
    train: dict[str, list]
    eval: dict[str, list]
    label_map: dict[str, int] | None
    train_source: str
    eval_source: str

    @property
    def num_labels(self) -> int:
        return max(self.label_map.values()) + 1 if self.label_map else 0


@dataclass
class Splits:
    train: Any                        # datasets.Dataset with canonical columns
    eval: Any                         # datasets.Dataset, same columns
    label_map: dict[str, int] | None  # label name -> id (seq-cls), None for causal-lm
    fingerprint: str                  # hash of the rows actually used (content, not paths)
    train_source: str = ""
    eval_source: str = ""

    @property
    def num_labels(self) -> int:
        return max(self.label_map.values()) + 1 if self.label_map else 0

    @property
    def id2label(self) -> dict[int, str] | None:
        return {i: name for name, i in self.label_map.items()} if self.label_map else None


# -- reading one table ------------------------------------------------------------------------------------------

def is_local(spec: str) -> bool:
    """A bundled sample or a file path (as opposed to a hub dataset id)."""
    return spec.startswith("sample:") or is_local_path(spec, DATA_SUFFIXES)


def resolve_path(spec: str) -> Path:
    """The file behind a sample name or a local path; DataError when it is missing or of an unknown kind."""
    if spec.startswith("sample:"):
        if spec not in SAMPLE_FILES:
            raise DataError(f"unknown bundled sample {spec!r}; allowed: {', '.join(SAMPLE_DATASETS)}")
        return SAMPLES_DIR / SAMPLE_FILES[spec]
    path = Path(spec).expanduser()
    if path.is_dir():
        raise DataError(f"{path}: is a folder; give a data file ({', '.join(DATA_SUFFIXES)})")
    if path.suffix.lower() not in DATA_SUFFIXES:
        raise DataError(f"{path}: unknown file suffix {path.suffix or '(none)'!r}; "
                        f"allowed: {', '.join(DATA_SUFFIXES)}")
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():  # a FIFO or a device (/dev/zero) named like a data file would hang the reader
        raise DataError(f"{path}: not a regular file")
    return path


def _decode(path: Path, raw: bytes, header_lines: int) -> str:
    try:
        return raw.decode("utf-8-sig")  # a BOM from Excel is fine
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        row = line - header_lines
        where = f"line {line}, row {row}" if row >= 1 else f"line {line} (the header)"
        raise DataError(f"{path}: bytes are not valid UTF-8 at byte offset {exc.start} ({where}): "
                        f"{raw[exc.start:exc.start + 4]!r}; re-save the file as UTF-8") from None


def _read_jsonl(path: Path, text: str) -> pd.DataFrame:
    records = []
    for line_no, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {line_no} (row {len(records) + 1}) is not valid JSON: {exc.msg}") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {line_no} (row {len(records) + 1}) is not a JSON object")
        records.append(record)
    return pd.DataFrame.from_records(records)


def _read_json(path: Path, text: str) -> pd.DataFrame:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} / {"train": [...]}
    if isinstance(data, list):
        bad = next((i for i, r in enumerate(data) if not isinstance(r, dict)), None)
        if bad is not None:
            raise DataError(f"{path}: row {bad + 1} is not a JSON object")
        return pd.DataFrame.from_records(data)
    if isinstance(data, dict) and all(isinstance(v, list) for v in data.values()):
        lengths = {len(v) for v in data.values()}
        if len(lengths) > 1:
            raise DataError(f"{path}: columns have different lengths {sorted(lengths)}")
        return pd.DataFrame(data)
    raise DataError(f"{path}: expected a list of objects or an object of column lists")


def read_file(path: Path, label: str | None = None) -> pd.DataFrame:
    """Read a local data file into a DataFrame (strings stay strings: CSV cells are read as text). Whatever the
    bytes are, the answer is a DataFrame or a DataError naming the file (as `label`, e.g. an upload's own name,
    when given)."""
    name = label or path  # only names the file in messages
    try:
        df = _read_file(path, name)
    except DataError:
        raise
    except (ValueError, TypeError, OverflowError, RecursionError, csv.Error) as exc:  # parsers' other refusals
        raise DataError(f"{name}: cannot read as {path.suffix.lstrip('.').upper() or 'data'}: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    except OSError as exc:
        raise DataError(f"{name}: cannot read the file: {exc.strerror or exc}") from None
    if len(df) == 0:
        columns = ", ".join(map(str, df.columns)) or "none"
        raise DataError(f"{name}: the file is empty (no data rows; columns: {columns[:300]})")
    twice = next((c for c in df.columns[df.columns.duplicated()]), None)  # e.g. "text" and " text" once trimmed
    if twice is not None:  # df[column] would be a table, not a column, and every check downstream would break
        raise DataError(f"{name}: column {str(twice)!r} appears more than once (names are compared without "
                        f"surrounding spaces); rename one of them")
    return df.reset_index(drop=True)


def _read_file(real: Path, path: Path | str) -> pd.DataFrame:
    suffix = real.suffix.lower()  # `path` below only names the file in messages
    if suffix == ".parquet":
        try:
            return pd.read_parquet(real)
        except Exception as exc:  # pyarrow raises several types for a corrupt file
            raise DataError(f"{path}: cannot read as Parquet: {exc}") from None
    raw = real.read_bytes()
    if not raw.strip():
        raise DataError(f"{path}: the file is empty")
    text = _decode(path, raw, header_lines=1 if suffix in (".csv", ".tsv") else 0)
    if suffix in (".csv", ".tsv"):
        try:
            df = pd.read_csv(io.StringIO(text), sep="," if suffix == ".csv" else "\t", dtype=str,
                             keep_default_na=False, quoting=3 if suffix == ".tsv" else 0)
        except pd.errors.EmptyDataError:
            raise DataError(f"{path}: the file is empty") from None
        except pd.errors.ParserError as exc:
            raise DataError(f"{path}: cannot parse as {suffix[1:].upper()}: {exc}") from None
        df.columns = [str(c).strip() for c in df.columns]
        return df
    if suffix == ".jsonl":
        return _read_jsonl(path, text)
    return _read_json(path, text)


def read_hub(dataset_id: str, subset: str | None, split: str) -> pd.DataFrame:
    """A hub dataset split as a DataFrame; df.attrs["class_names"] = {column: {id: name}} for ClassLabel
    columns, so ids keep their dataset names in the label map."""
    import datasets

    name = _hub_name(dataset_id, subset, split)
    try:
        ds = datasets.load_dataset(dataset_id, subset, split=split)
    except Exception as exc:
        offline = "the dataset hub is offline here (HF_DATASETS_OFFLINE=1) and it is not in the local cache; " \
            if datasets.config.HF_DATASETS_OFFLINE else ""
        raise DataError(f"{name}: cannot load it: {offline}{type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''} (use a local csv/tsv/json/jsonl/parquet file "
                        f"or a bundled sample: {', '.join(SAMPLE_DATASETS)})") from None
    names = {}
    for column, feature in ds.features.items():
        if isinstance(feature, datasets.ClassLabel):
            names[column] = dict(enumerate(feature.names))
    df = ds.to_pandas()
    if len(df) == 0:
        raise DataError(f"{name}: the split is empty")
    df = df.reset_index(drop=True)
    df.attrs["class_names"] = names
    return df


def read_table(spec: str, *, subset: str | None = None, split: str = "train") -> tuple[pd.DataFrame, str]:
    """(rows, a name for messages) for a sample, a local file or a hub id."""
    if is_local(spec):
        path = resolve_path(spec)
        return read_file(path), str(path)
    return read_hub(spec, subset, split), _hub_name(spec, subset, split)


def _hub_name(dataset_id: str, subset: str | None, split: str) -> str:
    return f"hub dataset {dataset_id}" + (f" ({subset})" if subset else "") + f" split {split!r}"


# -- checking columns and cells ---------------------------------------------------------------------------------

def require_columns(df: pd.DataFrame, source: str, columns: dict[str, str]) -> None:
    """columns: config field -> column name; a missing one is named with the columns that exist."""
    for field_name, column in columns.items():
        if column not in df.columns:
            raise DataError(f"{source}: no column {column!r} (data.{field_name}); columns in the file: "
                            f"{', '.join(map(str, df.columns))}")


def _is_blank(value: Any) -> bool:
    if isinstance(value, str):
        return not value.strip()
    if isinstance(value, (list, dict, tuple, np.ndarray)):  # a parquet list cell arrives as an array
        return False
    return value is None or bool(pd.isna(value))


def check_text(df: pd.DataFrame, source: str, column: str) -> list[str]:
    """The column as a list of non-empty strings; DataError names the first empty cell."""
    values = df[column].tolist()
    for i, value in enumerate(values):
        if _is_blank(value):
            raise DataError(f"{source}: column {column!r}, row {i + 1}: the text is empty")
    return [v if isinstance(v, str) else str(v) for v in values]


_INT = re.compile(r"^[+-]?\d+$")


def check_labels(df: pd.DataFrame, source: str, column: str) -> list:
    """Labels as ints when every one is a whole number (0, 1, "2"), else as strings."""
    values = df[column].tolist()
    for i, value in enumerate(values):
        if _is_blank(value):
            raise DataError(f"{source}: column {column!r}, row {i + 1}: the label is empty")
    as_int = []
    for value in values:
        if isinstance(value, (bool, np.bool_)):
            break
        if isinstance(value, (int, np.integer)) or (isinstance(value, float) and value.is_integer()):
            as_int.append(int(value))
        elif isinstance(value, str) and _INT.match(value.strip()):
            as_int.append(int(value.strip()))
        else:
            break
    else:
        negative = next((i for i, v in enumerate(as_int) if v < 0), None)
        if negative is not None:
            raise DataError(f"{source}: column {column!r}, row {negative + 1}: label {as_int[negative]} is negative "
                            f"(hub test splits often use -1 for 'no label'; evaluate on a labelled split)")
        big = next((i for i, v in enumerate(as_int) if v >= MAX_CLASSES), None)
        if big is not None:  # integer labels are class ids: the head gets max + 1 outputs
            raise DataError(f"{source}: column {column!r}, row {big + 1}: label {as_int[big]} is out of range; "
                            f"integer labels are class ids 0..{MAX_CLASSES - 1} (use names for other values)")
        return as_int
    return [str(v).strip() for v in values]


def build_label_map(train_labels: list, class_names: dict[int, str] | None = None) -> dict[str, int]:
    """Label name -> id. String labels: sorted, ids 0..k-1 (stable across runs). Int labels keep their value."""
    distinct = sorted(set(train_labels))
    if distinct and isinstance(distinct[0], int):
        return {(class_names or {}).get(v, str(v)): v for v in distinct}
    return {name: i for i, name in enumerate(distinct)}


# -- splitting and sampling -------------------------------------------------------------------------------------

def stratified_split(labels: list | None, n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, eval): `fraction` of each class goes to eval (at least one row of every class that has
    two or more, so eval covers every class), drawn with a seeded generator. labels None: a plain split."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(n)] if labels is None else \
        [np.flatnonzero(np.asarray(labels, dtype=object) == v) for v in sorted(set(labels))]
    train_idx, eval_idx = [], []
    for idx in groups:
        idx = rng.permutation(idx)
        k = int(round(len(idx) * fraction))
        k = min(max(k, 1 if len(idx) >= 2 else 0), len(idx) - 1)
        eval_idx.append(idx[:k])
        train_idx.append(idx[k:])
    return np.sort(np.concatenate(train_idx)), np.sort(np.concatenate(eval_idx))


def take_sample(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Indices of at most `limit` rows, a seeded random choice kept in file order."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=limit, replace=False))


# -- the splits for a config ------------------------------------------------------------------------------------

def _columns(cfg: ExperimentConfig) -> dict[str, str]:
    d = cfg.data
    if cfg.task == "seq-cls":
        return {"text_column": d.text_column, "label_column": d.label_column}
    return {"prompt_column": d.prompt_column, "response_column": d.response_column}


def _canonical(df: pd.DataFrame, source: str, cfg: ExperimentConfig) -> dict[str, list]:
    """Checked, canonical columns: {text, label} or {prompt, response}."""
    cols = _columns(cfg)
    require_columns(df, source, cols)
    if cfg.task == "seq-cls":
        return {"text": check_text(df, source, cols["text_column"]),
                "label": check_labels(df, source, cols["label_column"])}
    return {"prompt": check_text(df, source, cols["prompt_column"]),
            "response": check_text(df, source, cols["response_column"])}


def check_table(df: pd.DataFrame, source: str, cfg: ExperimentConfig) -> None:
    """DataError unless the rows have the config's columns with usable cells (and, for seq-cls, two classes): the
    checks a training run makes, for a file before it is kept (an upload)."""
    table = _canonical(df, source, cfg)
    if cfg.task == "seq-cls" and len(set(table["label"])) < 2:
        raise DataError(f"{source}: column {cfg.data.label_column!r} has only one class; classification needs at "
                        "least two")


def _rows(table: dict[str, list], idx: np.ndarray) -> dict[str, list]:
    return {k: [v[i] for i in idx] for k, v in table.items()}


def _load_eval_table(cfg: ExperimentConfig) -> tuple[pd.DataFrame, str] | None:
    d = cfg.data
    if d.eval:
        split = d.eval_split or ("validation" if not is_local(d.eval) else "train")
        return read_table(d.eval, subset=d.subset, split=split)
    if d.eval_split and not is_local(d.train):
        return read_table(d.train, subset=d.subset, split=d.eval_split)
    return None


def fingerprint(train: dict[str, list], evals: dict[str, list], label_map: dict | None) -> str:
    h = hashlib.sha256()
    for name, table in (("train", train), ("eval", evals)):
        h.update(name.encode())
        h.update(json.dumps(table, ensure_ascii=False, sort_keys=True, default=str).encode("utf-8"))
    h.update(json.dumps(label_map, sort_keys=True).encode())
    return h.hexdigest()[:16]


def check_rows(cfg: ExperimentConfig) -> Rows:
    """Read, check, split and sample the data of a config; labels mapped to ids. Everything a run does with its
    data before tokenizing, so the pre-launch check refuses what the worker would (DataError names the file,
    the column and the row)."""
    d = cfg.data
    seed = d.seed if d.seed is not None else cfg.train.seed
    train_df, train_src = read_table(d.train, subset=d.subset, split=d.train_split)
    train = _canonical(train_df, train_src, cfg)
    class_names = (train_df.attrs.get("class_names") or {}).get(d.label_column)
    classes = len(set(train["label"])) if cfg.task == "seq-cls" else 0
    if classes > MAX_CLASSES:  # before splitting: a class per row would otherwise fail as "too few rows"
        raise DataError(f"{train_src}: column {d.label_column!r} has {classes:,} classes; at most {MAX_CLASSES} are "
                        f"supported (is {d.label_column!r} really the label column?)")

    eval_table = _load_eval_table(cfg)
    if eval_table is not None:
        eval_df, eval_src = eval_table
        evals = _canonical(eval_df, eval_src, cfg)
    else:
        labels = train["label"] if cfg.task == "seq-cls" else None
        train_idx, eval_idx = stratified_split(labels, len(train_df), d.eval_fraction, seed)
        if len(eval_idx) == 0:
            raise DataError(f"{train_src}: {len(train_df)} row(s) are too few to hold out an eval split "
                            f"(data.eval_fraction {d.eval_fraction}); add rows or give data.eval")
        train, evals = _rows(train, train_idx), _rows(train, eval_idx)
        eval_src = f"{train_src} (held-out {d.eval_fraction:g})"

    train = _rows(train, take_sample(len(next(iter(train.values()))), d.max_train_samples, seed))
    evals = _rows(evals, take_sample(len(next(iter(evals.values()))), d.max_eval_samples, seed + 1))

    label_map = None
    if cfg.task == "seq-cls":
        label_map = _map_labels(train, evals, train_src, eval_src, d.label_column, class_names)
    return Rows(train, evals, label_map, train_src, eval_src)


def load_splits(cfg: ExperimentConfig) -> Splits:
    """The checked rows (check_rows) as datasets, with the fingerprint of the rows actually used."""
    import datasets

    rows = check_rows(cfg)
    fp = fingerprint(rows.train, rows.eval, rows.label_map)
    return Splits(datasets.Dataset.from_dict(rows.train), datasets.Dataset.from_dict(rows.eval), rows.label_map, fp,
                  rows.train_source, rows.eval_source)


def _map_labels(train: dict, evals: dict, train_src: str, eval_src: str, column: str,
                class_names: dict[int, str] | None) -> dict[str, int]:
    """Check the classes and replace labels by ids in place; returns name -> id."""
    seen = sorted(set(train["label"]), key=str)
    if len(seen) < 2:
        raise DataError(f"{train_src}: column {column!r} has only one class ({seen[0]!r}) in the training rows; "
                        f"classification needs at least two")
    if {type(v) for v in train["label"]} != {type(v) for v in evals["label"]}:
        # "1" vs 1: make both sides text so the unseen-label check below names them
        train["label"] = [str(v) for v in train["label"]]
        evals["label"] = [str(v) for v in evals["label"]]
    known = set(train["label"])
    for i, value in enumerate(evals["label"]):
        if value not in known:
            raise DataError(f"{eval_src}: column {column!r}, row {i + 1}: label {value!r} does not occur in the "
                            f"training rows (train labels: {', '.join(map(str, sorted(known, key=str)))})")
    label_map = build_label_map(train["label"], class_names)
    to_id = label_map if isinstance(train["label"][0], str) else {v: v for v in known}
    train["label"] = [to_id[v] for v in train["label"]]
    evals["label"] = [to_id[v] for v in evals["label"]]
    return label_map


# -- for the dashboard's dataset picker -------------------------------------------------------------------------

def preview(spec: str, n: int = 5, *, subset: str | None = None, split: str = "train",
            **columns: str) -> pd.DataFrame:
    """The first n rows of a dataset. Columns given as keywords (text_column="sentence") must exist, and are
    shown first."""
    df, source = read_table(spec, subset=subset, split=split)
    wanted = {k: v for k, v in columns.items() if v}
    require_columns(df, source, wanted)
    order = list(dict.fromkeys([*wanted.values(), *map(str, df.columns)]))
    return df[order].head(n).reset_index(drop=True)


def label_counts(spec: str, label_column: str = "label", *, subset: str | None = None,
                 split: str = "train") -> dict[str, int]:
    """Rows per label, sorted by label (for a class-balance glance before launching)."""
    df, source = read_table(spec, subset=subset, split=split)
    require_columns(df, source, {"label_column": label_column})
    labels = check_labels(df, source, label_column)
    counts: dict = {}
    for value in labels:
        counts[value] = counts.get(value, 0) + 1
    return {str(k): counts[k] for k in sorted(counts)}


# -- what the model will see --------------------------------------------------------------------------------

def tokenized_preview(cfg: ExperimentConfig, tokenizer, n: int = 3) -> list[dict]:
    """What the model will see for the first n training rows: tokens, and which of them the loss is computed on
    (causal-lm with mask_prompt: the response only). For checking a dataset config before launching; the
    tokenizer is the model's (`models.load_tokenizer`)."""
    splits = load_splits(cfg)
    rows = splits.train.select(range(min(n, len(splits.train))))
    out = []
    if cfg.task == "seq-cls":
        for text, label in zip(rows["text"], rows["label"]):
            ids = tokenizer(text, truncation=True, max_length=cfg.data.max_length)["input_ids"]
            out.append({"tokens": tokenizer.convert_ids_to_tokens(ids), "label": splits.id2label[label],
                        "label_id": label})
        return out
    enc = encode_causal(tokenizer, rows["prompt"], rows["response"], cfg.data.max_length, cfg.data.mask_prompt)
    for ids, labels in zip(enc["input_ids"], enc["labels"]):
        out.append({"tokens": tokenizer.convert_ids_to_tokens(ids),
                    "in_loss": [x != IGNORE_INDEX for x in labels]})
    return out

