"""The Playground: run a finished run's model beside its base model.

    run = load_run(cfg, artifacts_dir)          # loads once; keep `run` (e.g. in st.session_state) to reuse it
    run.classify(["great film"])                # seq-cls: label + probabilities, base vs tuned
    run.generate(["The movie was"])             # causal-lm: greedy continuations, base vs tuned

The run's method decides what it saved (runs.layout.Artifacts.weights) and how the tuned model is built:
  lora, qlora   base + PeftModel.from_pretrained; the base side uses the same model with the adapter switched
                off, so one copy of the weights serves both (QLoRA: the 4-bit base it trained on)
  full          the saved model; the base is loaded separately
  head-only     the base with the trained head loaded over its classifier; the base side swaps the initial
                head back in
"""
from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from . import merge, models
from .config import ExperimentConfig
from .errors import ModelError
from .runs.layout import Artifacts


def saved_weights(cfg: ExperimentConfig, artifacts_dir: Path) -> Path:
    """The folder holding the run's trained weights, checked to hold the file they load from."""
    artifacts = Artifacts(artifacts_dir)
    folder, marker = artifacts.weights(cfg.method), artifacts.weights_marker(cfg.method)
    if not marker.is_file():
        raise ModelError(f"{folder} has no {marker.name}: this {cfg.method} run has not saved its weights yet "
                         "(still running, stopped before saving, or failed)")
    return folder


class RunModels:
    """A run's tuned model and its base, loaded once. Not thread-safe; one per run in the caller's cache."""

    def __init__(self, cfg: ExperimentConfig, artifacts_dir: Path):
        self.cfg = cfg
        self.artifacts = Artifacts(artifacts_dir)
        self.folder = saved_weights(cfg, self.artifacts.path)
        self.tuned, self.base, self.tokenizer = self._load()
        self.tuned.eval()
        if self.base is not None:
            self.base.eval()

    # -- loading ---------------------------------------------------------------------------------------------
    def _load(self):
        from transformers import set_seed

        # The base's classifier head is random (it is what training started from): seed it like the recipe did.
        set_seed(self.cfg.train.seed)
        if self.cfg.uses_lora:
            quant = self.cfg.quant if self.cfg.method == "qlora" else None
            model, tok = merge.load_adapter_model(self.cfg, self.folder, quant=quant)
            return model, None, tok  # base = the same model with the adapter disabled
        if self.cfg.method == "full":
            import torch

            tuned = models._auto_class(self.cfg.task).from_pretrained(
                self.folder, dtype=torch.float32, trust_remote_code=self.cfg.model.trust_remote_code)
            tok = models.load_tokenizer(str(self.folder))
            set_seed(self.cfg.train.seed)
            base, _ = models.load_base(self.cfg, num_labels=getattr(tuned.config, "num_labels", 2),
                                       id2label=getattr(tuned.config, "id2label", None))
            return tuned, base, tok
        return self._load_head()

    def _load_head(self):
        from safetensors.torch import load_file

        info_path, weights = self.artifacts.head_info, self.artifacts.head_weights
        info = json.loads(info_path.read_text(encoding="utf-8")) if info_path.is_file() else {}
        state = load_file(str(weights))
        id2label = info.get("id2label") or None
        num_labels = info.get("num_labels") or _rows_of_last_weight(state)
        tuned, tok = models.load_base(self.cfg, num_labels=num_labels, id2label=id2label)
        base_head = {k: v.clone() for k, v in tuned.state_dict().items() if k in state}
        missing = sorted(set(state) - set(base_head))
        if missing:
            raise ModelError(f"{weights} has tensors this model does not: "
                             f"{', '.join(missing[:5])}")
        tuned.load_state_dict(state, strict=False)
        self._base_head = base_head
        return tuned, None, tok  # base = the same model with its initial head swapped back in

    # -- running both sides ----------------------------------------------------------------------------------
    def _sides(self):
        """(name, model, context) for the base and the tuned model."""
        if self.base is not None:
            return [("base", self.base, nullcontext()), ("tuned", self.tuned, nullcontext())]
        if self.cfg.uses_lora:
            return [("base", self.tuned, self.tuned.disable_adapter()), ("tuned", self.tuned, nullcontext())]
        return [("base", self.tuned, _swapped_head(self.tuned, self._base_head)), ("tuned", self.tuned, nullcontext())]

    def labels(self) -> list[str]:
        config = _config_of(self.tuned)
        id2label = getattr(config, "id2label", None) or {}
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(config.num_labels)]

    def classify(self, texts: list[str]) -> list[dict]:
        """[{text, base: {label, probs}, tuned: {label, probs}}] for a seq-cls run."""
        import torch

        if self.cfg.task != "seq-cls":
            raise ModelError("classify needs a seq-cls run; this run is causal-lm (use generate)")
        texts = [t for t in texts if t and t.strip()]
        if not texts:
            return []
        enc = self.tokenizer(texts, return_tensors="pt", padding=True, truncation=True,
                             max_length=self.cfg.data.max_length)
        enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
        names = self.labels()
        rows: list[dict[str, Any]] = [{"text": t} for t in texts]
        for side, model, context in self._sides():
            with context, torch.no_grad():
                probs = torch.softmax(model(**enc).logits.float(), dim=-1)
            for row, p in zip(rows, probs):
                row[side] = {"label": names[int(p.argmax())], "probs": dict(zip(names, map(float, p)))}
        return rows

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """[{prompt, base, tuned}]: greedy continuations for a causal-lm run."""
        if self.cfg.task != "causal-lm":
            raise ModelError("generate needs a causal-lm run; this run is seq-cls (use classify)")
        prompts = [p for p in prompts if p and p.strip()]
        n = max_new_tokens or self.cfg.generate.max_new_tokens
        rows: list[dict[str, Any]] = [{"prompt": p} for p in prompts]
        for side, model, context in self._sides():
            with context:
                outs = models.generate_texts(model, self.tokenizer, prompts, max_new_tokens=n)
            for row, text in zip(rows, outs):
                row[side] = text
        return rows


def load_run(cfg: ExperimentConfig, artifacts_dir: Path) -> RunModels:
    return RunModels(cfg, artifacts_dir)


def _config_of(model):
    return model.config if not hasattr(model, "get_base_model") else model.get_base_model().config


def _rows_of_last_weight(state: dict) -> int:
    weights = [k for k in state if k.endswith("weight")]
    if not weights:
        raise ModelError("the saved head holds no weight tensors")
    return int(state[weights[-1]].shape[0])


class _swapped_head:
    """Temporarily put the initial head weights back (the base side of a head-only run)."""

    def __init__(self, model, initial: dict):
        self.model, self.initial = model, initial

    def __enter__(self):
        current = self.model.state_dict()
        self.trained = {k: current[k].clone() for k in self.initial}
        self.model.load_state_dict(self.initial, strict=False)

    def __exit__(self, *exc):
        self.model.load_state_dict(self.trained, strict=False)
        return False
