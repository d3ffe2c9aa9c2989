"""Every test runs offline: the model hub and dataset hub are unreachable here and in CI."""
import os
import secrets

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ["PYTHONUNBUFFERED"] = "1"
# Ray reads RAY_AUTH_MODE once per process, at its first client: a page test that only tries a dead address
# would fix it at "disabled" for the whole session, and the cluster tests' token would never be sent. So the
# session starts in token mode with one token, which tests/cluster/ gives its cluster.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(16))
for _name in ("LORA_LAB_MODE", "LORA_LAB_DATA_ROOTS", "LORA_LAB_MAX_UPLOAD_MB"):  # tests start in local mode
    os.environ.pop(_name, None)

import pytest  # noqa: E402

from lora_core.runs import Runs  # noqa: E402


@pytest.fixture(autouse=True)
def users_file(tmp_path, monkeypatch):
    """A private users file for every test (the default one in ~/.config is the machine's)."""
    path = tmp_path / "users.json"
    monkeypatch.setenv("LORA_LAB_USERS_FILE", str(path))
    return path


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
