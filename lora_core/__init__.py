"""LoRA Lab engine: configs, models, data, training, runs, memory estimates.

Heavy libraries (torch, transformers, peft, bitsandbytes, datasets) are imported inside the functions that need
them, so that `import lora_core`, the config and the runs package stay cheap for the dashboard.
"""
from .config import ConfigError, ExperimentConfig

__all__ = ["ConfigError", "ExperimentConfig"]
__version__ = "0.1.0"
