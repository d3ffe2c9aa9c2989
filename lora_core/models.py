"""Models: where a model comes from, which of its layers LoRA can adapt, how many parameters a config trains,
and loading it ready for training with full / LoRA / QLoRA / head-only.

A source is a bundled model (`config.BUNDLED_MODELS`; `sources.py` builds each into the model cache once), a
local model directory or a hub id.

Counting and layer discovery instantiate the model on the meta device: shapes without weights, so the dashboard
can show trainable params for a 7B config in a fraction of a second.

Heavy imports (torch, transformers, peft) stay inside functions so that importing this module is cheap.
"""
from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from .config import BUNDLED_MODELS, LORA_PRESETS, ExperimentConfig
from .data import encode_prompts
from .errors import ModelError
from .paths import is_local_path
from .sources import bundled_path


def _drop_optional_kernel_notice(record) -> bool:
    # bitsandbytes logs on import that an optional CPU kernel package is missing; it works without it.
    return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)


# Architecture families -> LoRA presets by leaf name. "all-linear" for families missing it is derived from the
# model's own layers (every Linear/Conv1D outside the head).
_FAMILY_PRESETS: dict[str, dict[str, list[str]]] = {
    "bert": {"qv": ["query", "value"], "attention": ["query", "key", "value", "attention.output.dense"]},
    "distilbert": {"qv": ["q_lin", "v_lin"], "attention": ["q_lin", "k_lin", "v_lin", "out_lin"]},
    "gpt2": {"qv": ["c_attn"], "attention": ["c_attn", "attn.c_proj"], "all-linear": ["c_attn", "c_proj", "c_fc"]},
    "llama": {"qv": ["q_proj", "v_proj"], "attention": ["q_proj", "k_proj", "v_proj", "o_proj"],
              "all-linear": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]},
}
_FAMILY_OF = {
    "bert": "bert", "roberta": "bert", "xlm-roberta": "bert", "camembert": "bert", "electra": "bert",
    "distilbert": "distilbert",
    "gpt2": "gpt2",
    "llama": "llama", "mistral": "llama", "qwen2": "llama", "qwen3": "llama", "gemma": "llama", "gemma2": "llama",
    "mixtral": "llama", "phi3": "llama",
}
# Model types that are decoders: their natural task is causal-lm (listing targets, presets).
_DECODER_TYPES = {"gpt2", "gpt_neo", "gpt_neox", "gptj", "opt", "bloom", "falcon", "phi", "phi3", "llama", "mistral",
                  "mixtral", "qwen2", "qwen3", "gemma", "gemma2", "smollm3"}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[\w.\-]+)?$")


# -- where a model comes from ----------------------------------------------------------------------------------

def resolve_source(source: str, revision: str | None = None) -> str:
    """A local directory for bundled/tiny models and local paths; the hub id itself for hub models."""
    source = (source or "").strip()
    if source in BUNDLED_MODELS:
        return str(bundled_path(source))
    path = Path(source).expanduser()
    if is_local_path(source):
        if not path.is_dir():
            raise ModelError(f"model.source: local model directory {source!r} does not exist"
                             if not path.exists() else f"model.source: {source!r} is a file, not a model directory")
        if not (path / "config.json").is_file():
            files = ", ".join(sorted(p.name for p in path.iterdir())[:10]) or "none"
            raise ModelError(f"model.source: {path} has no config.json, so it is not a Hugging Face model "
                             f"directory (files there: {files})")
        return str(path)
    if not _HUB_ID.match(source):
        raise ModelError(f"model.source: {source!r} is neither a bundled model ({', '.join(BUNDLED_MODELS)}), "
                         "a local directory nor a hub id like 'org/name'")
    if _hub_offline() and not _hub_cached(source, revision):
        raise ModelError(f"model.source: the Hugging Face hub is unreachable (offline) and {source!r} is not in the "
                         f"local cache; use a local model directory or a bundled model ({', '.join(BUNDLED_MODELS)})")
    return source


