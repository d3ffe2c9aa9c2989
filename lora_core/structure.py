"""What a model looks like, as plain data: its family, adaptable layers with shapes and biases, heads, every
parameter, and the dimensions the memory estimator needs. Trainable-parameter counts for any method and LoRA
settings are arithmetic on that description, so the dashboard needs no torch for a model it has seen before.

    structure = describe(meta_model, config, task, num_labels)   # once, on the meta device (torch)
    count(structure, "lora", cfg.lora)                           # then any r / targets / bias / method: no torch

`models.model_structure` keeps descriptions in the model cache (see there); this module owns the format, the
one table of model families, the layer presets and PEFT's rules for what trains, and imports no heavy library
at module level. The counts equal PEFT's `get_nb_trainable_parameters()` after a real load (tests check it).
"""
from __future__ import annotations

import json
import os
import re
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import LORA_PRESETS
from .errors import ModelError

FORMAT = 1          # bump when the description changes shape: old cache files are then ignored
ENGINE_BYTES = 4    # the engine loads every model in fp32 (models.load_model), so a saved tensor is 4 B/element

# model_type -> (family, decoder). The family picks the LoRA presets and the estimator's activation model;
# decoders default to causal-lm. None: outside the four families (presets come from the layers' names).
MODEL_TYPES: dict[str, tuple[str | None, bool]] = {
    "bert": ("bert", False), "roberta": ("bert", False), "xlm-roberta": ("bert", False),
    "camembert": ("bert", False), "electra": ("bert", False),
    "distilbert": ("distilbert", False),
    "gpt2": ("gpt2", True),
    "llama": ("llama", True), "mistral": ("llama", True), "mixtral": ("llama", True), "qwen2": ("llama", True),
    "qwen3": ("llama", True), "gemma": ("llama", True), "gemma2": ("llama", True), "phi3": ("llama", True),
    "olmo": ("llama", True), "olmo2": ("llama", True), "smollm3": ("llama", True),
    "gpt_neo": (None, True), "gpt_neox": (None, True), "gptj": (None, True), "opt": (None, True),
    "bloom": (None, True), "falcon": (None, True), "phi": (None, True), "starcoder2": (None, True),
}
# Family -> LoRA presets by leaf name. "all-linear" for families missing it is every layer outside the head.
FAMILY_PRESETS: dict[str, dict[str, list[str]]] = {
    "bert": {"qv": ["query", "value"], "attention": ["query", "key", "value", "attention.output.dense"]},
    "distilbert": {"qv": ["q_lin", "v_lin"], "attention": ["q_lin", "k_lin", "v_lin", "out_lin"]},
    "gpt2": {"qv": ["c_attn"], "attention": ["c_attn", "attn.c_proj"], "all-linear": ["c_attn", "c_proj", "c_fc"]},
    "llama": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
}


def family(model_type: str) -> str | None:
    return MODEL_TYPES.get(model_type, (None, False))[0]


def default_task(config) -> str:
    """causal-lm for decoders, seq-cls for encoders. `config`: a transformers config or its config.json dict."""
    get = config.get if isinstance(config, dict) else (lambda key: getattr(config, key, None))
    archs = " ".join(get("architectures") or [])
    if MODEL_TYPES.get(get("model_type"), (None, False))[1] or "CausalLM" in archs or "LMHead" in archs:
        return "causal-lm"
    return "seq-cls"


# -- the description ---------------------------------------------------------------------------------------------

