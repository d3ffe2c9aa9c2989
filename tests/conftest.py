"""Every test runs offline: the model hub and dataset hub are unreachable here and in CI."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["PYTHONUNBUFFERED"] = "1"

import pytest  # noqa: E402

from lora_core.runs import Runs  # noqa: E402


@pytest.fixture
def runs_dir(tmp_path, monkeypatch):
    """A private runs directory; the env var makes workers and the CLI use it too."""
    d = tmp_path / "runs"
    d.mkdir()
    monkeypatch.setenv("LORA_LAB_RUNS_DIR", str(d))
    return d


@pytest.fixture
def runs(runs_dir) -> Runs:
    """The run manager of the private runs directory."""
    return Runs(runs_dir)
