"""Models: where a model comes from, which of its layers LoRA can adapt, how many parameters a config trains,
and loading it ready for training with full / LoRA / QLoRA / head-only.

A source is a bundled model (`config.BUNDLED_MODELS`; `sources.py` builds each into the model cache once), a
local model directory or a hub id.

Layers, presets and parameter counts come from a `structure.ModelStructure`: the task model is built once on the
meta device (shapes without weights) and described as JSON in the model cache, keyed by the content of its
config.json, task, label count and library versions. After that, `list_targets`, `target_presets` and
`count_params` (any method, any LoRA settings) read that file and import no torch.

Heavy imports (torch, transformers, peft) stay inside functions so that importing this module is cheap.
"""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from huggingface_hub import try_to_load_from_cache

from . import structure
from .config import BUNDLED_MODELS, ExperimentConfig
from .tokens import encode_prompts
from .errors import ModelError
from .paths import is_local_path
from .sources import bundled_path, cache_root
from .structure import (ModelStructure, adaptable_layers, default_task, head_names, module_key, presets_for,
                        resolve_target_modules)


def _drop_optional_kernel_notice(record) -> bool:
    # bitsandbytes logs on import that an optional CPU kernel package is missing; it works without it.
    return "kernels-community" not in str(record.msg)


logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_drop_optional_kernel_notice)


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
        if not (path / "config.json").is_file():  # never list the folder: it may be anyone's
            raise ModelError(f"model.source: {path} has no config.json, so it is not a Hugging Face model directory")
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


