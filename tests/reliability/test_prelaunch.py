"""Inputs that used to start a doomed worker (or silently do the wrong thing) are refused before launch, by the one
pre-launch check every launch path runs, with the engine's error naming the field, file, column and row; from the
CLI as one line, never a traceback; and nothing is created for them."""
from __future__ import annotations

import time

import pytest

from helpers import ROOT, cli, tiny_config
from lora_core import memory, preflight
from lora_core.config import ExperimentConfig
from lora_core.errors import ConfigError, DataError, LoraLabError
from lora_core.memory.settings import detected_device
from lora_core.runs.manager import prepare

pytestmark = pytest.mark.reliability


def refused(runs, cfg, error=LoraLabError, match: str | None = None) -> LoraLabError:
    """Launching `cfg` raises `error` matching `match`, and no run was created."""
    with pytest.raises(error, match=match) as caught:
        runs.launch(cfg)
    assert runs.list(reconcile=False) == []
    return caught.value


def csv_file(tmp_path, text: str, name: str = "data.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_max_length_above_the_models_position_limit(runs):
    err = refused(runs, ExperimentConfig.from_dict({"data": {"max_length": 1024}}), ConfigError)
    assert err.field == "data.max_length" and "position limit is 512" in str(err)


def test_integer_labels_out_of_range(runs, tmp_path):
    rows = "\n".join(f"text {i},{i % 2}" for i in range(20))
    path = csv_file(tmp_path, "text,label\n" + rows + "\nbig one,1000000000000\n")
    err = refused(runs, tiny_config(**{"data.train": path}), DataError)
    assert f"{path}: column 'label', row 21: label 1000000000000 is out of range" in str(err)


def test_too_many_classes(runs, tmp_path):
    path = csv_file(tmp_path, "text,label\n" + "\n".join(f"t{i},class {i}" for i in range(10_000)) + "\n")
    err = refused(runs, tiny_config(**{"data.train": path}), DataError)
    assert f"{path}: column 'label' has 10,000 classes; at most 1000" in str(err)


def test_a_prompt_longer_than_the_context(runs):
    cfg = ExperimentConfig.from_dict({"task": "causal-lm", "model": {"source": "tiny-random-gpt2"},
                                      "data": {"train": "sample:instructions"},
                                      "generate": {"prompts": ["Hi", "word " * 600], "max_new_tokens": 24}})
    err = refused(runs, cfg, ConfigError)
    assert err.field == "generate.prompts[1]" and "512-token context" in str(err)


def test_the_data_checks_the_dashboard_ran_now_run_for_every_launch(runs, tmp_path):
    path = csv_file(tmp_path, "sentence,label\nhello,0\nworld,1\n")
    err = refused(runs, tiny_config(**{"data.train": path}), DataError)
    assert f"{path}: no column 'text' (data.text_column)" in str(err)
    proc = cli("train", str(write_config(tmp_path, {"data": {"train": path}})), check=False)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr


def test_a_linked_data_file_is_read_by_its_links_name(tmp_path):
    target = tmp_path / "blob"
    target.write_text("text,label\n" + "\n".join(f"t {i},{i % 2}" for i in range(10)) + "\n")
    link = tmp_path / "data.csv"
    link.symlink_to(target)
    cfg = prepare(tiny_config(**{"data.train": str(link)}))
    assert cfg.data.train == str(link)  # not resolved to the suffix-less target
    assert preflight.check(cfg).train_rows == 8


def test_fp16_without_a_gpu(runs):
    if detected_device() == "cuda":
        pytest.skip("this machine has a CUDA GPU: fp16 is allowed")
    err = refused(runs, ExperimentConfig.from_dict({"train": {"precision": "fp16"}}), ConfigError)
    assert err.field == "train.precision" and "needs a CUDA GPU" in str(err)


def test_absurd_eval_batch_size_and_seed(runs):
    for dotted, value in (("train.eval_batch_size", 10**12), ("train.seed", 2**64)):
        with pytest.raises(ConfigError) as caught:
            tiny_config(**{dotted: value})
        assert caught.value.field == dotted


def test_memory_far_above_the_machine_is_refused_with_the_largest_batch(runs, monkeypatch):
    budget = 1 << 30
    monkeypatch.setattr(preflight, "machine_memory", lambda device: budget)
    cfg = ExperimentConfig.from_dict({"method": "full", "train": {"batch_size": 2048}, "data": {"max_length": 512}})
    err = refused(runs, cfg, ConfigError, "this machine has 1.0 GiB")
    assert err.field == "train.batch_size" and "--ignore-memory-estimate" in str(err)
    fits = int(str(err).split("the largest batch that fits is ")[1].split(" ")[0])
    peak = lambda b: memory.estimate_for_experiment(cfg.replace(**{"train.batch_size": b}))["peak_bytes"]  # noqa
    assert 1 <= fits < 2048 and peak(fits) <= budget < peak(fits + 1)
    report = preflight.check(prepare(cfg), ignore_memory=True)  # the override passes the check
    assert report.estimate_bytes > budget


def write_config(tmp_path, data: dict | None = None, raw: bytes | None = None, name: str = "cfg.yaml"):
    path = tmp_path / name
    if raw is None:
        raw = ExperimentConfig.from_dict(data or {}).to_yaml().encode()
    path.write_bytes(raw)
    return path


BAD_CONFIGS = {
    "empty.yaml": (b"", "is empty"),
    "comments.yaml": (b"# only a comment\n", "has no settings"),
    "dup.yaml": (b"name: a\nlora:\n  r: 4\n  r: 8\n", "line 4: duplicate key 'r' (first at line 3)"),
    "latin1.yaml": (b"name: caf\xe9\n", "line 1 (byte 9) is not valid UTF-8"),
    "nan.yaml": (b"train:\n  learning_rate: .nan\n", "train.learning_rate: must be a finite number"),
    "inf.yaml": (b"lora:\n  alpha: .inf\n", "lora.alpha: must be a finite number"),
    "long.yaml": (("data:\n  train: " + "é" * 300 + "\n").encode(), "data.train: a file or folder name of 600 bytes"),
    "bomb.yaml": (b"a: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
                  b"d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\nname: *e\n",
                  "YAML aliases (*name) are not allowed"),
}


@pytest.mark.parametrize("name", list(BAD_CONFIGS))
def test_bad_config_files_are_one_line_errors(runs, tmp_path, name):
    raw, message = BAD_CONFIGS[name]
    path = write_config(tmp_path, raw=raw, name=name)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")) as e:
        ExperimentConfig.from_file(path)
    assert len(str(e.value)) < 400 and time.perf_counter() - started < 30  # bounded: no expansion, no huge echo


def test_the_cli_refuses_them_all_in_one_line(runs_dir, tmp_path):
    for name, (raw, message) in BAD_CONFIGS.items():
        path = write_config(tmp_path, raw=raw, name=name)
        proc = cli("train", str(path), "--runs-dir", str(runs_dir), check=False)
        assert proc.returncode == 2, (name, proc.stderr[-500:])
        assert proc.stderr.count("\n") == 1 and message in proc.stderr, (name, proc.stderr[-500:])
    assert not [p for p in runs_dir.iterdir() if p.is_dir()]  # no run directory for any of them


def test_estimate_inputs_are_finite(tmp_path):
    for args, message in ((["--model", "1e999"], "parameter count must be from 1"),
                          (["--model", "minilm", "--num-labels", "1000000000000"], "num_labels: must be")):
        proc = cli("estimate", *args, check=False)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_the_offline_example_configs_pass_the_check(runs):
    checked = 0
    for path in sorted((ROOT / "examples").glob("*.yaml")):
        cfg = prepare(ExperimentConfig.from_file(path))
        if cfg.data.train.startswith("sample:") or cfg.data.train.startswith("/"):  # hub data needs the hub
            preflight.check(cfg)
            checked += 1
    assert checked
