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
        if self.cfg.task != "seq-cls":
            raise ModelError("classify needs a seq-cls run; this run is causal-lm (use generate)")
        names = self.labels()
        return classify_sides(self.cfg, self.tokenizer, texts, self._sides(), lambda side: names)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """[{prompt, base, tuned}]: greedy continuations for a causal-lm run."""
        if self.cfg.task != "causal-lm":
            raise ModelError("generate needs a causal-lm run; this run is seq-cls (use classify)")
        return generate_sides(self.cfg, self.tokenizer, prompts, max_new_tokens, self._sides())


def classify_sides(cfg: ExperimentConfig, tokenizer, texts: list[str], sides, names_for) -> list[dict]:
    """[{text, <side>: {label, probs}, ...}]: each (side, model, context) of `sides` classifies the texts;
    names_for(side) gives that side's label names."""
    import torch

    texts = [t for t in texts if t and t.strip()]
    if not texts:
        return []
    enc = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=cfg.data.max_length)
    enc = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    rows: list[dict[str, Any]] = [{"text": t} for t in texts]
    for side, model, context in sides:
        with context, torch.no_grad():
            probs = torch.softmax(model(**enc).logits.float(), dim=-1)
        names = names_for(side)
        for row, p in zip(rows, probs):
            row[side] = {"label": names[int(p.argmax())], "probs": dict(zip(names, map(float, p)))}
    return rows


def generate_sides(cfg: ExperimentConfig, tokenizer, prompts: list[str], max_new_tokens: int | None,
                   sides) -> list[dict]:
    """[{prompt, <side>: text, ...}]: greedy continuations from each (side, model, context) of `sides`."""
    prompts = [p for p in prompts if p and p.strip()]
    n = max_new_tokens or cfg.generate.max_new_tokens
    rows: list[dict[str, Any]] = [{"prompt": p} for p in prompts]
    for side, model, context in sides:
        with context:
            outs = models.generate_texts(model, tokenizer, prompts, max_new_tokens=n)
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


# -- several adapters on one base ----------------------------------------------------------------------------------

MAX_ADAPTERS = 4


class AdapterSet:
    """Up to four finished LoRA / QLoRA runs of one base model, answering the same inputs: the base is loaded
    once, each run's adapter is added under its own name (PEFT's load_adapter) and switched with set_adapter.

        models = AdapterSet([(run_id, cfg, artifacts_dir), ...])
        models.classify(texts) / models.generate(prompts)   # rows: {text|prompt, "base": ..., run_id: ...}
    """

    def __init__(self, runs: list[tuple[str, ExperimentConfig, Path]]):
        from peft import PeftModel

        check_adapter_set(runs)
        self.run_ids = [run_id for run_id, _, _ in runs]
        self.cfg = runs[0][1]
        self.names = {run_id: f"run{i}" for i, run_id in enumerate(self.run_ids)}  # valid PEFT adapter names
        folders = [saved_weights(cfg, folder) for _, cfg, folder in runs]
        self.id2label = {run_id: merge.read_label_map(Path(folder)) for run_id, _, folder in runs}
        self.num_labels = num_labels = merge.adapter_num_labels(folders[0]) or 2
        quant = self.cfg.quant if self.cfg.method == "qlora" else None
        base, self.tokenizer = models.load_base(self.cfg, num_labels=num_labels, quant=quant)
        self.model = PeftModel.from_pretrained(base, str(folders[0]), adapter_name=self.names[self.run_ids[0]])
        for run_id, folder in zip(self.run_ids[1:], folders[1:]):
            self.model.load_adapter(str(folder), adapter_name=self.names[run_id])
        self.model.eval()

    def _sides(self):
        """(column, model, context): the base with every adapter off, then each run's adapter in turn."""
        yield "base", self.model, self.model.disable_adapter()
        for run_id in self.run_ids:
            self.model.set_adapter(self.names[run_id])
            yield run_id, self.model, nullcontext()

    def _labels(self, side: str) -> list[str]:
        """A run's own label names (the base side's are the first run's: its head is the untrained one)."""
        names = self.id2label.get(self.run_ids[0] if side == "base" else side) or {}
        return [str(names.get(i, f"LABEL_{i}")) for i in range(self.num_labels)]

    def classify(self, texts: list[str]) -> list[dict]:
        """[{text, base: {label, probs}, <run id>: {label, probs}, ...}] for seq-cls runs."""
        if self.cfg.task != "seq-cls":
            raise ModelError("classify needs seq-cls runs; these are causal-lm (use generate)")
        return classify_sides(self.cfg, self.tokenizer, texts, self._sides(), self._labels)

    def generate(self, prompts: list[str], max_new_tokens: int | None = None) -> list[dict]:
        """[{prompt, base, <run id>, ...}]: greedy continuations for causal-lm runs."""
        if self.cfg.task != "causal-lm":
            raise ModelError("generate needs causal-lm runs; these are seq-cls (use classify)")
        return generate_sides(self.cfg, self.tokenizer, prompts, max_new_tokens, self._sides())


def check_adapter_set(runs: list[tuple[str, ExperimentConfig, Path]]) -> None:
    """ModelError unless these are 2-4 adapter runs that can share one loaded base: same model, task, 4-bit
    settings and class count."""
    if not 2 <= len(runs) <= MAX_ADAPTERS:
        raise ModelError(f"pick 2 to {MAX_ADAPTERS} runs to compare side by side (got {len(runs)})")
    first_id, first, first_dir = runs[0]
    labels = merge.adapter_num_labels(Artifacts(first_dir).adapter)
    for run_id, cfg, folder in runs:
        if not cfg.uses_lora:
            raise ModelError(f"run {run_id} is a {cfg.method} run; only lora and qlora runs share a base model")
        same = (cfg.model.source, cfg.model.revision, cfg.task, cfg.method == "qlora" and cfg.quant)
        if same != (first.model.source, first.model.revision, first.task, first.method == "qlora" and first.quant):
            raise ModelError(f"run {run_id} ({cfg.method} on {cfg.model.source}, {cfg.task}) cannot share a base "
                             f"with {first_id} ({first.method} on {first.model.source}, {first.task}): pick runs of "
                             "one model, task and method")
        if merge.adapter_num_labels(Artifacts(folder).adapter) != labels:
            raise ModelError(f"run {run_id} classifies into a different number of classes than {first_id}")


def load_adapter_set(runs: list[tuple[str, ExperimentConfig, Path]]) -> AdapterSet:
    return AdapterSet(runs)