@dataclass
class ModelStructure:
    """One task model (e.g. MiniLM with a 3-class head), as JSON-able data. Names are the model's own."""
    model_type: str
    task: str
    num_labels: int
    dims: dict                    # hidden, layers, heads, kv_heads, head_dim, mlp, vocab, act, dropout rates, ...
    layers_prefix: str            # where the transformer layers are, e.g. "bert.encoder.layer."
    modules: list                 # [name, type] of every module (PEFT matches names against all of them)
    linears: list                 # adaptable layers: {name, type, in, out, bias} (bias: its numel, 0 without)
    embeddings: list              # [name, num_embeddings, dim]
    params: list                  # [name, numel, alias]: named_parameters(remove_duplicate=False); alias = the
                                  # first name of a tied tensor (None for the first)
    heads: list                   # top-level modules outside the backbone that hold weights
    tied_embeddings: bool
    buffer_bytes: int             # every registered buffer (resident while training)
    saved_buffer_bytes: int       # persistent buffers: what a full model's state dict adds to its parameters
    format: int = FORMAT

    @property
    def family(self) -> str | None:
        return family(self.model_type)

    @property
    def layers(self) -> list[dict]:
        """models.list_targets' rows: {name, leaf, type, in_features, out_features, params, head}."""
        heads = tuple(self.heads)
        return [{"name": x["name"], "leaf": x["name"].split(".")[-1], "type": x["type"], "in_features": x["in"],
                 "out_features": x["out"], "params": x["in"] * x["out"] + x["bias"],
                 "head": x["name"].split(".")[0] in heads} for x in self.linears]

    @property
    def total(self) -> int:
        """Unique parameters of the task model (a tied tensor once)."""
        return sum(numel for _, numel, alias in self.params if alias is None)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> "ModelStructure":
        return cls(**json.loads(text))


def describe(model, config, task: str, num_labels: int) -> ModelStructure:
    """Walk a task model (on the meta device: shapes, no memory) once and keep what counting and the memory
    estimator need."""
    import torch.nn as nn

    dims = model_dims(config)
    prefix = next((name + "." for name, m in model.named_modules()
                   if isinstance(m, nn.ModuleList) and len(m) == dims["layers"]), "")
    linears, embeddings = [], []
    for name, module in model.named_modules():
        shape = layer_shape(module)
        if shape is not None:
            bias = getattr(module, "bias", None)
            linears.append({"name": name, "type": shape[0], "in": int(shape[1]), "out": int(shape[2]),
                            "bias": int(bias.numel()) if bias is not None else 0})
        elif isinstance(module, nn.Embedding):
            embeddings.append([name, module.num_embeddings, module.embedding_dim])
    first: dict[int, str] = {}
    params = []
    for name, p in model.named_parameters(remove_duplicate=False):
        params.append([name, int(p.numel()), first.get(id(p))])
        first.setdefault(id(p), name)
    names = {id(p) for p in model.parameters()}
    saved_buffers = {id(t): t for t in model.state_dict(keep_vars=True).values() if id(t) not in names}
    out_emb, in_emb = model.get_output_embeddings(), model.get_input_embeddings()
    return ModelStructure(
        model_type=config.model_type, task=task, num_labels=num_labels, dims=dims, layers_prefix=prefix,
        modules=[[name, type(m).__name__] for name, m in model.named_modules(remove_duplicate=False) if name],
        linears=linears, embeddings=embeddings, params=params, heads=head_names(model),
        tied_embeddings=bool(out_emb is not None and in_emb is not None and out_emb.weight is in_emb.weight),
        buffer_bytes=int(sum(b.numel() * b.element_size() for b in model.buffers())),
        saved_buffer_bytes=int(sum(t.numel() * t.element_size() for t in saved_buffers.values())))


def _first(config, *names, default=None):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return default


