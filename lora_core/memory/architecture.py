"""The `model` argument -> the architecture the estimator simulates.

`model` is a preset name (see presets.MODEL_PRESETS), a config dict, a config.json file, a model directory, a hub
id, or a bare parameter count ("7e9"). All but the count become a `structure.ModelStructure` through
`models.config_structure` / `models.model_structure`: the task model is described once on the meta device and
read from the model cache afterwards, so an estimate for a model seen before imports no torch. A bare count gets
a Llama-like stand-in with exact totals.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from .. import models, structure
from ..errors import EstimateError, LoraLabError
from ..paths import is_local_path
from ..structure import ModelStructure
from .presets import MODEL_PRESETS, preset_config, preset_key

MAX_PARAMS = 1e15  # far beyond any model; bounds the arithmetic on a typo like 1e999
_PARAM_COUNT = re.compile(r"^\s*(\d+(?:\.\d+)?(?:e\d+)?)\s*([kmbt]?)\s*$", re.I)


@dataclass(frozen=True)
class ModelRef:
    """What the `model` argument names: a config.json dict, a model source (directory or hub id), or a count."""
    label: str
    config: dict | None = None
    source: str | None = None
    revision: str | None = None
    count: int = 0

    def default_task(self) -> str:
        return "causal-lm" if self.count else structure.default_task(self.config_json())

    def config_json(self) -> dict:
        if self.config is not None:
            return self.config
        try:
            return models.config_json(self.source, self.revision)
        except LoraLabError as exc:
            raise _not_found(self.label, exc) from None

    def architecture(self, task: str, num_labels: int, trust_remote_code: bool) -> Architecture:
        if self.count:
            raw = raw_structure(self.count, task, num_labels)
            dims = raw.dims
            return architecture(raw, self.label, note=f"a bare parameter count: shapes assumed Llama-like "
                                f"(h={dims['hidden']}, {dims['layers']} layers, vocab {dims['vocab']}); totals "
                                "exact, activations approximate")
        return architecture(self.describe(task, num_labels, trust_remote_code), self.label)

    def describe(self, task: str, num_labels: int, trust_remote_code: bool) -> ModelStructure:
        try:
            if self.source is not None:
                return models.model_structure(self.source, task, num_labels, trust_remote_code, self.revision)
            return models.config_structure(self.config, task, num_labels, trust_remote_code)
        except LoraLabError as exc:
            raise _not_found(self.label, exc) from None
        except (ValueError, KeyError) as exc:  # transformers: an unknown model_type, or no head for the task
            raise EstimateError(f"model: {self.label} cannot be built as a {task} model by this transformers "
                                f"version ({_first_line(exc)})") from None


def _not_found(label: str, exc: Exception) -> EstimateError:
    return EstimateError(f"model: {label!r} is not a preset ({', '.join(MODEL_PRESETS)}), a parameter count like "
                         f"7e9, a local config.json or model directory, or a reachable hub id: {_first_line(exc)}")


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def model_ref(model) -> ModelRef:
    """Read the `model` argument (see the module docstring); EstimateError names what is wrong with it."""
    if isinstance(model, ModelRef):
        return model
    if isinstance(model, dict):
        if "model_type" not in model:
            raise EstimateError("model: a config dict needs a 'model_type' key (as in config.json)")
        return ModelRef(str(model.get("_name_or_path") or model["model_type"]), config=dict(model))
    if isinstance(model, (int, float)) and not isinstance(model, bool):
        return _count_ref(model)
    text = str(model or "").strip()
    if not text:
        raise EstimateError("model: must not be empty; give a preset (" + ", ".join(MODEL_PRESETS) + "), a "
                            "config.json or model directory, a hub id, or a parameter count like 7e9")
    match = _PARAM_COUNT.match(text)
    if match:
        return _count_ref(float(match.group(1)) * {"": 1, "k": 1e3, "m": 1e6, "b": 1e9, "t": 1e12}[match.group(2).lower()])
    key = preset_key(text)
    if key is not None:
        return ModelRef(key, config=preset_config(key))
    path = Path(text).expanduser()
    if path.is_file():
        try:
            return ModelRef(path.parent.name or path.name, config=models.read_config_json(path, field="model"))
        except LoraLabError as exc:
            raise EstimateError(str(exc)) from None
    if path.is_dir() and not (path / "config.json").is_file():
        raise EstimateError(f"model: {path} has no config.json, so it is not a model directory")
    if is_local_path(text) and not path.exists():
        raise EstimateError(f"model: {text!r} does not exist")
    return ModelRef(path.name if path.is_dir() else text, source=str(path) if path.is_dir() else text)


def _count_ref(count: float) -> ModelRef:
    if not math.isfinite(count) or not 1 <= count <= MAX_PARAMS:
        raise EstimateError(f"model: a parameter count must be from 1 to {MAX_PARAMS:.0e}, got {count:g}")
    return ModelRef(f"{format_count(int(count))} params", count=int(count))


def format_count(n: int) -> str:
    for unit, size in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return str(n)


# -- what the simulation reads -------------------------------------------------------------------------------------

@dataclass
class Linear:
    name: str          # full module name
    leaf: str
    rel: str | None    # name inside its transformer layer ("self_attn.q_proj"), None outside the layers
    layer: int | None
    d_in: int
    d_out: int
    bias: int          # bias numel (0 without)
    head: bool         # classifier / lm_head: never quantized, never a LoRA target
    kind: str          # Linear | Conv1D


@dataclass
class Architecture:
    label: str
    model_type: str
    family: str        # bert | distilbert | gpt2 | llama: which layer the activation model replays
    task: str
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    mlp: int           # MLP width
    vocab: int
    act: str
    p_attn: float
    p_hidden: float
    p_emb: float
    type_vocab: int
    max_pos: int
    structure: ModelStructure
    linears: list = field(default_factory=list)      # [Linear]
    embeddings: list = field(default_factory=list)   # [name, num, dim]
    head_modules: tuple = ()
    tied: bool = False
    buffers: int = 0   # bytes of registered buffers (position ids, rotary frequencies)
    family_note: str = ""

    @property
    def total(self) -> int:
        return self.structure.total


def architecture(described: ModelStructure, label: str, note: str = "") -> Architecture:
    prefix = described.layers_prefix
    heads = tuple(described.heads)
    linears = []
    for x in described.linears:
        name, layer, rel = x["name"], None, None
        if prefix and name.startswith(prefix):
            index, _, rel = name[len(prefix):].partition(".")
            layer = int(index) if index.isdigit() else None
        linears.append(Linear(name, name.split(".")[-1], rel, layer, x["in"], x["out"], x["bias"],
                              name.split(".")[0] in heads, x["type"]))
    family, guessed = _family(described, linears)
    return Architecture(label=label, model_type=described.model_type, family=family, task=described.task,
                        **described.dims, structure=described, linears=linears,
                        embeddings=[tuple(e) for e in described.embeddings], head_modules=heads,
                        tied=described.tied_embeddings, buffers=described.buffer_bytes,
                        family_note=note or guessed)


def _family(described: ModelStructure, linears: list) -> tuple[str, str]:
    family = described.family
    if family is not None:
        return family, ""
    gated = any(lin.leaf in ("gate_proj", "w1", "gate_up_proj") for lin in linears)
    family = "llama" if gated else ("gpt2" if described.task == "causal-lm" else "bert")
    return family, f"activations of {described.model_type} are modelled on the {family} family " \
                   "(parameters are exact)"


def raw_structure(count: int, task: str, num_labels: int) -> ModelStructure:
    """A Llama-like stand-in for a bare parameter count: hidden size and depth on the usual curve (L/h as in
    Llama-2-7B), a 32k vocabulary. The total is the count given; LoRA counts and activations are approximate."""
    vocab = 32000
    hidden = 64 * max(2, round((count / 12 / 0.0078 / 64 ** 3) ** (1 / 3)))
    mlp = int(round(2.6875 * hidden / 64) * 64)
    layers = max(1, round((count - 2 * vocab * hidden) / (4 * hidden * hidden + 3 * hidden * mlp + 2 * hidden)))
    linears = [{"name": f"model.layers.{i}.{rel}", "type": "Linear", "in": d_in, "out": d_out, "bias": 0}
               for i in range(layers)
               for rel, d_in, d_out in (("self_attn.q_proj", hidden, hidden), ("self_attn.k_proj", hidden, hidden),
                                        ("self_attn.v_proj", hidden, hidden), ("self_attn.o_proj", hidden, hidden),
                                        ("mlp.gate_proj", hidden, mlp), ("mlp.up_proj", hidden, mlp),
                                        ("mlp.down_proj", mlp, hidden))]
    head = "lm_head" if task == "causal-lm" else "score"
    linears.append({"name": head, "type": "Linear", "in": hidden, "out": vocab if task == "causal-lm"
                    else num_labels, "bias": 0})
    params = [[x["name"] + ".weight", x["in"] * x["out"], None] for x in linears]
    params.append(["model.embed_tokens.weight", max(0, count - sum(p[1] for p in params)), None])
    heads = max(1, hidden // 128)
    return ModelStructure(
        model_type="llama", task=task, num_labels=num_labels,
        dims={"hidden": hidden, "heads": heads, "layers": layers, "kv_heads": heads, "head_dim": 128, "mlp": mlp,
              "vocab": vocab, "act": "silu", "p_attn": 0.0, "p_hidden": 0.0, "p_emb": 0.0, "type_vocab": 0,
              "max_pos": 0},
        layers_prefix="model.layers.",
        modules=[[x["name"], "Linear"] for x in linears] + [["model.embed_tokens", "Embedding"]],
        linears=linears, embeddings=[["model.embed_tokens", vocab, hidden]], params=params, heads=[head],
        tied_embeddings=False, buffer_bytes=0, saved_buffer_bytes=0)