def _hub_offline() -> bool:
    return any(os.environ.get(v, "").lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_cached(repo_id: str, revision: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    return isinstance(found, str)


# -- configs and tokenizers ------------------------------------------------------------------------------------

def load_config(source: str, trust_remote_code: bool = False, revision: str | None = None):
    from transformers import AutoConfig

    path = resolve_source(source, revision)
    try:
        return AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except ValueError as exc:  # e.g. a model type that needs trust_remote_code
        raise ModelError(f"model.source: cannot read the config of {source!r}: {exc}") from None
    except OSError as exc:
        raise ModelError(f"model.source: cannot load {source!r} ({_short(exc)}); check the hub id or use a "
                         f"local directory or a bundled model ({', '.join(BUNDLED_MODELS)})") from None


def load_tokenizer(source: str, trust_remote_code: bool = False, revision: str | None = None):
    """The model's tokenizer, with a pad token (decoders like GPT-2 have none: reuse EOS)."""
    from transformers import AutoTokenizer

    path = resolve_source(source, revision)
    try:
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code, revision=revision)
    except (OSError, ValueError) as exc:
        raise ModelError(f"model.source: cannot load the tokenizer of {source!r}: {_short(exc)}") from None
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    return tok


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__


def default_task(config) -> str:
    """causal-lm for decoder families, seq-cls for encoders (used when only a source is given)."""
    archs = " ".join(getattr(config, "architectures", None) or [])
    if config.model_type in _DECODER_TYPES or "CausalLM" in archs or "LMHead" in archs:
        return "causal-lm"
    return "seq-cls"


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM


def _with_labels(config, task: str, num_labels: int, id2label: dict | None, pad_token_id: int | None):
    """A copy of the config set up for the task: label count/names for seq-cls, and a pad id so that
    decoder classifiers (GPT-2, Llama) can find each sequence's last real token."""
    import copy

    config = copy.deepcopy(config)
    if task == "seq-cls":
        if id2label:
            config.id2label = {int(k): str(v) for k, v in id2label.items()}
            config.label2id = {v: k for k, v in config.id2label.items()}
        else:
            config.num_labels = num_labels
    if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
        config.pad_token_id = pad_token_id
    return config


def meta_model(source: str, task: str | None = None, num_labels: int = 2, trust_remote_code: bool = False,
               revision: str | None = None):
    """The task model built on the meta device: every module and shape, no weights, no memory."""
    import torch

    config = load_config(source, trust_remote_code, revision)
    task = task or default_task(config)
    config = _with_labels(config, task, num_labels, None, _config_pad_id(config))
    with torch.device("meta"):
        return _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)


def _config_pad_id(config) -> int | None:
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) else eos
    return pad


# -- adaptable layers ------------------------------------------------------------------------------------------

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
    backbone = getattr(model, model.base_model_prefix, None) if getattr(model, "base_model_prefix", "") else None
    names = []
    for name, child in model.named_children():
        if child is backbone or not any(True for _ in child.parameters()):
            continue
        names.append(name)
    return names


def adaptable_layers(model) -> list[dict]:
    """Every Linear / Conv1D / Linear4bit of an instantiated model (meta or real), in module order."""
    heads = tuple(head_names(model))
    out = []
    for name, module in model.named_modules():
        shape = layer_shape(module)
        if shape is None or name.split(".")[-1] == "base_layer":  # a layer already wrapped by PEFT
            continue
        kind, d_in, d_out = shape
        bias = getattr(module, "bias", None)
        params = d_in * d_out + (bias.numel() if bias is not None else 0)
        out.append({"name": name, "leaf": name.split(".")[-1], "type": kind, "in_features": int(d_in),
                    "out_features": int(d_out), "params": int(params), "head": name.split(".")[0] in heads})
    return out


def list_targets(source: str, trust_remote_code: bool = False, task: str | None = None,
                 revision: str | None = None) -> list[dict]:
    """{name, leaf, type, in_features, out_features, params, head} for every adaptable layer of the model.
    `head` marks the classifier / lm_head: trained in full (modules_to_save), never a LoRA target."""
    return adaptable_layers(meta_model(source, task, 2, trust_remote_code, revision))


def family(model_type: str) -> str | None:
    return _FAMILY_OF.get(model_type)


