"""Dataset uploads (lora_core.uploads): checked like any data file against the chosen task and columns, kept
once per content, listed for reuse; every refusal says what is wrong and leaves nothing in the uploads folder."""
import io
import zipfile

import pandas as pd
import pytest

from helpers import tiny_config
from lora_core import uploads
from lora_core.errors import DataError
from lora_core.runs import layout

CSV = b"text,label\ngood film,1\nbad film,0\ngreat,1\nawful,0\n"
LIMIT = 1_000_000


def store(runs_dir, name, content, cfg=None):
    return uploads.store(runs_dir, name, content, cfg or tiny_config(), by="otto", max_bytes=LIMIT)


def left_in_uploads(runs_dir) -> list[str]:
    folder = layout.uploads_dir(runs_dir)
    return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []


def test_a_valid_csv_is_kept_once_by_its_content(runs_dir):
    first = store(runs_dir, "reviews.csv", CSV)
    again = store(runs_dir, "same-bytes-other-name.csv", CSV)
    assert first.path == again.path and first.path.read_bytes() == CSV
    assert first.path.parent == layout.uploads_dir(runs_dir) and first.path.suffix == ".csv"
    listed = uploads.list_uploads(runs_dir)
    assert [(u.name, u.uploaded_by, u.size) for u in listed] == [("reviews.csv", "otto", len(CSV))]
    assert len([n for n in left_in_uploads(runs_dir) if n.endswith(".csv")]) == 1


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".tsv", ".parquet"])
def test_every_data_format_uploads(runs_dir, suffix):
    frame = pd.DataFrame({"text": ["good", "bad", "fine", "awful"], "label": [1, 0, 1, 0]})
    content = {".jsonl": frame.to_json(orient="records", lines=True).encode(),
               ".json": frame.to_json(orient="records").encode(),
               ".tsv": frame.to_csv(sep="\t", index=False).encode()}.get(suffix)
    if content is None:
        buf = io.BytesIO()
        frame.to_parquet(buf)
        content = buf.getvalue()
    assert store(runs_dir, f"data{suffix}", content).path.suffix == suffix


def zip_bytes() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("train.csv", CSV.decode())
    return buf.getvalue()


@pytest.mark.parametrize("name, content, message", [
    ("big.csv", CSV + b"x,1\n" * 300_000, "is more than this server's upload limit of 1 MB"),
    ("latin1.csv", "text,label\ncafé crème,1\nbad,0\n".encode("latin-1"), "not valid UTF-8 at byte offset"),
    ("columns.csv", b"sentence,stars\ngood,5\nbad,1\n", r"no column 'text' \(data.text_column\)"),
    ("archive.csv", zip_bytes(), "this is a zip archive"),
    ("notes.txt", CSV, "unknown file suffix '.txt'"),
    ("fake.parquet", CSV, "not a Parquet file"),
    ("one-class.csv", b"text,label\ngood,1\nfine,1\n", "only one class"),
    ("empty.csv", b"", "the file is empty"),
])
def test_bad_files_are_refused_and_nothing_is_kept(runs_dir, name, content, message):
    with pytest.raises(DataError, match=message) as err:
        store(runs_dir, name, content)
    assert str(err.value).startswith(name)  # named by the user's file name, never a temporary path
    assert left_in_uploads(runs_dir) == []


def test_a_causal_lm_upload_needs_prompt_and_response(runs_dir):
    cfg = tiny_config(**{"task": "causal-lm", "data.train": "sample:instructions"})
    with pytest.raises(DataError, match="no column 'prompt'"):
        store(runs_dir, "chat.csv", CSV, cfg)
    assert store(runs_dir, "chat.csv", b"prompt,response\nHi,Hello\nBye,See you\n", cfg).path.is_file()
