"""The benches that need what CI lacks (a GPU, ../shared) say so in one line and exit 0; their configs are valid."""
import importlib.util
import os
import subprocess
import sys

from tests.helpers import ROOT


def load_bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_check_skips_without_cuda():
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "gpu_check.py")], capture_output=True, text=True,
                         timeout=300, env=env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines() == [out.stdout.strip()] and out.stdout.startswith("SKIP: ")
    assert "CUDA" in out.stdout


def test_gpu_check_configs_are_valid():
    bench = load_bench("gpu_check")
    configs = [bench.config(base, dotted, 3) for base, dotted in bench.CONFIGS.values()]
    assert len(configs) >= 6
    assert {c.method for c in configs} >= {"full", "lora", "qlora"}
    assert {c.quant.double_quant for c in configs if c.method == "qlora"} == {True, False}
    assert {c.train.gradient_checkpointing for c in configs} == {True, False}


def test_vs_plain_script_skips_without_sst2(tmp_path):
    env = {**os.environ, "LORA_LAB_SST2": str(tmp_path / "missing")}
    out = subprocess.run([sys.executable, str(ROOT / "bench" / "vs_plain_script.py")], capture_output=True,
                         text=True, timeout=120, env=env)
    assert out.returncode == 0 and out.stdout.startswith("SKIP: SST-2 not found")