def target_presets(source: str, trust_remote_code: bool = False, layers: list[dict] | None = None,
                   model_type: str | None = None, revision: str | None = None) -> dict[str, list[str]]:
    """{"qv", "attention", "all-linear"} -> leaf names, for the model's architecture family (or derived)."""
    if model_type is None:
        model_type = load_config(source, trust_remote_code, revision).model_type
    if layers is None:
        layers = list_targets(source, trust_remote_code, revision=revision)
    body = [t for t in layers if not t["head"]]
    all_linear = list(dict.fromkeys(t["leaf"] for t in body))
    known = _FAMILY_PRESETS.get(family(model_type) or "", {})
    if known:
        return {"qv": list(known["qv"]), "attention": list(known["attention"]),
                "all-linear": list(known.get("all-linear", all_linear))}
    # Unknown family: attention layers are those under a module named like attention; Q+V by their names.
    attention = list(dict.fromkeys(t["leaf"] for t in body if re.search(r"attn|attention", t["name"], re.I)))
    qv = sorted((leaf for leaf in attention if re.fullmatch(r"(q|v|query|value)(_proj|_lin)?", leaf)),
                key=lambda leaf: not leaf.startswith("q"))  # Q before V, as in every known preset
    return {"qv": qv or attention or all_linear, "attention": attention or all_linear, "all-linear": all_linear}


def resolve_target_modules(target_modules, layers: list[dict], presets: dict[str, list[str]]) -> list[str]:
    """cfg.lora.target_modules (None, 'all-linear', 'preset:x' or a list of names) -> checked leaf names.
    Names match like PEFT does: a layer matches when its dotted name ends with the requested one."""
    if target_modules is None:
        return list(presets["qv"])
    if isinstance(target_modules, list) and len(target_modules) == 1 and \
            (target_modules[0] == "all-linear" or target_modules[0].startswith("preset:")):
        # config.py may parse "all-linear" as ['all-linear']: typing caches Union[str, list[str]] and
        # Union[list[str], str] (peft's annotation) as one object, so the order it tries them in varies.
        target_modules = target_modules[0]
    if isinstance(target_modules, str):
        key = target_modules[7:] if target_modules.startswith("preset:") else target_modules
        if key not in LORA_PRESETS:
            raise ModelError(f"lora.target_modules: unknown preset {target_modules!r}; allowed: all-linear, "
                             + ", ".join(f"preset:{p}" for p in LORA_PRESETS))
        return list(presets[key])
    body = [t["name"] for t in layers if not t["head"]]
    missing = [n for n in target_modules if not any(name == n or name.endswith("." + n) for name in body)]
    if missing:
        heads = sorted({t["leaf"] for t in layers if t["head"]})
        hint = f" ({', '.join(heads)} is the head: use lora.modules_to_save to train it)" \
            if any(m in heads for m in missing) else ""
        available = ", ".join(dict.fromkeys(t["leaf"] for t in layers if not t["head"]))
        raise ModelError(f"lora.target_modules: {', '.join(map(repr, missing))} matches no adaptable layer of this "
                         f"model{hint}; available leaf names: {available}")
    return list(target_modules)


def build_lora_config(cfg: ExperimentConfig, model, layers: list[dict] | None = None,
                      presets: dict[str, list[str]] | None = None):
    """The peft.LoraConfig for cfg on this (task) model. Seq-cls heads are trained in full and saved with the
    adapter through modules_to_save (PEFT would only add 'classifier'/'score', missing e.g. DistilBERT's
    pre_classifier)."""
    from peft import LoraConfig, TaskType

    layers = layers if layers is not None else adaptable_layers(model)
    presets = presets or target_presets("", layers=layers, model_type=model.config.model_type)
    targets = resolve_target_modules(cfg.lora.target_modules, layers, presets)
    to_save = list(cfg.lora.modules_to_save or [])
    if cfg.task == "seq-cls":
        to_save += [h for h in head_names(model) if h not in to_save]
    matched = [t for t in layers if not t["head"] and any(t["name"] == n or t["name"].endswith("." + n)
                                                          for n in targets)]
    return LoraConfig(
        task_type=TaskType.SEQ_CLS if cfg.task == "seq-cls" else TaskType.CAUSAL_LM,
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, target_modules=targets,
        bias=cfg.lora.bias, use_rslora=cfg.lora.use_rslora, use_dora=cfg.lora.use_dora,
        modules_to_save=to_save or None,
        fan_in_fan_out=any(t["type"] == "Conv1D" for t in matched),  # Conv1D stores weight as (in, out)
    )


