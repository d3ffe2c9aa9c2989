"""Reading tensors out of safetensors files as numpy arrays, without torch: an adapter's A/B matrices and the base
model's weights they adapt.

A safetensors file is an 8-byte header length, a JSON header (name -> dtype, shape, byte offsets) and the raw
bytes; each tensor is read through a memory map, so asking for one weight of a large checkpoint reads that
weight only. bfloat16 (common for hub checkpoints, unknown to numpy) is widened to float32 by a bit shift.

`BaseWeights` finds the weight of a module path in a base model's checkpoint (one file or a sharded index) by
the longest unambiguous suffix of its name: checkpoints saved from a bare encoder name `encoder.layer.0...`
where the task model (and so the adapter) says `bert.encoder.layer.0...`.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

from ..errors import ModelError

_NUMPY = {"F64": np.float64, "F32": np.float32, "F16": np.float16}
INDEX_FILE = "model.safetensors.index.json"  # the Hugging Face name of a sharded checkpoint's index
SINGLE_FILE = "model.safetensors"


class SafetensorsFile:
    """One .safetensors file: its tensor names, shapes and dtypes from the header; `get` reads one tensor."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            with open(self.path, "rb") as f:
                (size,) = struct.unpack("<Q", f.read(8))
                header = json.loads(f.read(size))
        except (OSError, struct.error, ValueError) as exc:
            raise ModelError(f"{self.path} is not a readable safetensors file ({exc})") from None
        header.pop("__metadata__", None)
        self.header: dict[str, dict] = header
        self.data_start = 8 + size

    def keys(self) -> list[str]:
        return list(self.header)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.header[name]["shape"])

    def dtype(self, name: str) -> str:
        return self.header[name]["dtype"]

    def get(self, name: str) -> np.ndarray:
        """The tensor as a float numpy array (bf16 widened to float32); ModelError for integer or packed 4-bit
        tensors, which are not weights we can do arithmetic on."""
        info = self.header[name]
        start, end = info["data_offsets"]
        shape = tuple(info["shape"])
        kind = info["dtype"]
        if end == start:
            return np.zeros(shape, dtype=np.float32)
        raw = np.memmap(self.path, dtype=np.uint8, mode="r", offset=self.data_start + start, shape=(end - start,))
        if kind == "BF16":
            return (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32).reshape(shape)
        if kind not in _NUMPY:
            raise ModelError(f"{self.path}: tensor {name} is stored as {kind} (quantized or integer), not as "
                             "floating-point weights")
        return np.asarray(raw.view(_NUMPY[kind]).reshape(shape))


class BaseWeights:
    """The weights of a base model on disk, looked up by module path (see the module docstring)."""

    def __init__(self, files: list[Path], where: str):
        self.where = where
        self.files = {}
        for path in files:
            sf = SafetensorsFile(path)
            for key in sf.keys():
                self.files[key] = sf
        self.keys = sorted(self.files)

    @classmethod
    def from_folder(cls, folder: str | Path) -> "BaseWeights":
        folder = Path(folder)
        index = folder / INDEX_FILE
        if index.is_file():
            shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            files = [folder / s for s in shards]
        else:
            files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise ModelError(f"{folder} holds no .safetensors weights (a PyTorch .bin checkpoint cannot be read "
                             "without loading the model)")
        return cls(files, str(folder))

    def find(self, module: str) -> str | None:
        """The checkpoint key of `module`'s weight: the longest suffix of `module.weight` that names exactly
        one tensor; None when there is none (or every suffix is ambiguous)."""
        parts = f"{module}.weight".split(".")
        for i in range(len(parts) - 1):
            tail = ".".join(parts[i:])
            found = [k for k in self.keys if k == tail or k.endswith("." + tail)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                return None
        return None

    def weight(self, module: str) -> np.ndarray | None:
        key = self.find(module)
        return self.files[key].get(key) if key else None


def base_weights(source: str, revision: str | None = None) -> BaseWeights:
    """The base model's weights: a local folder (bundled models resolve to one), or a hub repo's safetensors
    files from the local cache or a download. ModelError says why they cannot be read."""
    from .. import models  # models imports nothing heavy at the top

    resolved = models.resolve_source(source, revision)
    if Path(resolved).is_dir():
        return BaseWeights.from_folder(resolved)
    return BaseWeights(_hub_files(resolved, revision), f"hub:{resolved}")


def _hub_files(repo: str, revision: str | None) -> list[Path]:
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        try:
            index = Path(hf_hub_download(repo, INDEX_FILE, revision=revision))
        except EntryNotFoundError:
            return [Path(hf_hub_download(repo, SINGLE_FILE, revision=revision))]
        shards = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        return [Path(hf_hub_download(repo, s, revision=revision)) for s in shards]
    except Exception as exc:  # offline, gated, no safetensors: the inspector goes on without base weights
        raise ModelError(f"cannot read the safetensors weights of {repo!r} ({type(exc).__name__}: {exc})") from None
