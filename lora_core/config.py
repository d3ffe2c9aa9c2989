"""The experiment config: one typed object, read from and written to YAML or JSON, validated in one place.

Every field carries help text (`field_help`) that the dashboard shows as tooltips. Types and allowed values
come from the annotations, so the check in `_convert` is the only place a value is accepted or refused.
Errors are `ConfigError("section.field", message)` and name the allowed values; they quote at most a short
excerpt of a bad value (`excerpt`), so a huge or hostile value never becomes a huge message.

Config text is read strictly: YAML aliases (the "billion laughs" expansion) and duplicate keys are refused, as are
empty files, files over `MAX_CONFIG_BYTES` and bytes that are not UTF-8 (the error names the file and the line).
Numbers must be finite; whole numbers stay below `MAX_INT` unless a field says less; text fields are bounded.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args
from urllib.parse import urlparse

import yaml

from .config_text import MAX_CONFIG_BYTES, excerpt, parse_bytes, parse_file, parse_text  # noqa: F401
from .errors import ConfigError
from .samples.make_samples import EVAL_PROMPTS

Task = Literal["seq-cls", "causal-lm"]
Method = Literal["full", "lora", "qlora", "head-only"]
LORA_METHODS = ("lora", "qlora")  # the methods that train LoRA adapters (and so use the lora.* fields)

BUNDLED_MODELS = ("minilm", "tiny-random-gpt2", "tiny-random-llama", "smollm2-135m-instruct")
LORA_PRESETS = ("qv", "attention", "all-linear")
SAMPLE_DATASETS = ("sample:sentiment-2", "sample:sentiment-3", "sample:instructions")
SAMPLE_FOR_TASK = {"seq-cls": "sample:sentiment-2", "causal-lm": "sample:instructions"}  # the offline default
Backend = Literal["local", "ray"]
BACKENDS = get_args(Backend)

MAX_INT = 2**31 - 1          # whole numbers above this overflow torch/numpy arguments somewhere downstream
MAX_TEXT = 1024              # default bound on a text field (paths and prompts say more)
MAX_PATH = 4096              # PATH_MAX on Linux
MAX_PATH_PART = 255          # bytes in one file or folder name (NAME_MAX)
MAX_LIST = 256               # items in a list field
MAX_CLASSES = 1000           # classes a seq-cls run may have; integer labels are class ids below this

# The learning rate each method trains with when train.learning_rate is empty, chosen by bench/choose_lr.py on a
# validation split carved from the training rows of sample:sentiment-3 (never its eval split). For a config of
# your own, `python -m lora_core lr-find CONFIG` (lora_core/lr_find.py) suggests a rate from the training rows.
# QLoRA takes LoRA's rate. LoRA needs a far higher rate than full fine-tuning:
# B starts at zero and only r·(d_in + d_out) numbers per layer move.
DEFAULT_LEARNING_RATES = {"full": 1e-4, "lora": 5e-3, "qlora": 5e-3, "head-only": 1e-2}


def env_flag(name: str) -> bool:
    """An on/off environment variable: 1, true, yes or on (any case) means on."""
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _f(default: Any = dataclasses.MISSING, help: str = "", **kw):
    """A dataclass field with help text (and a factory for mutable defaults)."""
    if isinstance(default, (list, dict)):
        value = default
        return field(default_factory=lambda: list(value) if isinstance(value, list) else dict(value),
                     metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class ModelConfig:
    source: str = _f("minilm", "Model to fine-tune: 'minilm' (bundled MiniLM-L6 encoder), 'smollm2-135m-instruct' "
                     "(bundled SmolLM2-135M-Instruct, a pretrained chat model), 'tiny-random-gpt2' or "
                     "'tiny-random-llama' (tiny random causal LMs), a Hugging Face hub id, or a local directory. "
                     "Bundled models work offline.", max_len=MAX_PATH, path=True)
    revision: Optional[str] = _f(None, "Hub revision (branch, tag or commit) when `source` is a hub id.")
    trust_remote_code: bool = _f(False, "Run model code shipped with a hub repo. Off unless you trust the repo.")


@dataclass
class LoraSettings:
    r: int = _f(8, "LoRA rank: width of the low-rank update B·A. Trainable params per layer = r·(d_in + d_out).",
                min=1, max=1024)
    alpha: float = _f(16.0, "LoRA alpha: the update is scaled by alpha/r (alpha/sqrt(r) with rsLoRA).", min_excl=0)
    dropout: float = _f(0.1, "Dropout on the LoRA input path.", min=0.0, max_excl=1.0)
    target_modules: Optional[Union[str, list[str]]] = _f(
        None, "Layers to adapt, by leaf name (e.g. [query, value]); 'all-linear'; or a preset "
              "'preset:qv', 'preset:attention', 'preset:all-linear'. Empty means the architecture's Q+V preset.")
    bias: Literal["none", "all", "lora_only"] = _f("none", "Which biases to train alongside LoRA.")
    use_rslora: bool = _f(False, "Rank-stabilized LoRA: scale by alpha/sqrt(r) so higher ranks keep learning.")
    use_dora: bool = _f(False, "DoRA: learn a magnitude vector beside the LoRA direction (slower, sometimes better).")
    modules_to_save: Optional[list[str]] = _f(
        None, "Extra modules trained in full and saved with the adapter (the classifier head is added "
              "automatically for seq-cls).")


@dataclass
class QuantConfig:
    bits: Literal[4] = _f(4, "Bits per quantized weight (bitsandbytes 4-bit).")
    quant_type: Literal["nf4", "fp4"] = _f("nf4", "4-bit data type: NF4 (normal float, QLoRA's) or FP4.")
    double_quant: bool = _f(True, "Quantize the quantization constants too (saves ~0.37 bit/param).")
    compute_dtype: Literal["bfloat16", "float16", "float32"] = _f("bfloat16", "Dtype of the 4-bit matmuls.")


@dataclass
class DataConfig:
    train: str = _f("sample:sentiment-2", "Training data: a bundled sample (sample:sentiment-2, sample:sentiment-3, "
                    "sample:instructions), a local csv/tsv/json/jsonl/parquet file, or a hub dataset id.",
                    max_len=MAX_PATH, path=True)
    eval: Optional[str] = _f(None, "Evaluation data (same forms as `train`). Empty: split off `eval_fraction` of train.",
                             max_len=MAX_PATH, path=True)
    subset: Optional[str] = _f(None, "Hub dataset configuration name (e.g. 'sst2' for 'glue').")
    train_split: str = _f("train", "Split of a hub dataset used for training.")
    eval_split: Optional[str] = _f(None, "Split of a hub dataset used for evaluation (e.g. 'validation').")
    eval_fraction: float = _f(0.2, "Fraction of train held out for evaluation when no eval set is given (seeded).",
                              min_excl=0.0, max_excl=1.0)
    text_column: str = _f("text", "Input text column (seq-cls).")
    label_column: str = _f("label", "Label column (seq-cls); string labels are mapped to ids and the mapping saved.")
    prompt_column: str = _f("prompt", "Prompt/instruction column (causal-lm).")
    response_column: str = _f("response", "Response column (causal-lm). Leave empty-valued rows out.")
    mask_prompt: bool = _f(True, "causal-lm: compute the loss on response tokens only.")
    max_length: int = _f(128, "Maximum tokens per example; longer ones are truncated.", min=8, max=32768)
    max_train_samples: Optional[int] = _f(None, "Use at most this many training rows (seeded shuffle).", min=1)
    max_eval_samples: Optional[int] = _f(None, "Use at most this many evaluation rows.", min=1)
    seed: Optional[int] = _f(None, "Seed for the held-out eval split and the row samples. Empty: train.seed. A "
                             "sweep over seeds pins it, so its runs share their data.", min=0)
    group_by_length: bool = _f(True, "Batch training rows of similar token length together (much less padding, "
                               "the same rows every epoch); the batch order stays shuffled and seeded. Evaluation "
                               "reads its rows longest first. Off: random batches.")
    packing: bool = _f(False, "causal-lm: pack several examples into each row of up to max_length tokens. Position "
                       "ids restart per example, so examples never attend to each other; prompt masking is kept. "
                       "Evaluation stays unpacked.")
    cache_tokenized: bool = _f(True, "Keep the tokenized data in the model cache, keyed by the data's fingerprint "
                               "and the tokenizer, so the runs of a sweep tokenize once.")


@dataclass
class TrainConfig:
    epochs: float = _f(5.0, "Passes over the training data.", min_excl=0, max=10_000.0)
    max_steps: Optional[int] = _f(None, "Stop after this many optimizer steps (overrides epochs).", min=1)
    batch_size: int = _f(32, "Examples per device step.", min=1, max=4096)
    eval_batch_size: Optional[int] = _f(None, "Examples per eval step (defaults to batch_size).", min=1, max=4096)
    gradient_accumulation_steps: int = _f(1, "Steps whose gradients are summed before each optimizer step.", min=1)
    learning_rate: Optional[float] = _f(None, "Peak learning rate. Empty: the method's default ("
                                        + ", ".join(f"{m} {lr:g}" for m, lr in DEFAULT_LEARNING_RATES.items())
                                        + ").", min_excl=0.0, max=10.0)
    optimizer: Literal["adamw", "adamw_8bit", "sgd"] = _f("adamw", "Optimizer (8-bit AdamW uses bitsandbytes).")
    weight_decay: float = _f(0.0, "AdamW weight decay.", min=0.0, max=1.0)
    scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = _f("linear", "LR schedule.")
    warmup_ratio: float = _f(0.0, "Fraction of steps spent warming the LR up.", min=0.0, max_excl=1.0)
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 turns clipping off).", min=0.0)
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory (~30% slower).")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _f(
        "auto", "Training precision. auto: bf16 mixed precision where the hardware computes bf16 natively (CUDA "
                "GPUs with bf16; CPUs with AVX512-BF16 or AMX), else fp32. The run records what it resolved to "
                "and why.")
    seed: int = _f(0, "Seed for data shuffling, the eval split and weight init.", min=0, max=2**32 - 1)  # numpy's range
    logging_steps: int = _f(5, "Log train loss every N optimizer steps.", min=1)
    eval_steps: Optional[int] = _f(None, "Evaluate every N steps. Empty: at the end of each epoch.", min=1)
    save_steps: Optional[int] = _f(None, "Checkpoint every N steps (for resume). Empty: at each evaluation.", min=1)
    checkpoints: bool = _f(True, "Save Trainer checkpoints (at each evaluation, or every save_steps) so a failed "
                           "run can resume. Off: none while training; a stop still checkpoints.")
    early_stopping_patience: Optional[int] = _f(None, "Stop when the eval metric has not improved for N "
                                                "evaluations; the best checkpoint is kept and saved.", min=1)
    early_stopping_metric: Optional[Literal["accuracy", "macro_f1", "eval_loss"]] = _f(
        None, "The eval metric early stopping watches and the best checkpoint is chosen by. Empty: accuracy for "
              "seq-cls, eval_loss for causal-lm.")
    max_restarts: int = _f(0, "Restart a run whose worker crashed (killed, out of memory, machine restart) from "
                           "its last complete checkpoint (from the start when it has none, e.g. with "
                           "train.checkpoints off), as a new linked run, at most this many times.",
                           min=0, max=10)


@dataclass(frozen=True)
class OptimizerRun:
    """What a `train.optimizer` value runs: the recipe hands `trainer_optim` to TrainingArguments, and the memory
    estimator models the step temporaries of `implementation`. One table, so the two cannot drift apart."""
    trainer_optim: str
    implementation: str  # fused | foreach | for-loop (torch AdamW), 8bit (bitsandbytes AdamW), sgd


OPTIMIZERS = {
    "adamw": OptimizerRun("adamw_torch_fused", "fused"),   # torch.optim.AdamW(fused=True), on CPU and CUDA alike
    "adamw_8bit": OptimizerRun("adamw_bnb_8bit", "8bit"),  # bitsandbytes AdamW with 8-bit states
    "sgd": OptimizerRun("sgd", "sgd"),                     # torch.optim.SGD, no momentum
}


@dataclass
class GenerateConfig:
    prompts: list[str] = _f(list(EVAL_PROMPTS), "causal-lm: prompts answered before and after training (greedy, "
                            "with the chat template when the model has one), stored with the results. The defaults "
                            "are held out of sample:instructions.", max_items=64, max_len=16384)
    max_new_tokens: int = _f(48, "Tokens to generate per prompt.", min=1, max=1024)


@dataclass
class ResourcesConfig:
    backend: Backend = _f("local", "Where the run trains: local (worker processes on this machine) or ray (a job on a "
                          "Ray cluster; needs requirements-cluster.txt and a cluster address).")
    num_workers: int = _f(1, "Training processes (data-parallel ranks, one per GPU or CPU slot). More than 1 trains "
                          "with DDP: torchrun's launcher on this machine, Ray Train across the cluster's nodes.",
                          min=1, max=1024)
    cpus_per_worker: Optional[int] = _f(None, "CPU cores each worker uses. Empty: ray reserves 1; local splits this "
                                        "machine's cores evenly among the workers (one worker: all of them).",
                                        min=1, max=1024)
    gpus_per_worker: float = _f(0.0, "GPUs each worker uses (ray reserves them; local workers get one GPU each "
                                "when the machine has GPUs). 0: CPU training or whatever the machine has.",
                                min=0.0, max=64.0)
    ray_address: Optional[str] = _f(None, "Ray cluster address (the dashboard's http://HOST:8265). Empty: "
                                    "$LORA_LAB_RAY_ADDRESS. Tokens never go here: set RAY_AUTH_TOKEN instead.")


@dataclass
class TrackingConfig:
    mlflow: bool = field(default_factory=lambda: env_flag("LORA_LAB_MLFLOW"), metadata={"help": (
        "Log the config as params, every train and eval metric with its step, the results and the saved weights "
        "to MLflow: $MLFLOW_TRACKING_URI, else a local store in the runs directory. Default: $LORA_LAB_MLFLOW.")})
    tensorboard: bool = field(default_factory=lambda: env_flag("LORA_LAB_TENSORBOARD"), metadata={"help": (
        "Write TensorBoard event files into the run's folder (`tensorboard --logdir runs`). Default: "
        "$LORA_LAB_TENSORBOARD.")})


@dataclass
class ExperimentConfig:
    name: str = _f("experiment", "A label for the run (any text; the run id is derived safely from it).", max_len=200)
    task: Task = _f("seq-cls", "seq-cls: sequence classification; causal-lm: language modelling / instruction tuning.")
    method: Method = _f("lora", "full: every weight; lora: low-rank adapters; qlora: LoRA on a 4-bit base; "
                        "head-only: frozen backbone, train the classifier head.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "Which model to fine-tune."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA knobs (lora and qlora)."})
    quant: QuantConfig = field(default_factory=QuantConfig, metadata={"help": "4-bit quantization (qlora)."})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "Where the data comes from."})
    train: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "Optimization settings."})
    generate: GenerateConfig = field(default_factory=GenerateConfig, metadata={"help": "Before/after generations."})
    resources: ResourcesConfig = field(default_factory=ResourcesConfig,
                                       metadata={"help": "Where and on how many processes the run trains."})
    tracking: TrackingConfig = field(default_factory=TrackingConfig, metadata={"help": "Experiment trackers."})

    # -- construction -------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict | None) -> "ExperimentConfig":
        cfg = _build(cls, data or {}, "")
        cfg.validate()
        return cfg

    @classmethod
    def problems(cls, data: dict | None) -> list[ConfigError]:
        """Every problem with `data` at once, each naming its field (empty when `from_dict` would accept it):
        the type, range and key of every field, then each cross-field rule whose fields all had a valid value."""
        return cls.checked(data)[1]

    @classmethod
    def checked(cls, data: dict | None) -> tuple["ExperimentConfig | None", list[ConfigError]]:
        """(the config with every bad field left at its default, or None when `data` is no mapping; the
        problems as `problems` lists them): deeper checks can still look at the fields that were fine."""
        found: list[ConfigError] = []
        cfg = _build(cls, data if data is not None else {}, "", found)
        if cfg is None:
            return None, found
        bad = {e.field for e in found}
        cfg.normalize()
        found += [e for reads, e in cfg.rule_errors() if not bad & set(reads)]
        return cfg, found

    @classmethod
    def from_file(cls, path: str | Path) -> "ExperimentConfig":
        return cls.from_dict(parse_file(path))

    @classmethod
    def from_bytes(cls, raw: bytes, fmt: str = "yaml", source: str = "config") -> "ExperimentConfig":
        """A config from the bytes of a file (an upload, a file read by from_file): checked for size and UTF-8."""
        return cls.from_dict(parse_bytes(raw, fmt, source))

    @classmethod
    def from_text(cls, text: str, fmt: str = "yaml", source: str = "config") -> "ExperimentConfig":
        """A config from YAML or JSON text (see parse_text for what is refused)."""
        return cls.from_dict(parse_text(text, fmt, source))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def save(self, path: str | Path) -> Path:
        """Write the config (YAML or JSON by suffix) atomically: a reader never sees half a config."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        try:
            tmp.write_text(self.to_json() if path.suffix.lower() == ".json" else self.to_yaml(), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        return path

    def replace(self, **dotted: Any) -> "ExperimentConfig":
        """A validated copy with dotted keys changed, e.g. `cfg.replace(**{"lora.r": 16, "method": "full"})`."""
        data = self.to_dict()
        for key, value in dotted.items():
            set_dotted(data, key, value)
        return ExperimentConfig.from_dict(data)

    # -- the cross-field rules (types and ranges are checked while building) --------------------------------
    def validate(self) -> None:
        self.normalize()
        for _, error in self.rule_errors():
            raise error

    def normalize(self) -> None:
        """The spellings a form or the CLI may use, in the config's own form (target names as a list)."""
        targets = self.lora.target_modules
        if isinstance(targets, list) and len(targets) == 1 and _names_a_preset(targets[0]):
            self.lora.target_modules = targets = targets[0]  # [all-linear] means all-linear, as in PEFT
        if isinstance(targets, str) and not _names_a_preset(targets):
            # "query, value" from a form or the CLI means a list of names
            self.lora.target_modules = targets = [t.strip() for t in targets.split(",") if t.strip()] or None
        if isinstance(targets, list) and not targets:
            self.lora.target_modules = None
        address = self.resources.ray_address
        if address is not None:  # blank means $LORA_LAB_RAY_ADDRESS; the Jobs API wants no trailing slash
            self.resources.ray_address = address.strip().rstrip("/") or None

    def rule_errors(self):
        """(the fields a rule reads, its error) for every cross-field rule this config breaks, in field order."""
        if not self.name.strip():
            yield ("name",), ConfigError("name", "must not be empty")
        if len(self.name) > 200:
            yield ("name",), ConfigError("name", "must be at most 200 characters")
        if not self.model.source.strip():
            yield ("model.source",), ConfigError("model.source", f"must not be empty; use one of "
                                                 f"{', '.join(BUNDLED_MODELS)}, a hub id or a local directory")
        if self.method == "head-only" and self.task != "seq-cls":
            yield ("method", "task"), ConfigError(
                "method", "head-only trains a classifier head on a frozen backbone, so it needs task: seq-cls "
                          "(allowed for causal-lm: full, lora, qlora)")
        yield from self._data_rule_errors()
        targets = self.lora.target_modules
        if isinstance(targets, list) and any(not t.strip() for t in targets):
            yield ("lora.target_modules",), ConfigError("lora.target_modules", "names must not be empty")
        if self.data.packing and self.task != "causal-lm":
            yield ("data.packing", "task"), ConfigError(
                "data.packing", "packing joins causal-lm examples into longer rows; seq-cls rows each carry one "
                                "label, so use packing: false (or task: causal-lm)")
        if isinstance(targets, str) and targets.startswith("preset:") and targets[7:] not in LORA_PRESETS:
            yield ("lora.target_modules",), ConfigError(
                "lora.target_modules", f"unknown preset {excerpt(targets)}; allowed: "
                                       + ", ".join(f"preset:{p}" for p in LORA_PRESETS))
        if self.task == "causal-lm" and self.train.early_stopping_metric in ("accuracy", "macro_f1"):
            yield ("train.early_stopping_metric", "task"), ConfigError(
                "train.early_stopping_metric", f"{self.train.early_stopping_metric} is a classification metric; "
                                               "causal-lm runs are evaluated by eval_loss")
        if self.train.precision == "fp16" and self.method == "qlora" and self.quant.compute_dtype == "bfloat16":
            yield ("quant.compute_dtype", "train.precision", "method"), ConfigError(
                "quant.compute_dtype", "fp16 training needs compute_dtype float16 or float32, not bfloat16")
        yield from self._resources_rule_errors()

    def _resources_rule_errors(self):
        res = self.resources
        if res.ray_address is not None:
            try:
                check_ray_address(res.ray_address)
            except ConfigError as error:
                yield ("resources.ray_address",), error
        gpus = res.gpus_per_worker
        if gpus > 1 and not float(gpus).is_integer():
            yield ("resources.gpus_per_worker",), ConfigError(
                "resources.gpus_per_worker", f"{gpus:g}: above 1 a worker takes whole GPUs (Ray shares a GPU only "
                                             "as a fraction below 1)")
        if res.num_workers > 1 and 0 < gpus < 1:
            yield ("resources.gpus_per_worker", "resources.num_workers"), ConfigError(
                "resources.gpus_per_worker", f"{gpus:g}: data-parallel workers cannot share a GPU (NCCL refuses two "
                                             "ranks on one device); give each worker 1 or more GPUs, or 0 to train "
                                             "on CPU")

    def _data_rule_errors(self):
        train, task = self.data.train, ("data.train", "task")
        if not train.strip():
            yield ("data.train",), ConfigError("data.train", "must not be empty; use a bundled sample ("
                                               f"{', '.join(SAMPLE_DATASETS)}), a local file or a hub dataset id")
        elif self.task == "seq-cls" and train == "sample:instructions":
            yield task, ConfigError("data.train", "sample:instructions is a causal-lm dataset; for seq-cls use "
                                                  "sample:sentiment-2 or sample:sentiment-3")
        elif self.task == "causal-lm" and train in ("sample:sentiment-2", "sample:sentiment-3"):
            yield task, ConfigError("data.train", "a sentiment sample has no prompt/response columns; for causal-lm "
                                                  "use sample:instructions or a file with prompt and response columns")
        elif train.startswith("sample:") and train not in SAMPLE_DATASETS:
            yield ("data.train",), ConfigError("data.train", f"unknown bundled sample {excerpt(train)}; allowed: "
                                                             f"{', '.join(SAMPLE_DATASETS)}")
        if self.data.eval and self.data.eval.startswith("sample:") and self.data.eval not in SAMPLE_DATASETS:
            yield ("data.eval",), ConfigError("data.eval", f"unknown bundled sample {excerpt(self.data.eval)}; allowed: "
                                                           f"{', '.join(SAMPLE_DATASETS)}")

    # -- derived values ------------------------------------------------------------------------------------
    @property
    def learning_rate(self) -> float:
        if self.train.learning_rate is not None:
            return self.train.learning_rate
        return DEFAULT_LEARNING_RATES[self.method]

    @property
    def uses_lora(self) -> bool:
        return self.method in LORA_METHODS

    @property
    def lora_scaling(self) -> float:
        r = self.lora.r
        return self.lora.alpha / (r ** 0.5 if self.lora.use_rslora else r)


def check_ray_address(address: str) -> str:
    """A Ray dashboard address as the Jobs API takes it (http(s)://HOST:PORT, no trailing slash), never with
    credentials in it (a cluster token goes in RAY_AUTH_TOKEN)."""
    address = address.strip().rstrip("/")
    parsed = urlparse(address)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise ConfigError("resources.ray_address", f"{address!r} is not a Ray dashboard address; give "
                                                   "http://HOST:8265 (or https://...)")
    if parsed.username or parsed.password:
        raise ConfigError("resources.ray_address", "credentials do not go in the address: set RAY_AUTH_TOKEN "
                                                   "(or RAY_AUTH_TOKEN_PATH) where the dashboard runs")
    return address


def _names_a_preset(target: str) -> bool:
    return target == "all-linear" or target.startswith("preset:")


# -- helpers for dotted keys (sweeps, CLI overrides, the dashboard) ---------------------------------------------

def set_dotted(data: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            raise ConfigError(key, f"{part!r} is not a section")
        node = node[part]
    node[parts[-1]] = value


def get_dotted(cfg: ExperimentConfig | dict, key: str) -> Any:
    node: Any = cfg.to_dict() if isinstance(cfg, ExperimentConfig) else cfg
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ConfigError(key, "no such config key")
        node = node[part]
    return node


def field_help(dotted: str) -> str:
    """Help text of a field, for tooltips: `field_help("lora.r")`."""
    cls: Any = ExperimentConfig
    f = None
    for part in dotted.split("."):
        fields = {x.name: x for x in dataclasses.fields(cls)}
        if part not in fields:
            raise ConfigError(dotted, "no such config key")
        f = fields[part]
        cls = f.type if isinstance(f.type, type) else _hints(cls).get(part)
    return f.metadata.get("help", "") if f else ""


def field_choices(dotted: str) -> tuple | None:
    """Allowed values of a Literal field, e.g. `field_choices("method")` (without None), else None."""
    owner, name = _owner(dotted)
    hint = _hints(owner)[name]
    args = _literal_args(hint) or _optional_literal_args(hint)
    return tuple(args) if args else None


# -- the one conversion/validation routine -----------------------------------------------------------------------

def parse_fields(cls, data: dict, prefix: str = ""):
    """An instance of the dataclass `cls` (fields made with the same help/limits metadata as the config's) from a
    dict, checked by the config's one conversion routine; ConfigError names `prefix + field`. For other settings
    objects that want the config's checking (the server settings)."""
    return _build(cls, data, prefix)


_hints = functools.cache(typing.get_type_hints)  # a page run asks a few hundred times


def _owner(dotted: str):
    cls: Any = ExperimentConfig
    parts = dotted.split(".")
    for part in parts[:-1]:
        cls = _hints(cls).get(part)
        if not dataclasses.is_dataclass(cls):
            raise ConfigError(dotted, "no such config key")
    if parts[-1] not in _hints(cls):
        raise ConfigError(dotted, "no such config key")
    return cls, parts[-1]


def _literal_args(hint) -> list | None:
    if typing.get_origin(hint) is Literal:
        return list(typing.get_args(hint))
    return None


def _optional_literal_args(hint) -> list | None:
    """The choices of Optional[Literal[...]] (None left out), for field_choices."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        inner = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(inner) == 1:
            return _literal_args(inner[0])
    return None


def _build(cls, data: Any, prefix: str, found: list[ConfigError] | None = None):
    """The dataclass `cls` from `data`. Without `found`, the first bad field raises its ConfigError; with it,
    every bad field's error is appended there and the field keeps its default (None when `data` is no mapping)."""
    def refuse(error: ConfigError) -> None:
        if found is None:
            raise error
        found.append(error)

    if not isinstance(data, dict):
        refuse(ConfigError(prefix.rstrip("."), f"must be a mapping, got {type(data).__name__}"))
        return None
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    where = prefix.rstrip(".") or "config"
    for key in sorted((k for k in data if k not in fields), key=repr):  # keys may be numbers or None in YAML
        shown = key if isinstance(key, str) and key.isprintable() and 0 < len(key) <= 60 else excerpt(key, 40)
        refuse(ConfigError(f"{prefix}{shown}", f"unknown key {excerpt(key, 40)} in {where}; allowed keys: "
                                               f"{', '.join(fields)}"))
    kwargs = {}
    for name, value in data.items():
        if name not in fields:
            continue
        path = f"{prefix}{name}"
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            section = _build(hint, value if value is not None else {}, path + ".", found)
            if section is not None:
                kwargs[name] = section
            continue
        try:
            kwargs[name] = _convert(path, value, hint, fields[name].metadata)
        except ConfigError as exc:
            refuse(exc)
    return cls(**kwargs)


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def _convert(path: str, value: Any, hint, meta) -> Any:
    origin = typing.get_origin(hint)
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        # typing caches Union[str, list[str]] and Union[list[str], str] as one object, so the order of
        # `options` depends on which was created first (peft creates the other one): put an exact type match first.
        options = sorted(options, key=lambda o: o is not type(value))
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(path, value, option, meta)
            except ConfigError as exc:
                errors.append(exc.message)
        raise ConfigError(path, " or ".join(dict.fromkeys(errors)))
    literal = _literal_args(hint)
    if literal is not None:
        if isinstance(value, (dict, list)) or value not in literal:
            raise ConfigError(path, f"{excerpt(value)} is not allowed; allowed: {', '.join(map(str, literal))}")
        return value
    if origin is list:
        (item,) = typing.get_args(hint)
        if isinstance(value, str):  # "query, value" from a form or the CLI
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(path, f"must be a list, got {type(value).__name__}")
        most = meta.get("max_items", MAX_LIST)
        if len(value) > most:
            raise ConfigError(path, f"at most {most} items, got {len(value):,}")
        return [_convert(f"{path}[{i}]", v, item, {k: v for k, v in meta.items() if k == "max_len"})
                for i, v in enumerate(value)]
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(path, f"must be true or false, got {excerpt(value)}")
        return value
    if hint is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(path, f"must be a whole number, got {excerpt(value)}")
        value = int(value)
    elif hint is float:
        if isinstance(value, str):
            try:
                value = float(value)  # YAML reads 1e-3 (no dot) as a string
            except ValueError:
                raise ConfigError(path, f"must be a number, got {excerpt(value)}") from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"must be a number, got {excerpt(value)}")
        try:
            value = float(value)
        except OverflowError:  # an int too big for a float
            raise ConfigError(path, f"must be a finite number, got {excerpt(value)}") from None
        if not math.isfinite(value):  # NaN fails every `<` and `>` test below, so it must be caught here
            raise ConfigError(path, f"must be a finite number, got {value}")
    elif hint is str:
        if not isinstance(value, str):
            raise ConfigError(path, f"must be text, got {excerpt(value)}")
        _check_text(path, value, meta)
        return value
    else:
        raise ConfigError(path, f"unsupported type {_type_name(hint)}")
    _check_range(path, value, meta)
    return value


def _check_text(path: str, value: str, meta) -> None:
    most = meta.get("max_len", MAX_TEXT)
    if len(value) > most:
        raise ConfigError(path, f"at most {most:,} characters, got {len(value):,} ({excerpt(value, 40)})")
    if meta.get("path"):  # a file name the OS would refuse is refused here, naming the field
        if any(ord(c) < 32 for c in value):
            raise ConfigError(path, f"must not contain control characters such as newlines ({excerpt(value, 40)})")
        part = max(value.replace("\\", "/").split("/"), key=lambda p: len(p.encode("utf-8", "replace")))
        size = len(part.encode("utf-8", "replace"))
        if size > MAX_PATH_PART:
            raise ConfigError(path, f"a file or folder name of {size} bytes is too long (at most {MAX_PATH_PART}): "
                                    f"{excerpt(part, 40)}")


def _check_range(path: str, value: float, meta) -> None:
    if "min" in meta and value < meta["min"]:
        raise ConfigError(path, f"must be >= {meta['min']}, got {excerpt(value)}")
    if "min_excl" in meta and value <= meta["min_excl"]:
        raise ConfigError(path, f"must be > {meta['min_excl']}, got {excerpt(value)}")
    if "max" in meta and value > meta["max"]:
        raise ConfigError(path, f"must be <= {meta['max']}, got {excerpt(value)}")
    if "max_excl" in meta and value >= meta["max_excl"]:
        raise ConfigError(path, f"must be < {meta['max_excl']}, got {excerpt(value)}")
    if isinstance(value, int) and "max" not in meta and value > MAX_INT:
        raise ConfigError(path, f"must be <= {MAX_INT}, got {excerpt(value)}")