# -- parameter counts ------------------------------------------------------------------------------------------

def count_params(cfg: ExperimentConfig, num_labels: int = 2) -> dict:
    """Trainable / total parameters, percent, adapter bytes (what gets saved) and trainable params per layer
    kind, for any method, computed on the meta device. Equal to PEFT's get_nb_trainable_parameters() after
    really loading the config (4-bit weights count as their unquantized numel there too)."""
    model = meta_model(cfg.model.source, cfg.task, num_labels, cfg.model.trust_remote_code, cfg.model.revision)
    model = apply_method(cfg, model, quantized=False)
    return summarize_params(cfg, model)


def summarize_params(cfg: ExperimentConfig, model) -> dict:
    """The counts of an already set-up model (meta or real)."""
    trainable, total = nb_params(model)
    return {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total if total else 0.0,
            "adapter_bytes": saved_bytes(cfg, model), "by_module": by_module(model)}


def nb_params(model) -> tuple[int, int]:
    if hasattr(model, "get_nb_trainable_parameters"):  # a PeftModel: use PEFT's own count
        return tuple(int(x) for x in model.get_nb_trainable_parameters())
    trainable = total = 0
    for p in model.parameters():
        n = p.numel() * (2 * p.element_size() if type(p).__name__ == "Params4bit" else 1)
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


_PEFT_PARTS = {"lora_A", "lora_B", "lora_magnitude_vector", "lora_embedding_A", "lora_embedding_B", "base_layer",
               "modules_to_save", "original_module", "default", "weight", "bias"}


def by_module(model) -> dict[str, int]:
    """Trainable params grouped by the layer they belong to, with layer indices folded (query, value, classifier)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = [s for s in name.split(".") if s not in _PEFT_PARTS and not s.isdigit()]
        key = parts[-1] if parts else name
        if name.endswith(".bias") and "lora_" not in name:
            key += ".bias"
        out[key] = out.get(key, 0) + p.numel()
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def saved_bytes(cfg: ExperimentConfig, model) -> int:
    """Bytes of tensor data the recipe saves: the adapter (LoRA + modules_to_save + trained biases), the whole
    model for full fine-tuning, the head for head-only. The file adds a small header on top."""
    if cfg.uses_lora:
        from peft import get_peft_model_state_dict

        state = get_peft_model_state_dict(model)
    elif cfg.method == "head-only":
        state = {k: p for k, p in model.named_parameters() if p.requires_grad}
    else:
        state = model.state_dict()
    # Tied weights (GPT-2's lm_head is its embedding) appear under two names but are saved once.
    params = dict(model.named_parameters(remove_duplicate=False))
    seen: set[int] = set()
    total = 0
    for key, t in state.items():
        obj = params.get(key, t)
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        total += t.numel() * t.element_size()
    return int(total)


# -- loading for training --------------------------------------------------------------------------------------

def apply_method(cfg: ExperimentConfig, model, quantized: bool):
    """Make the right parameters trainable: everything (full), the head (head-only), or LoRA adapters
    (lora / qlora; for a really quantized model, prepare_model_for_kbit_training first)."""
    if cfg.method == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        return model
    if cfg.method == "head-only":
        heads = tuple(f"{h}." for h in head_names(model))
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith(heads))
        return model
    from peft import get_peft_model, prepare_model_for_kbit_training

    layers = adaptable_layers(model)
    lora_config = build_lora_config(cfg, model, layers)
    if quantized:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.train.gradient_checkpointing)
    return get_peft_model(model, lora_config)


def bnb_config(quant, skip_modules: list[str] | None = None):
    """transformers' BitsAndBytesConfig for cfg.quant (4-bit NF4/FP4, double quant, compute dtype)."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type=quant.quant_type, bnb_4bit_use_double_quant=quant.double_quant,
        bnb_4bit_compute_dtype=getattr(torch, quant.compute_dtype),
        llm_int8_skip_modules=skip_modules or None)


