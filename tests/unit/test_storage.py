"""Run directories, the registry and its state machine, the metrics stream, and the launcher's pure parts
(sweep expansion, the concurrency limit, config preparation). No training here."""
import json
import os
import time
from pathlib import Path

import pytest

from lora_core import launcher, storage
from lora_core.config import ConfigError, ExperimentConfig
from lora_core.storage import FAILED, QUEUED, RUNNING, STOPPED, SUCCEEDED

ROOT = Path(__file__).resolve().parents[2]


def cfg(**dotted):
    return ExperimentConfig.from_dict({"name": "t"}).replace(**dotted) if dotted else \
        ExperimentConfig.from_dict({"name": "t"})


# -- ids and paths ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "..", "a/../../b", "~root", "C:\\Windows\\x",
                                  "é☃ name", "-" * 200, "x" * 200, "run\x00null", ". ."])
def test_run_ids_from_any_name_stay_inside_the_runs_dir(runs_dir, name):
    config = ExperimentConfig.from_dict({"name": name})
    record = storage.create_run(config, runs_dir)
    assert storage.RUN_ID_RE.match(record.id), record.id
    path = (runs_dir / record.id).resolve()
    assert path.parent == runs_dir.resolve() and path.is_dir()
    assert len(record.id) <= 64
    assert [p.name for p in runs_dir.iterdir() if p.is_dir()] == [record.id]


def test_slug_keeps_a_readable_name():
    assert storage.slugify("My LoRA r=8 / sst2") == "my-lora-r-8-sst2"
    assert storage.slugify("../../etc") == "etc"
    assert storage.slugify("☃☃") == "run"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "A-UPPER", "x;rm -rf"])
def test_bad_run_ids_are_refused_with_the_id_in_the_message(runs_dir, bad):
    with pytest.raises(KeyError) as err:
        storage.get_run(bad, runs_dir)
    assert repr(bad) in str(err.value)


def test_unknown_run_id_names_the_id(runs_dir):
    with pytest.raises(KeyError, match="nosuch-run"):
        storage.get_run("nosuch-run", runs_dir)


def test_default_runs_dir_follows_the_env(runs_dir, monkeypatch):
    assert storage.default_runs_dir() == runs_dir.resolve()
    monkeypatch.delenv("LORA_LAB_RUNS_DIR")
    assert storage.default_runs_dir() == ROOT / "runs"


# -- creating and reading a run ------------------------------------------------------------------------------------

def test_create_run_writes_the_layout_and_a_queued_row(runs_dir):
    config = cfg(**{"method": "lora", "lora.r": 4, "train.max_steps": 3})
    record = storage.create_run(config, runs_dir)
    rd = storage.run_dir(record.id, runs_dir)
    assert record.status == QUEUED and record.rank == 4 and record.method == "lora" and record.task == "seq-cls"
    assert rd.config.is_file() and rd.metrics.is_file() and rd.log.is_file() and rd.artifacts.is_dir()
    assert storage.read_config(record.id, runs_dir) == config
    assert json.loads(rd.status.read_text())["status"] == QUEUED
    assert storage.read_results(record.id, runs_dir) is None
    assert storage.artifacts_dir(record.id, runs_dir) == rd.artifacts
    # the record round-trips and names its directory
    assert storage.get_run(record.id, runs_dir).to_dict() == record.to_dict()
    assert record.dir == rd.path
    # full fine-tuning has no rank
    assert storage.create_run(cfg(method="full"), runs_dir).rank is None


def test_config_is_written_once(runs_dir):
    record = storage.create_run(cfg(), runs_dir)
    rd = storage.run_dir(record.id, runs_dir)
    with pytest.raises(FileExistsError):
        open(rd.config, "x")


def test_unique_prefix_finds_a_run(runs_dir):
    record = storage.create_run(cfg(name="prefixed"), runs_dir)
    assert storage.get_run(record.id[:-3], runs_dir).id == record.id
    storage.create_run(cfg(name="prefixed"), runs_dir)
    with pytest.raises(KeyError):  # now ambiguous
        storage.get_run("prefixed", runs_dir)


# -- the state machine ---------------------------------------------------------------------------------------------

