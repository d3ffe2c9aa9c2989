"""Push to the Hub: offline (as here and in CI) `push` fails with one clear line before uploading anything, an
unreachable Hub names the repo and the cause, and the model card says what the run was and measured."""
import socket

import pytest

from lora_core.hub import model_card
from lora_core.runs import Runs, RunStatus
from tests.helpers import cli, stop_leftovers, tiny_config

pytestmark = pytest.mark.timeout(400)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    runs = Runs(tmp_path_factory.mktemp("runs"))
    try:
        run_id = runs.launch(tiny_config(**{"data.cache_tokenized": False}))
        record = runs.wait(run_id, timeout=350)
    finally:
        stop_leftovers(runs)
    assert record.status == RunStatus.SUCCEEDED, record.error
    return runs, run_id


def test_push_offline_fails_clearly(finished):
    runs, run_id = finished
    proc = cli("push", run_id, "--repo", "someone/tiny", "--runs-dir", str(runs.root), check=False)
    assert proc.returncode == 2
    assert "offline mode is on (HF_HUB_OFFLINE=1)" in proc.stderr and "Traceback" not in proc.stderr


def test_push_unreachable_hub_names_repo_and_cause(finished, monkeypatch):
    runs, run_id = finished
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("HF_TOKEN", "hf_not_a_real_token")
    proc = cli("push", run_id, "--repo", "someone/tiny", "--private", "--runs-dir", str(runs.root), check=False,
               timeout=200)
    assert proc.returncode == 2, proc.stderr
    assert f"cannot push run {run_id} to the Hub repository 'someone/tiny'" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_push_merged_needs_a_merge_first(finished):
    runs, run_id = finished
    proc = cli("push", run_id, "--repo", "someone/tiny", "--merged", "--runs-dir", str(runs.root), check=False)
    assert proc.returncode == 2 and "no merged model yet" in proc.stderr


def test_model_card_describes_the_run(finished):
    runs, run_id = finished
    results, cfg = runs.results(run_id), runs.config(run_id)
    card = model_card(cfg, results, run_id)
    assert card.startswith("---\nlibrary_name: peft\n")
    for text in (run_id, cfg.model.source, "lora", f"r={cfg.lora.r}", results["dataset_fingerprint"],
                 f"| accuracy | {results['accuracy']:.4g} |", "Estimated peak", "measured peak"):
        assert text in card