def _auto_class(task: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    return AutoModelForSequenceClassification if task == "seq-cls" else AutoModelForCausalLM


def _with_labels(config, task: str, num_labels: int, id2label: dict | None, pad_token_id: int | None):
    """A copy of the config set up for the task: label count/names for seq-cls, and a pad id so that
    decoder classifiers (GPT-2, Llama) can find each sequence's last real token."""
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
    config = load_config(source, trust_remote_code, revision)
    return _meta_task_model(config, task or default_task(config), num_labels, trust_remote_code)


def _meta_task_model(config, task: str, num_labels: int, trust_remote_code: bool):
    import torch

    config = _with_labels(config, task, num_labels, None, _config_pad_id(config))
    with torch.device("meta"):
        return _auto_class(task).from_config(config, trust_remote_code=trust_remote_code)


def _config_pad_id(config) -> int | None:
    pad = getattr(config, "pad_token_id", None)
    if pad is None:
        eos = getattr(config, "eos_token_id", None)
        pad = eos[0] if isinstance(eos, list) else eos
    return pad


# -- the model's structure, described once and kept on disk --------------------------------------------------

def structure_dir() -> Path:
    return cache_root() / "structures"


def config_json(source: str, revision: str | None = None) -> dict:
    """The model's config.json as a dict, without transformers: a local or bundled model's file, or the hub's
    (from the local hub cache, or downloaded when the hub is reachable)."""
    path = Path(resolve_source(source, revision))
    if not path.is_dir():
        from huggingface_hub import hf_hub_download

        try:
            path = Path(hf_hub_download(str(path), "config.json", revision=revision))
        except Exception as exc:  # network, missing repo, gated repo: say which, as load_config would
            raise ModelError(f"model.source: cannot read the config of {source!r} ({_short(exc)})") from None
    else:
        path = path / "config.json"
    return read_config_json(path)


def read_config_json(path: Path, field: str = "model.source") -> dict:
    """A config.json file as a dict; ModelError naming `field` when it is unreadable or not a model config."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"{field}: {path} is not a readable config.json ({_short(exc)})") from None
    if not isinstance(data, dict) or "model_type" not in data:
        raise ModelError(f"{field}: {path} is not a Hugging Face config.json (no 'model_type' key)")
    return data


@functools.lru_cache(maxsize=1)
def _versions() -> tuple:
    return tuple(metadata.version(name) for name in ("transformers", "peft")) + (structure.FORMAT,)


_SEEN: dict[str, ModelStructure] = {}  # structures this process has read or built, by cache key


class CustomCodeError(ModelError):
    """The model ships its own code (config.json has an auto_map), which is run only with trust_remote_code."""


def ships_code(config: dict) -> bool:
    """Whether a config.json names model code of its own (auto_map) that transformers would import."""
    return bool(config.get("auto_map"))


def _refuse_code(config: dict) -> None:
    raise CustomCodeError(
        f"model.source: {config.get('_name_or_path') or config.get('model_type') or 'this model'} ships its own "
        "model code (auto_map in its config.json), and describing it would run that code; it is run only with "
        "model.trust_remote_code (the CLI's --trust-remote-code), and then only in a training worker")


def config_structure(config: dict, task: str | None = None, num_labels: int = 2, trust_remote_code: bool = False,
                     load: Callable[[], Any] | None = None) -> ModelStructure:
    """The structure of the task model built from a config.json dict: from this process's memory, else the
    cache file, else (torch) the model built on the meta device from `load()` (a transformers config; default:
    built from the dict), then saved."""
    if ships_code(config) and not trust_remote_code:  # building it would import the repo's Python files
        _refuse_code(config)
    task = task or default_task(config)
    num_labels = num_labels if task == "seq-cls" else 0  # a causal LM's structure does not depend on it
    text = json.dumps(config, sort_keys=True, default=str)
    key = hashlib.sha256(json.dumps([text, task, num_labels, trust_remote_code, _versions()]).encode()).hexdigest()
    path = structure_dir() / f"{key[:32]}.json"
    found = _SEEN.get(key) or structure.read_cached(path)
    if found is None:
        loaded = load() if load else _config_from_dict(config)
        model = _meta_task_model(loaded, task, num_labels, trust_remote_code)
        found = structure.describe(model, model.config, task, num_labels)
        structure.write_cached(path, found)
    _SEEN[key] = found
    return found


def _config_from_dict(config: dict):
    from transformers import AutoConfig

    data = dict(config)
    return AutoConfig.for_model(data.pop("model_type"), **data)


def model_structure(source: str, task: str | None = None, num_labels: int = 2, trust_remote_code: bool = False,
                    revision: str | None = None) -> ModelStructure:
    """The structure of `source`'s task model (torch only the first time this config/task/labels is seen)."""
    return config_structure(config_json(source, revision), task, num_labels, trust_remote_code,
                            lambda: load_config(source, trust_remote_code, revision))


def list_targets(source: str, trust_remote_code: bool = False, task: str | None = None,
                 revision: str | None = None) -> list[dict]:
    """{name, leaf, type, in_features, out_features, params, head} for every adaptable layer of the model.
    `head` marks the classifier / lm_head: trained in full (modules_to_save), never a LoRA target."""
    return model_structure(source, task, 2, trust_remote_code, revision).layers


def target_presets(source: str, trust_remote_code: bool = False, layers: list[dict] | None = None,
                   model_type: str | None = None, revision: str | None = None) -> dict[str, list[str]]:
    """{"qv", "attention", "all-linear"} -> leaf names, for the model's architecture family (or derived)."""
    if layers is None or model_type is None:
        described = model_structure(source, None, 2, trust_remote_code, revision)
        layers, model_type = described.layers, described.model_type
    return presets_for(layers, model_type)


# -- adaptable layers ------------------------------------------------------------------------------------------

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
    kind, for any method: arithmetic on the model's structure (no torch for a model seen before). Equal to
    PEFT's get_nb_trainable_parameters() after really loading the config (4-bit weights count as their
    unquantized numel there too)."""
    m = cfg.model
    described = model_structure(m.source, cfg.task, num_labels, m.trust_remote_code, m.revision)
    return structure.count(described, cfg.method, cfg.lora)


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


def by_module(model) -> dict[str, int]:
    """Trainable params grouped by the layer they belong to, with layer indices folded (query, value, classifier)."""
    out: dict[str, int] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        key = module_key(name)
        out[key] = out.get(key, 0) + p.numel()
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))


def saved_bytes(cfg: ExperimentConfig, model) -> int:
    """Bytes of tensor data the recipe saves: the adapter (LoRA + modules_to_save + trained biases), the whole
    model for full fine-tuning, the head for head-only. The file adds a small header on top."""
    if cfg.uses_lora:  # the adapter file holds every entry of PEFT's state dict, even one tensor under two names
        from peft import get_peft_model_state_dict

        return int(sum(t.numel() * t.element_size() for t in get_peft_model_state_dict(model).values()))
    if cfg.method == "head-only":
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
        # the current device: a rank of a multi-GPU run (distributed.py) has set its own
        kwargs["device_map"] = {"": torch.cuda.current_device()} if torch.cuda.is_available() else {"": "cpu"}
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
    (`tokens.prompt_text`: the chat template when the tokenizer has one); deterministic."""
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