def test_status_moves_forward_only_and_terminal_states_are_final(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    with pytest.raises(storage.StatusError, match="QUEUED to SUCCEEDED"):
        storage.set_status(rid, SUCCEEDED, runs_dir)
    with pytest.raises(storage.StatusError, match="unknown status"):
        storage.set_status(rid, "DONE", runs_dir)
    running = storage.set_status(rid, RUNNING, runs_dir)
    assert running.started is not None and running.ended is None
    with pytest.raises(storage.StatusError):
        storage.set_status(rid, QUEUED, runs_dir)
    done = storage.set_status(rid, SUCCEEDED, runs_dir, results={"eval_accuracy": 0.75})
    assert done.ended >= done.started and done.results == {"eval_accuracy": 0.75}
    for status in (RUNNING, FAILED, STOPPED, SUCCEEDED, QUEUED):
        with pytest.raises(storage.StatusError, match="final"):
            storage.set_status(rid, status, runs_dir)
    assert json.loads(storage.run_dir(rid, runs_dir).status.read_text())["status"] == SUCCEEDED


def test_failed_carries_the_reason_and_the_log_tail(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    log = storage.run_dir(rid, runs_dir).log
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "Traceback: boom\n")
    storage.set_status(rid, RUNNING, runs_dir)
    record = storage.set_status(rid, FAILED, runs_dir, error="RuntimeError: boom")
    assert record.error == "RuntimeError: boom"
    assert record.error_log.endswith("Traceback: boom") and "line 99" in record.error_log
    assert "line 10\n" not in record.error_log  # a tail, not the whole log


def test_status_cannot_be_set_through_update(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    with pytest.raises(ValueError, match="status"):
        storage.Registry(runs_dir).update(rid, status=SUCCEEDED)


def test_claim_respects_the_limit_and_the_queue_order(runs_dir):
    registry = storage.Registry(runs_dir)
    ids = [storage.create_run(cfg(name=f"q{i}"), runs_dir).id for i in range(4)]
    assert [r.id for r in launcher.queue(runs_dir)] == ids
    assert launcher.move(ids[3], 0, runs_dir) == [ids[3], ids[0], ids[1], ids[2]]
    first = registry.claim_next(limit=2)
    second = registry.claim_next(limit=2)
    assert (first.id, second.id) == (ids[3], ids[0])
    assert {first.slot, second.slot} == {0, 1}
    assert registry.claim_next(limit=2) is None
    storage.set_status(first.id, SUCCEEDED, runs_dir)
    third = registry.claim_next(limit=2)
    assert third.id == ids[1] and third.slot == first.slot  # the freed slot (and its GPU) is reused
    with pytest.raises(ValueError, match="not queued"):
        launcher.move(third.id, 0, runs_dir)


def test_cancel_and_delete(runs_dir):
    a = storage.create_run(cfg(name="a"), runs_dir).id
    b = storage.create_run(cfg(name="b"), runs_dir).id
    assert launcher.cancel(a, runs_dir) == STOPPED
    assert storage.get_run(a, runs_dir).error == "cancelled"
    with pytest.raises(storage.StatusError):
        launcher.cancel(a, runs_dir)
    storage.Registry(runs_dir).claim_next(limit=1)  # b is claimed by a launcher: cancel must not touch it
    with pytest.raises(storage.StatusError, match="RUNNING, not QUEUED"):
        launcher.cancel(b, runs_dir)
    assert storage.get_run(b, runs_dir).status == RUNNING
    with pytest.raises(ValueError, match="stop it first"):
        storage.delete_run(b, runs_dir)
    storage.delete_run(a, runs_dir)
    assert not (runs_dir / a).exists()
    with pytest.raises(KeyError):
        storage.get_run(a, runs_dir)
    assert [r.id for r in storage.list_runs(runs_dir)] == [b]


def test_list_filters_and_order(runs_dir):
    ids = [storage.create_run(cfg(name=f"l{i}"), runs_dir, sweep_id="sweep-x" if i % 2 else None).id
           for i in range(5)]
    assert [r.id for r in storage.list_runs(runs_dir)] == ids[::-1]  # newest first
    assert [r.id for r in storage.list_runs(runs_dir, sweep_id="sweep-x")] == [ids[3], ids[1]]
    storage.set_status(ids[0], RUNNING, runs_dir)
    assert [r.id for r in storage.list_runs(runs_dir, status=RUNNING)] == [ids[0]]
    assert len(storage.list_runs(runs_dir, status=[RUNNING, QUEUED])) == 5


def test_a_lost_registry_is_rebuilt_from_the_run_dirs(runs_dir):
    ids = [storage.create_run(cfg(name=f"r{i}"), runs_dir).id for i in range(3)]
    storage.set_status(ids[0], RUNNING, runs_dir)
    storage.set_status(ids[0], SUCCEEDED, runs_dir, results={"eval_loss": 0.5})
    for suffix in ("", "-wal", "-shm"):
        (runs_dir / f"registry.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = {r.id: r for r in storage.list_runs(runs_dir)}
    assert set(rebuilt) == set(ids)
    assert rebuilt[ids[0]].status == SUCCEEDED and rebuilt[ids[0]].results == {"eval_loss": 0.5}


def test_an_older_registry_gains_new_columns(runs_dir):
    import sqlite3

    con = sqlite3.connect(runs_dir / "registry.sqlite")
    con.execute("CREATE TABLE runs (id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, "
                "created REAL NOT NULL)")
    con.execute("INSERT INTO runs VALUES ('old-run-1', 'old', 'SUCCEEDED', 1.0)")
    con.commit()
    con.close()
    storage._READY.clear()
    (old,) = storage.list_runs(runs_dir)
    assert (old.id, old.status, old.heartbeat, old.results) == ("old-run-1", SUCCEEDED, None, {})


# -- metrics, results, logs ------------------------------------------------------------------------------------------

def test_metrics_stream_round_trips_and_skips_a_corrupt_last_line(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    for step in range(1, 4):
        storage.append_metrics(rid, {"kind": "log", "step": step, "loss": 1.0 / step}, runs_dir)
    path = storage.run_dir(rid, runs_dir).metrics
    with open(path, "ab") as f:
        f.write(b'{"kind": "log", "step": 4, "lo')  # a write cut off by a crash
    events = storage.read_metrics(rid, runs_dir)
    assert [e["step"] for e in events] == [1, 2, 3]
    # once the line is complete it counts; a corrupt complete line is skipped and later events still count
    with open(path, "ab") as f:
        f.write(b'ss": 0.2}\n\x00\x00garbage\n[1, 2]\n{"kind": "log", "step": 5, "loss": 0.1}\n')
    assert [e["step"] for e in storage.read_metrics(rid, runs_dir)] == [1, 2, 3, 4, 5]


def test_read_metrics_since_only_consumes_complete_lines(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    path = storage.run_dir(rid, runs_dir).metrics
    storage.append_metrics(rid, {"step": 1, "loss": float("nan")}, runs_dir)
    events, offset = storage.read_metrics_since(rid, 0, runs_dir)
    assert len(events) == 1 and events[0]["loss"] != events[0]["loss"]  # NaN survives
    with open(path, "ab") as f:
        f.write(b'{"step": 2')
    assert storage.read_metrics_since(rid, offset, runs_dir) == ([], offset)
    with open(path, "ab") as f:
        f.write(b', "loss": 0.5}\n')
    events, offset2 = storage.read_metrics_since(rid, offset, runs_dir)
    assert events == [{"step": 2, "loss": 0.5}] and offset2 == path.stat().st_size


def test_results_and_key_results(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    results = {"eval_accuracy": 0.8, "stopped": False, "train_time_s": 3.5, "device": "cpu",
               "params": {"trainable": 1000, "total": 10 ** 6}, "versions": {"torch": "2.13"},
               "generations": [{"prompt": "x"}], "long": "x" * 500, "nan": float("nan")}
    storage.write_results(rid, results, runs_dir)
    assert storage.read_results(rid, runs_dir)["params"] == {"trainable": 1000, "total": 10 ** 6}
    key = storage.key_results(results)
    assert key["eval_accuracy"] == 0.8 and key["params.trainable"] == 1000 and key["device"] == "cpu"
    assert key["versions.torch"] == "2.13" and key["nan"] is None
    assert "generations" not in key and "long" not in key


def test_log_tail(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    storage.run_dir(rid, runs_dir).log.write_bytes(b"a\nb\n\xff\xfe bad utf8\nlast\n")
    assert storage.log_tail(rid, 2, runs_dir) == "\ufffd\ufffd bad utf8\nlast"


# -- the launcher's pure parts ----------------------------------------------------------------------------------------

def names(configs):
    return [(c.method, c.lora.r if c.uses_lora else None) for c in configs]


def test_sweep_adds_methods_and_does_not_cross_ranks_with_full_or_head_only():
    base = cfg(method="lora")
    configs = launcher.sweep_configs(base, {"lora.r": [4, 8, 16], "method": ["full", "head-only"]})
    assert names(configs) == [("lora", 4), ("lora", 8), ("lora", 16), ("full", None), ("head-only", None)]
    assert len({c.name for c in configs}) == 5
    # same seed, data and eval split everywhere
    assert {(c.train.seed, c.data.train, c.data.eval_fraction) for c in configs} == \
        {(base.train.seed, base.data.train, base.data.eval_fraction)}


def test_sweep_crosses_other_fields_and_dedupes():
    configs = launcher.sweep_configs(cfg(), {"lora.r": [4, 4, 8], "train.learning_rate": [1e-3, 1e-4],
                                             "method": ["lora", "qlora"]})
    assert len(configs) == 8  # (lora, qlora) x r(4, 8) x lr(2)
    assert sorted({(c.method, c.lora.r, c.train.learning_rate) for c in configs}) == sorted(
        (m, r, lr) for m in ("lora", "qlora") for r in (4, 8) for lr in (1e-3, 1e-4))


@pytest.mark.parametrize("vary, field", [
    ({}, "vary"),
    ({"lora.rank": [4]}, "lora.rank"),
    ({"lora.r": []}, "lora.r"),
    ({"lora.r": [0]}, "lora.r"),
    ({"method": ["tiny"]}, "method"),
    ({"data.train": ["a.csv"]}, "data.train"),
    ({"train.seed": [1, 2]}, "train.seed"),
    ({"quant.quant_type": ["nf4", "fp4"]}, "quant.quant_type"),  # no qlora run in this sweep
])
def test_invalid_sweeps_raise_before_anything_launches(runs_dir, vary, field):
    with pytest.raises(ConfigError) as err:
        launcher.sweep(cfg(), vary, runs_dir)
    assert err.value.field == field
    assert storage.list_runs(runs_dir) == []


def test_sweep_with_a_method_invalid_for_the_task_names_it(runs_dir):
    base = cfg(**{"task": "causal-lm", "model.source": "tiny-random-gpt2", "data.train": "sample:instructions"})
    with pytest.raises(ConfigError, match="head-only.*method=head-only"):
        launcher.sweep(base, {"method": ["full", "head-only"]}, runs_dir)
    assert storage.list_runs(runs_dir) == []


def test_concurrency_limit(monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "3")
    assert launcher.max_concurrent() == 3
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", "zero")
    with pytest.raises(ConfigError, match="LORA_LAB_MAX_CONCURRENT"):
        launcher.max_concurrent()
    monkeypatch.delenv("LORA_LAB_MAX_CONCURRENT")
    monkeypatch.delenv("LORA_LAB_GPUS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,5")
    assert launcher.visible_gpus() == ["2", "5"] and launcher.max_concurrent() == 2
    # a worker pinned to one GPU still sees the launcher's full list when it starts the next run
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    monkeypatch.setenv("LORA_LAB_GPUS", "2,5")
    assert launcher.visible_gpus() == ["2", "5"] and launcher.max_concurrent() == 2
    monkeypatch.delenv("LORA_LAB_GPUS")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert launcher.max_concurrent() == 1  # CPU only


def test_prepare_checks_local_files_and_makes_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="data.train: file not found: .*missing.csv"):
        launcher.prepare(cfg(**{"data.train": "missing.csv"}))
    (tmp_path / "d.csv").write_text("text,label\na,0\n")
    assert launcher.prepare(cfg(**{"data.train": "d.csv"})).data.train == str(tmp_path / "d.csv")
    assert launcher.prepare(cfg(**{"data.train": "imdb"})).data.train == "imdb"  # a hub id is left alone
    with pytest.raises(ConfigError, match="model.source: .*config.json"):
        launcher.prepare(cfg(**{"model.source": "./no-model"}))


def test_liveness_rules():
    import psutil

    now = time.time()
    me = psutil.Process()
    base = dict(id="x", name="x", status=RUNNING, created=now - 100, started=now - 100, host=storage.this_host())

    def reason(**fields):
        return launcher._dead_reason(storage.RunRecord(**{**base, **fields}))

    assert reason(pid=os.getpid(), pid_created=me.create_time(), heartbeat=now) is None  # alive
    assert "ended without recording an end" in reason(pid=os.getpid(), pid_created=me.create_time() - 50)  # reused
    assert "ended without recording an end" in reason(pid=2 ** 22 + 7, pid_created=now - 10)  # no such pid
    assert "never started" in reason(pid=None)  # claimed 100 s ago, no worker ever registered
    assert reason(pid=None, started=now - 1) is None  # being spawned right now
    other = dict(pid=os.getpid(), host="another-host")  # a pid we cannot check: only the heartbeat counts
    assert reason(**other, heartbeat=now - 3) is None
    assert "no heartbeat for" in reason(**other, heartbeat=now - 30)


def test_a_stop_escalates_on_the_next_look_even_if_the_stopper_went_away(runs_dir):
    rid = storage.create_run(cfg(), runs_dir).id
    storage.Registry(runs_dir).claim_next(limit=1)  # RUNNING, its worker not registered yet
    assert launcher.stop(rid, timeout=0.2, runs_dir=runs_dir, wait=False) == RUNNING
    record = storage.get_run(rid, runs_dir)
    assert record.stop_requested and record.stop_deadline
    assert storage.Registry(runs_dir).heartbeat(rid) is True  # the worker learns of the stop from its heartbeat
    launcher.reconcile(runs_dir)
    assert storage.get_run(rid, runs_dir).status == RUNNING  # before the deadline nothing is forced
    time.sleep(0.3)
    launcher.reconcile(runs_dir)
    record = storage.get_run(rid, runs_dir)
    assert record.status == STOPPED and "did not stop within" in record.error