def load_model(source: str, task: str, *, num_labels: int = 2, id2label: dict | None = None, quant=None,
               trust_remote_code: bool = False, revision: str | None = None, pad_token_id: int | None = None):
    """The task model with real weights in fp32, or with 4-bit Linear layers when `quant` (a QuantConfig) is
    given. The classifier / lm_head stays in full precision."""
    import torch

    path = resolve_source(source, revision)
    config = load_config(source, trust_remote_code, revision)
    if pad_token_id is None:
        pad_token_id = _config_pad_id(config)
    config = _with_labels(config, task, num_labels, id2label, pad_token_id)
    kwargs: dict[str, Any] = {"config": config, "dtype": torch.float32, "trust_remote_code": trust_remote_code,
                              "revision": revision}
    if quant is not None:
        with torch.device("meta"):
            skeleton = _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)
        kwargs["quantization_config"] = bnb_config(quant, head_names(skeleton))
        kwargs["device_map"] = {"": 0} if torch.cuda.is_available() else {"": "cpu"}
    try:
        model = _auto_class(task).from_pretrained(path, **kwargs)
    except OSError as exc:
        raise ModelError(f"model.source: cannot load the weights of {source!r}: {_short(exc)}") from None
    if quant is not None:
        _avoid_cpu_repacking_bug(model)
    return model


def _avoid_cpu_repacking_bug(model) -> None:
    """bitsandbytes 0.50 on CPUs with AVX512-BF16 repacks a 4-bit weight in place on its first no-grad forward
    in eval mode (faster inference). After that, training the same model breaks (autograd errors, or the loss no
    longer moves) and layers whose out_features is not a multiple of 32 fail an assert. Generations before
    training and evaluation between epochs do exactly that, so the generic CPU path is used throughout."""
    for module in model.modules():
        if type(module).__name__ == "Linear4bit":
            module.support_avx512bf16_for_cpu = False


def load_base(cfg_or_source, task: str | None = None, num_labels: int = 2, id2label: dict | None = None,
              quant=None):
    """(model, tokenizer) without any method applied: the plain base model in fp32 (or 4-bit with `quant`)."""
    if isinstance(cfg_or_source, ExperimentConfig):
        m = cfg_or_source.model
        source, trust, rev, task = m.source, m.trust_remote_code, m.revision, task or cfg_or_source.task
    else:
        source, trust, rev = cfg_or_source, False, None
        task = task or default_task(load_config(source))
    tok = load_tokenizer(source, trust, rev)
    model = load_model(source, task, num_labels=num_labels, id2label=id2label, quant=quant,
                       trust_remote_code=trust, revision=rev, pad_token_id=tok.pad_token_id)
    return model, tok


def load_for_training(cfg: ExperimentConfig, num_labels: int = 2, id2label: dict | None = None):
    """(model, tokenizer) ready to train with cfg.method. LoRA/QLoRA return a peft.PeftModel."""
    quant = cfg.quant if cfg.method == "qlora" else None
    model, tok = load_base(cfg, num_labels=num_labels, id2label=id2label, quant=quant)
    model = apply_method(cfg, model, quantized=quant is not None)
    return model, tok


# -- generation ------------------------------------------------------------------------------------------------

def generate_texts(model, tokenizer, prompts: list[str], max_new_tokens: int = 24) -> list[str]:
    """Greedy answers (new text only, without the prompt) to each prompt, framed as in training
    (`data.prompt_text`: the chat template when the tokenizer has one); deterministic."""
    import torch

    if not prompts:
        return []
    was_training = model.training
    side = tokenizer.padding_side
    model.eval()
    tokenizer.padding_side = "left"  # decoders continue from the last position: pad on the left
    try:
        ids = encode_prompts(tokenizer, list(prompts))
        enc = tokenizer.pad({"input_ids": ids}, return_tensors="pt", padding=True)
        device = next(model.parameters()).device
        enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                 pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
        new = out[:, enc["input_ids"].shape[1]:]
        return [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
        model.train(was_training)