def model_dims(config) -> dict:
    """Widths, depth, heads, activation and dropout rates, under their many config names."""
    hidden = int(_first(config, "hidden_size", "n_embd", "dim", "d_model"))
    heads = int(_first(config, "num_attention_heads", "n_head", "n_heads"))
    p_hidden = float(_first(config, "hidden_dropout_prob", "resid_pdrop", "dropout", default=0.0))
    return {
        "hidden": hidden, "heads": heads,
        "layers": int(_first(config, "num_hidden_layers", "n_layer", "n_layers", "num_layers")),
        "kv_heads": int(_first(config, "num_key_value_heads", default=heads) or heads),
        "head_dim": int(_first(config, "head_dim", default=hidden // heads) or hidden // heads),
        "mlp": int(_first(config, "intermediate_size", "n_inner", "hidden_dim", "ffn_dim", default=4 * hidden)
                   or 4 * hidden),
        "vocab": int(getattr(config, "vocab_size", 0) or 0),
        "act": str(_first(config, "hidden_act", "activation_function", "activation", default="gelu")),
        "p_attn": float(_first(config, "attention_probs_dropout_prob", "attn_pdrop", "attention_dropout",
                               default=0.0)),
        "p_hidden": p_hidden,
        "p_emb": float(_first(config, "embd_pdrop", default=p_hidden)),
        "type_vocab": int(getattr(config, "type_vocab_size", 0) or 0),
        "max_pos": int(_first(config, "max_position_embeddings", "n_positions", default=0) or 0),
    }


def layer_shape(module) -> tuple[str, int, int] | None:
    """(type name, in_features, out_features) for layers LoRA can adapt; None for everything else."""
    import torch.nn as nn

    kind = type(module).__name__
    if kind == "Conv1D" and hasattr(module, "nf"):  # transformers' GPT-2 Conv1D: weight is (in, out)
        return kind, module.weight.shape[0], module.weight.shape[1]
    if kind in ("Linear4bit", "Linear8bitLt") or isinstance(module, nn.Linear):
        return kind, module.in_features, module.out_features
    return None


def head_names(model) -> list[str]:
    """Top-level modules outside the backbone that hold weights: the classifier (seq-cls) or lm_head."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    return [name for name, child in model.named_children()
            if child is not backbone and any(True for _ in child.parameters())]


def adaptable_layers(model) -> list[dict]:
    """list_targets' rows for an instantiated model (meta, real or 4-bit)."""
    heads = tuple(head_names(model))
    out = []
    for name, module in model.named_modules():
        shape = layer_shape(module)
        if shape is None:
            continue
        kind, d_in, d_out = shape
        bias = getattr(module, "bias", None)
        params = d_in * d_out + (bias.numel() if bias is not None else 0)
        out.append({"name": name, "leaf": name.split(".")[-1], "type": kind, "in_features": int(d_in),
                    "out_features": int(d_out), "params": int(params), "head": name.split(".")[0] in heads})
    return out


# -- cache files -------------------------------------------------------------------------------------------------

def read_cached(path: Path) -> ModelStructure | None:
    """The description saved at `path`, or None when it is missing, unreadable or of another format."""
    try:
        structure = ModelStructure.from_json(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, TypeError):
        return None
    return structure if structure.format == FORMAT else None


def write_cached(path: Path, structure: ModelStructure) -> None:
    """Atomically: readers in other processes see the old file or the whole new one, never half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(structure.to_json())
        os.chmod(tmp, 0o644)  # the cache may be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


# -- targets and presets -----------------------------------------------------------------------------------------

def presets_for(layers: list[dict], model_type: str) -> dict[str, list[str]]:
    """{"qv", "attention", "all-linear"} -> leaf names, from the model's family (when the model really has those
    layers) or derived from the layers' names."""
    body = [t for t in layers if not t["head"]]
    all_linear = list(dict.fromkeys(t["leaf"] for t in body))
    known = FAMILY_PRESETS.get(family(model_type) or "", {})
    names = [t["name"] for t in body]
    if known and all(any(_matches(n, leaf) for n in names) for leaf in known["attention"]):
        return {"qv": list(known["qv"]), "attention": list(known["attention"]),
                "all-linear": list(known.get("all-linear", all_linear))}
    # Unknown family (or one that renamed its layers): attention layers sit under a module named like attention.
    attention = list(dict.fromkeys(t["leaf"] for t in body if re.search(r"attn|attention", t["name"], re.I)))
    qv = sorted((leaf for leaf in attention if re.fullmatch(r"(q|v|query|value)(_proj|_lin)?", leaf)),
                key=lambda leaf: not leaf.startswith("q"))  # Q before V, as in every known preset
    return {"qv": qv or attention or all_linear, "attention": attention or all_linear, "all-linear": all_linear}


def _matches(name: str, target: str) -> bool:
    """PEFT's rule for a list of target names: the module name is the target or ends with '.' + target."""
    return name == target or name.endswith("." + target)


def resolve_target_modules(target_modules, layers: list[dict], presets: dict[str, list[str]]) -> list[str]:
    """cfg.lora.target_modules (None, 'all-linear', 'preset:x' or a list of names) -> checked leaf names."""
    if target_modules is None:
        return list(presets["qv"])
    if isinstance(target_modules, str):
        key = target_modules[7:] if target_modules.startswith("preset:") else target_modules
        if key not in LORA_PRESETS:
            raise ModelError(f"lora.target_modules: unknown preset {target_modules!r}; allowed: all-linear, "
                             + ", ".join(f"preset:{p}" for p in LORA_PRESETS))
        return list(presets[key])
    body = [t["name"] for t in layers if not t["head"]]
    missing = [n for n in target_modules if not any(_matches(name, n) for name in body)]
    if missing:
        heads = sorted({t["leaf"] for t in layers if t["head"]})
        hint = f" ({', '.join(heads)} is the head: use lora.modules_to_save to train it)" \
            if any(m in heads for m in missing) else ""
        available = ", ".join(dict.fromkeys(t["leaf"] for t in layers if not t["head"]))
        raise ModelError(f"lora.target_modules: {', '.join(map(repr, missing))} matches no adaptable layer of this "
                         f"model{hint}; available leaf names: {available}")
    return list(target_modules)


def modules_to_save(structure: ModelStructure, lora) -> list[str]:
    """What PEFT trains in full beside the adapters: lora.modules_to_save, plus every head for seq-cls (PEFT
    alone would add only 'classifier' / 'score', missing e.g. DistilBERT's pre_classifier)."""
    names = list(lora.modules_to_save or [])
    if structure.task == "seq-cls":
        names += [h for h in structure.heads if h not in names]
    return names


# -- what trains: PEFT's rules as arithmetic -----------------------------------------------------------------------

@dataclass
class ParamTensor:
    """One parameter tensor of the model as set up for training."""
    name: str            # the base model's parameter (LoRA tensors: the adapted module + ".lora_A" etc.)
    numel: int
    module: str          # the module it belongs to
    trainable: bool
    kind: str            # base | copy (modules_to_save's trained copy) | lora
    bias: bool = False
    saved: bool = False  # written by the recipe (adapter / head / full model)


@dataclass
class Plan:
    """Every tensor of the trained model, and which layers carry LoRA, are copied, or keep their weights."""
    tensors: list = field(default_factory=list)
    targets: list = field(default_factory=list)   # the resolved LoRA target names
    lora_modules: set = field(default_factory=set)
    copied: set = field(default_factory=set)       # modules wrapped by modules_to_save
    saved_twice: int = 0                           # elements the adapter file holds under a second name


def plan(structure: ModelStructure, method: str, lora=None) -> Plan:
    """The tensors of `method` on this model. `lora` is a config.LoraSettings (lora / qlora only)."""
    unique = [(name, numel) for name, numel, alias in structure.params if alias is None]
    if method == "full":
        return Plan([ParamTensor(n, k, _owner(n), True, "base", _is_bias(n), True) for n, k in unique])
    if method == "head-only":
        heads = tuple(f"{h}." for h in structure.heads)
        return Plan([ParamTensor(n, k, _owner(n), n.startswith(heads), "base", _is_bias(n), n.startswith(heads))
                     for n, k in unique])
    return _plan_lora(structure, lora)


def _plan_lora(structure: ModelStructure, lora) -> Plan:
    layers = structure.layers
    targets = resolve_target_modules(lora.target_modules, layers, presets_for(layers, structure.model_type))
    to_save = modules_to_save(structure, lora)
    result = Plan(targets=targets)
    # PEFT wraps every module whose name ends with an entry (no dot needed), and never puts LoRA inside one.
    result.copied = {name for name, _ in structure.modules if any(name.endswith(m) for m in to_save)}
    shapes = {x["name"]: x for x in structure.linears}
    for name, kind in structure.modules:
        if any(_under(name, m) for m in to_save) or not any(_matches(name, t) for t in targets):
            continue
        if name not in shapes:
            raise ModelError(f"lora.target_modules: {name} ({kind}) matches {targets}, but LoRA can only adapt "
                             "Linear / Conv1D layers; use more specific names")
        result.lora_modules.add(name)
    bias_trains = {"none": lambda module: False, "all": lambda module: True,
                   "lora_only": lambda module: module in result.lora_modules}[lora.bias]
    for name, numel, alias in structure.params:
        owner, bias = _owner(name), _is_bias(name)
        root = next((m for m in result.copied if name.startswith(m + ".")), None)
        if alias is None:  # the original tensor: frozen unless a bias rule trains it
            trains = bias and bias_trains(owner) and root is None
            saved = bias and (lora.bias == "all" or (lora.bias == "lora_only" and owner in result.lora_modules))
            result.tensors.append(ParamTensor(name, numel, owner, trains, "base", bias, saved))
        if root is not None:  # modules_to_save trains a copy (a tied tensor gets its own, untied copy)
            result.tensors.append(ParamTensor(name, numel, root, True, "copy", bias, True))
            if bias and lora.bias == "all":  # the file has it twice: under the wrapper's name and its own
                result.saved_twice += numel
        if owner in result.lora_modules and not bias:
            result.tensors += _lora_tensors(shapes[owner], lora)
    return result


def _lora_tensors(linear: dict, lora) -> list[ParamTensor]:
    """B·A with A: r x d_in and B: d_out x r; DoRA adds a magnitude per output."""
    name, r = linear["name"], lora.r
    out = [ParamTensor(f"{name}.lora_A", r * linear["in"], name, True, "lora", saved=True),
           ParamTensor(f"{name}.lora_B", linear["out"] * r, name, True, "lora", saved=True)]
    if lora.use_dora:
        out.append(ParamTensor(f"{name}.lora_magnitude_vector", linear["out"], name, True, "lora", saved=True))
    return out


def _owner(name: str) -> str:
    return name.rsplit(".", 1)[0] if "." in name else ""


def _is_bias(name: str) -> bool:
    return name == "bias" or name.endswith(".bias")


def _under(name: str, module: str) -> bool:
    """PEFT keeps adapters out of modules_to_save: `module` is one of the name's dotted components' runs."""
    return bool(re.match(rf"(^|.*\.){re.escape(module)}($|\..*)", name))


def count(structure: ModelStructure, method: str, lora=None) -> dict:
    """{trainable, total, percent, adapter_bytes, by_module} of `method` on this model, as
    models.count_params returns them."""
    planned = plan(structure, method, lora)
    tensors = planned.tensors
    trainable = sum(t.numel for t in tensors if t.trainable)
    total = sum(t.numel for t in tensors)
    saved = ENGINE_BYTES * (sum(t.numel for t in tensors if t.saved) + planned.saved_twice)
    if method == "full":
        saved += structure.saved_buffer_bytes
    grouped: dict[str, int] = {}
    for t in tensors:
        if t.trainable:
            key = module_key(t.name if t.kind != "lora" else f"{t.module}.weight")
            grouped[key] = grouped.get(key, 0) + t.numel
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total if total else 0.0,
            "adapter_bytes": saved, "by_module": dict(sorted(grouped.items(), key=lambda kv: -kv[1]))}


_PEFT_PARTS = {"lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B", "base_layer",
               "modules_to_save", "original_module", "default", "weight", "bias"}


def module_key(name: str) -> str:
    """The layer a parameter belongs to, as parameter tables show it: PEFT's wrappers and layer indices folded
    away ("bert.encoder.layer.3.attention.self.query.lora_A.default.weight" -> "query"), biases apart."""
    parts = [s for s in name.split(".") if s not in _PEFT_PARTS and not s.isdigit()]
    key = parts[-1] if parts else name
    if name.endswith(".bias") and "lora_" not in name:
        key += ".bias"
    return key
