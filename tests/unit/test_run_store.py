"""Run directories, the registry and its state machine, the metrics stream, and the pure parts of the run
lifecycle (sweep expansion, the concurrency limit, config preparation, liveness rules). No training here."""
import json
import os
import sqlite3
import time

import pytest

from helpers import ROOT
from lora_core.config import ConfigError, ExperimentConfig
from lora_core.errors import RunError, StatusError
from lora_core.runs import RunRecord, Runs, RunStatus, files, launcher, layout, store
from lora_core.runs.manager import prepare
from lora_core.runs.sweep import sweep_configs

QUEUED, RUNNING, SUCCEEDED, FAILED, STOPPED = (RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.SUCCEEDED,
                                               RunStatus.FAILED, RunStatus.STOPPED)


def cfg(**dotted):
    return ExperimentConfig.from_dict({"name": "t"}).replace(**dotted) if dotted else \
        ExperimentConfig.from_dict({"name": "t"})


# -- ids and paths ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../../etc", "/etc/passwd", "..", "a/../../b", "~root", "C:\\Windows\\x",
                                  "é☃ name", "-" * 200, "x" * 200, "run\x00null", ". ."])
def test_run_ids_from_any_name_stay_inside_the_runs_dir(runs, runs_dir, name):
    config = ExperimentConfig.from_dict({"name": name})
    record = runs.create(config)
    assert layout.RUN_ID_RE.match(record.id), record.id
    path = (runs_dir / record.id).resolve()
    assert path.parent == runs_dir.resolve() and path.is_dir()
    assert len(record.id) <= 64
    assert [p.name for p in runs_dir.iterdir() if p.is_dir()] == [record.id]


def test_slug_keeps_a_readable_name():
    assert layout.slugify("My LoRA r=8 / sst2") == "my-lora-r-8-sst2"
    assert layout.slugify("../../etc") == "etc"
    assert layout.slugify("☃☃") == "run"


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", "", "A-UPPER", "x;rm -rf"])
def test_bad_run_ids_are_refused_with_the_id_in_the_message(runs, bad):
    for read in (runs.get, runs.dir, runs.metrics, runs.delete):
        with pytest.raises(RunError) as err:
            read(bad)
        assert repr(bad) in str(err.value)


def test_unknown_run_id_names_the_id(runs):
    for read in (runs.get, runs.config, runs.results, runs.log_tail, runs.checkpoints, runs.stop, runs.resume):
        with pytest.raises(RunError, match="nosuch-run"):
            read("nosuch-run")


def test_default_runs_dir_follows_the_env(runs_dir, monkeypatch):
    assert layout.default_runs_dir() == runs_dir.resolve()
    assert Runs().root == runs_dir.resolve()
    monkeypatch.delenv("LORA_LAB_RUNS_DIR")
    assert layout.default_runs_dir() == ROOT / "runs"


# -- creating and reading a run ------------------------------------------------------------------------------------

def test_create_run_writes_the_layout_and_a_queued_row(runs, runs_dir):
    config = cfg(**{"method": "lora", "lora.r": 4, "train.max_steps": 3})
    record = runs.create(config)
    rd = runs.dir(record.id)
    assert record.status is QUEUED and record.lora_r == 4 and record.method == "lora" and record.task == "seq-cls"
    assert rd.path == runs_dir / record.id
    assert rd.config.is_file() and rd.metrics.is_file() and rd.log.is_file() and rd.artifacts.path.is_dir()
    assert runs.config(record.id) == config
    assert json.loads(rd.status.read_text())["status"] == "QUEUED" and json.loads(rd.status.read_text())["lora_r"] == 4
    assert runs.results(record.id) is None
    # the record round-trips and names its directory
    assert runs.get(record.id, reconcile=False).to_dict() == record.to_dict()
    assert record.dir == rd
    # full fine-tuning has no rank
    assert runs.create(cfg(method="full")).lora_r is None


def test_status_is_an_enum_that_reads_as_its_name():
    assert RunStatus("FAILED") is FAILED and FAILED == "FAILED" and f"{FAILED}" == "FAILED" and str(FAILED) == "FAILED"
    assert [s for s in RunStatus if s.is_terminal()] == [SUCCEEDED, FAILED, STOPPED]
    assert not QUEUED.is_terminal() and not RUNNING.is_terminal()
    assert RunRecord(id="x", name="x", status="RUNNING", created=0.0).status is RUNNING
    with pytest.raises(StatusError, match="unknown status 'DONE'; allowed: QUEUED, RUNNING"):
        RunRecord(id="x", name="x", status="DONE", created=0.0)


def test_config_is_written_once(runs):
    record = runs.create(cfg())
    with pytest.raises(FileExistsError):
        open(runs.dir(record.id).config, "x")


def test_unique_prefix_finds_a_run(runs):
    record = runs.create(cfg(name="prefixed"))
    assert runs.get(record.id[:-3], reconcile=False).id == record.id
    assert runs.dir(record.id[:-3]) == record.dir
    runs.create(cfg(name="prefixed"))
    with pytest.raises(RunError):  # now ambiguous
        runs.get("prefixed", reconcile=False)


# -- the state machine ---------------------------------------------------------------------------------------------

def test_status_moves_forward_only_and_terminal_states_are_final(runs):
    rid = runs.create(cfg()).id
    registry = runs.registry
    with pytest.raises(StatusError, match="QUEUED to SUCCEEDED"):
        registry.set_status(rid, SUCCEEDED)
    with pytest.raises(StatusError, match="unknown status"):
        registry.set_status(rid, "DONE")
    running = registry.set_status(rid, RUNNING)
    assert running.started is not None and running.ended is None
    with pytest.raises(StatusError):
        registry.set_status(rid, QUEUED)
    done = registry.set_status(rid, SUCCEEDED, results={"eval_accuracy": 0.75})
    assert done.ended >= done.started and done.results == {"eval_accuracy": 0.75}
    for status in (RUNNING, FAILED, STOPPED, SUCCEEDED, QUEUED):
        with pytest.raises(StatusError, match="final"):
            registry.set_status(rid, status)
    assert json.loads(runs.dir(rid).status.read_text())["status"] == SUCCEEDED


def test_failed_carries_the_reason_and_the_log_tail(runs):
    rid = runs.create(cfg()).id
    log = runs.dir(rid).log
    log.write_text("".join(f"line {i}\n" for i in range(100)) + "Traceback: boom\n")
    runs.registry.set_status(rid, RUNNING)
    record = runs.registry.set_status(rid, FAILED, error="RuntimeError: boom")
    assert record.error == "RuntimeError: boom"
    assert record.error_log.endswith("Traceback: boom") and "line 99" in record.error_log
    assert "line 10\n" not in record.error_log  # a tail, not the whole log


def test_status_cannot_be_set_through_update(runs):
    rid = runs.create(cfg()).id
    with pytest.raises(RunError, match="status"):
        runs.registry.update(rid, status=SUCCEEDED)


def test_claim_respects_the_limit_and_the_queue_order(runs):
    registry = runs.registry
    ids = [runs.create(cfg(name=f"q{i}")).id for i in range(4)]
    assert [r.id for r in runs.queue()] == ids
    assert runs.move(ids[3], 0) == [ids[3], ids[0], ids[1], ids[2]]
    first = registry.claim_next(limit=2)
    second = registry.claim_next(limit=2)
    assert (first.id, second.id) == (ids[3], ids[0])
    assert {first.slot, second.slot} == {0, 1}
    assert registry.claim_next(limit=2) is None
    registry.set_status(first.id, SUCCEEDED)
    third = registry.claim_next(limit=2)
    assert third.id == ids[1] and third.slot == first.slot  # the freed slot (and its GPU) is reused
    with pytest.raises(RunError, match="not queued"):
        runs.move(third.id, 0)


def test_cancel_and_delete(runs, runs_dir):
    a = runs.create(cfg(name="a")).id
    b = runs.create(cfg(name="b")).id
    assert runs.cancel(a) is STOPPED
    assert runs.get(a, reconcile=False).error == "cancelled"
    with pytest.raises(StatusError):
        runs.cancel(a)
    runs.registry.claim_next(limit=1)  # b is claimed by a launcher: cancel must not touch it
    with pytest.raises(StatusError, match="RUNNING, not QUEUED"):
        runs.cancel(b)
    assert runs.get(b, reconcile=False).status is RUNNING
    with pytest.raises(RunError, match="stop it first"):
        runs.delete(b)
    runs.delete(a)
    assert not (runs_dir / a).exists()
    with pytest.raises(RunError):
        runs.get(a, reconcile=False)
    assert [r.id for r in runs.list(reconcile=False)] == [b]


def test_list_filters_and_order(runs):
    ids = [runs.create(cfg(name=f"l{i}"), sweep_id="sweep-x" if i % 2 else None).id for i in range(5)]
    assert [r.id for r in runs.list(reconcile=False)] == ids[::-1]  # newest first
    assert [r.id for r in runs.list(sweep_id="sweep-x", reconcile=False)] == [ids[3], ids[1]]
    runs.registry.set_status(ids[0], RUNNING)
    assert [r.id for r in runs.list(status=RUNNING, reconcile=False)] == [ids[0]]
    assert len(runs.list(status=[RUNNING, QUEUED], reconcile=False)) == 5
    assert [r.id for r in runs.list(status="RUNNING", reconcile=False)] == [ids[0]]  # a name works too


def test_a_lost_registry_is_rebuilt_from_the_run_dirs(runs, runs_dir):
    ids = [runs.create(cfg(name=f"r{i}")).id for i in range(3)]
    runs.registry.set_status(ids[0], RUNNING)
    runs.registry.set_status(ids[0], SUCCEEDED, results={"eval_loss": 0.5})
    for suffix in ("", "-wal", "-shm"):
        (runs_dir / f"registry.sqlite{suffix}").unlink(missing_ok=True)
    rebuilt = {r.id: r for r in runs.list(reconcile=False)}  # the same manager, whose registry went away
    assert set(rebuilt) == set(ids)
    assert rebuilt[ids[0]].status is SUCCEEDED and rebuilt[ids[0]].results == {"eval_loss": 0.5}


def old_registry(runs_dir, columns: str, *rows):
    con = sqlite3.connect(runs_dir / "registry.sqlite")
    con.execute(f"CREATE TABLE runs ({columns})")
    for row in rows:
        con.execute(f"INSERT INTO runs VALUES ({','.join('?' * len(row))})", row)
    con.commit()
    con.close()
    store._READY.clear()


def test_an_older_registry_gains_new_columns(runs_dir):
    old_registry(runs_dir, "id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL",
                 ("old-run-1", "old", "SUCCEEDED", 1.0))
    (old,) = Runs(runs_dir).list(reconcile=False)
    assert (old.id, old.status, old.heartbeat, old.results) == ("old-run-1", SUCCEEDED, None, {})


def test_the_rank_column_of_an_older_registry_becomes_lora_r(runs_dir):
    old_registry(runs_dir, "id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, created REAL NOT NULL, "
                           "method TEXT, rank INTEGER", ("old-lora", "old", "SUCCEEDED", 1.0, "lora", 16))
    runs = Runs(runs_dir)
    (old,) = runs.list(reconcile=False)
    assert (old.method, old.lora_r) == ("lora", 16)
    con = sqlite3.connect(runs_dir / "registry.sqlite")
    assert "rank" not in {row[1] for row in con.execute("PRAGMA table_info(runs)")}
    con.close()
    new = runs.create(cfg(**{"lora.r": 4}))
    assert runs.get(new.id, reconcile=False).lora_r == 4


def test_an_older_status_mirror_with_rank_is_imported(runs, runs_dir):
    rid = runs.create(cfg(**{"lora.r": 32})).id
    mirror = runs.dir(rid).status
    data = json.loads(mirror.read_text())
    data["rank"] = data.pop("lora_r")  # as an older version wrote it
    mirror.write_text(json.dumps(data))
    for suffix in ("", "-wal", "-shm"):
        (runs_dir / f"registry.sqlite{suffix}").unlink(missing_ok=True)
    (record,) = runs.list(reconcile=False)
    assert (record.id, record.status, record.lora_r) == (rid, QUEUED, 32)


# -- metrics, results, logs ------------------------------------------------------------------------------------------

def test_metrics_stream_round_trips_and_skips_a_corrupt_last_line(runs):
    rid = runs.create(cfg()).id
    path = runs.dir(rid).metrics
    for step in range(1, 4):
        files.append_event(path, {"kind": "log", "step": step, "loss": 1.0 / step})
    with open(path, "ab") as f:
        f.write(b'{"kind": "log", "step": 4, "lo')  # a write cut off by a crash
    events = runs.metrics(rid)
    assert [e["step"] for e in events] == [1, 2, 3]
    # once the line is complete it counts; a corrupt complete line is skipped and later events still count
    with open(path, "ab") as f:
        f.write(b'ss": 0.2}\n\x00\x00garbage\n[1, 2]\n{"kind": "log", "step": 5, "loss": 0.1}\n')
    assert [e["step"] for e in runs.metrics(rid)] == [1, 2, 3, 4, 5]


def test_metrics_since_an_offset_only_consumes_complete_lines(runs):
    rid = runs.create(cfg()).id
    path = runs.dir(rid).metrics
    files.append_event(path, {"step": 1, "loss": float("nan")})
    events = runs.metrics(rid)
    assert len(events) == 1 and events[0]["loss"] != events[0]["loss"]  # NaN survives
    offset = events.offset
    with open(path, "ab") as f:
        f.write(b'{"step": 2')
    later = runs.metrics(rid, since=offset)
    assert later == [] and later.offset == offset
    with open(path, "ab") as f:
        f.write(b', "loss": 0.5}\n')
    later = runs.metrics(rid, since=offset)
    assert later == [{"step": 2, "loss": 0.5}] and later.offset == path.stat().st_size


def test_results_and_key_results(runs):
    rid = runs.create(cfg()).id
    results = {"eval_accuracy": 0.8, "stopped": False, "train_time_s": 3.5, "device": "cpu",
               "params": {"trainable": 1000, "total": 10 ** 6}, "versions": {"torch": "2.13"},
               "generations": [{"prompt": "x"}], "long": "x" * 500, "nan": float("nan")}
    files.write_json(runs.dir(rid).results, results)
    assert runs.results(rid)["params"] == {"trainable": 1000, "total": 10 ** 6}
    key = store.key_results(results)
    assert key["eval_accuracy"] == 0.8 and key["params.trainable"] == 1000 and key["device"] == "cpu"
    assert key["versions.torch"] == "2.13" and key["nan"] is None
    assert "generations" not in key and "long" not in key


def test_log_tail(runs):
    rid = runs.create(cfg()).id
    runs.dir(rid).log.write_bytes(b"a\nb\n\xff\xfe bad utf8\nlast\n")
    assert runs.log_tail(rid, 2) == "\ufffd\ufffd bad utf8\nlast"


def test_checkpoints_are_complete_ones_only(runs):
    """A checkpoint counts once its marker (written after the save returned) lists its files at their sizes:
    one cut off mid-save has no marker; one whose state file was truncated later fails the size check."""
    rid = runs.create(cfg()).id
    artifacts = runs.dir(rid).artifacts
    for step, complete in ((4, True), (8, True), (12, False), (16, True)):  # 12 was cut off mid-save
        artifacts.checkpoint(step).mkdir(parents=True)
        (artifacts.checkpoint(step) / "trainer_state.json").write_text('{"global_step": %d}' % step)
        if complete:
            layout.mark_checkpoint_complete(artifacts.checkpoint(step))
    (artifacts.checkpoint(16) / "trainer_state.json").write_text('{"glob')  # truncated after the save
    assert runs.checkpoints(rid) == [(4, artifacts.checkpoint(4)), (8, artifacts.checkpoint(8))]


# -- the lifecycle's pure parts ---------------------------------------------------------------------------------------

def names(configs):
    return [(c.method, c.lora.r if c.uses_lora else None) for c in configs]


def test_sweep_adds_methods_and_does_not_cross_ranks_with_full_or_head_only():
    base = cfg(method="lora")
    configs = sweep_configs(base, {"lora.r": [4, 8, 16], "method": ["full", "head-only"]})
    assert names(configs) == [("lora", 4), ("lora", 8), ("lora", 16), ("full", None), ("head-only", None)]
    assert len({c.name for c in configs}) == 5
    # same seed, data and eval split everywhere
    assert {(c.train.seed, c.data.train, c.data.eval_fraction) for c in configs} == \
        {(base.train.seed, base.data.train, base.data.eval_fraction)}


def test_sweep_crosses_other_fields_and_dedupes():
    configs = sweep_configs(cfg(), {"lora.r": [4, 4, 8], "train.learning_rate": [1e-3, 1e-4],
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
def test_invalid_sweeps_raise_before_anything_launches(runs, vary, field):
    with pytest.raises(ConfigError) as err:
        runs.sweep(cfg(), vary)
    assert err.value.field == field
    assert runs.list(reconcile=False) == []


def test_sweep_with_a_method_invalid_for_the_task_names_it(runs):
    base = cfg(**{"task": "causal-lm", "model.source": "tiny-random-gpt2", "data.train": "sample:instructions"})
    with pytest.raises(ConfigError, match="head-only.*method=head-only"):
        runs.sweep(base, {"method": ["full", "head-only"]})
    assert runs.list(reconcile=False) == []


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
        prepare(cfg(**{"data.train": "missing.csv"}))
    (tmp_path / "d.csv").write_text("text,label\na,0\n")
    assert prepare(cfg(**{"data.train": "d.csv"})).data.train == str(tmp_path / "d.csv")
    assert prepare(cfg(**{"data.train": "imdb"})).data.train == "imdb"  # a hub id is left alone
    with pytest.raises(ConfigError, match="model.source: .*config.json"):
        prepare(cfg(**{"model.source": "./no-model"}))


def test_liveness_rules():
    import psutil

    now = time.time()
    me = psutil.Process()
    base = dict(id="x", name="x", status=RUNNING, created=now - 100, started=now - 100, host=launcher.this_host())

    def reason(**fields):
        return launcher.LocalProcesses().dead_reason(RunRecord(**{**base, **fields}))

    assert reason(pid=os.getpid(), pid_created=me.create_time(), heartbeat=now) is None  # alive
    assert "ended without recording an end" in reason(pid=os.getpid(), pid_created=me.create_time() - 50)  # reused
    assert "ended without recording an end" in reason(pid=2 ** 22 + 7, pid_created=now - 10)  # no such pid
    assert "never started" in reason(pid=None)  # claimed 100 s ago, no worker ever registered
    assert reason(pid=None, started=now - 1) is None  # being spawned right now
    other = dict(pid=os.getpid(), host="another-host")  # a pid we cannot check: only the heartbeat counts
    assert reason(**other, heartbeat=now - 3) is None
    assert "no heartbeat for" in reason(**other, heartbeat=now - 30)


def test_a_stop_escalates_on_the_next_look_even_if_the_stopper_went_away(runs, runs_dir):
    rid = runs.create(cfg()).id
    runs.registry.claim_next(limit=1)  # RUNNING, its worker not registered yet
    assert runs.stop(rid, timeout=0.2, wait=False) is RUNNING
    record = runs.get(rid, reconcile=False)
    assert record.stop_requested and record.stop_deadline
    assert runs.registry.heartbeat(rid) is True  # the worker learns of the stop from its heartbeat
    later = Runs(runs_dir)  # another process (the next page refresh) looks
    assert later.get(rid).status is RUNNING  # before the deadline nothing is forced
    time.sleep(0.3)
    record = later.get(rid)
    assert record.status is STOPPED and "did not stop within" in record.error


def test_plan_sweep_validates_and_creates_nothing(runs, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d.csv").write_text("text,label\na,0\nb,1\n")
    planned = runs.plan_sweep(cfg(**{"data.train": "d.csv"}), {"lora.r": [4, 8], "method": ["full"]})
    assert [(c.method, c.lora.r) for c in planned] == [("lora", 4), ("lora", 8), ("full", 8)]
    assert {c.data.train for c in planned} == {str(tmp_path / "d.csv")}  # prepared like a launch
    assert runs.list(reconcile=False) == []


@pytest.mark.parametrize("method, folder, marker", [
    ("lora", "adapter", "adapter/adapter_config.json"), ("qlora", "adapter", "adapter/adapter_config.json"),
    ("full", "model", "model/config.json"), ("head-only", "head", "head/head.safetensors")])
def test_each_method_saves_its_weights_in_its_own_folder(tmp_path, method, folder, marker):
    artifacts = layout.Artifacts(tmp_path)
    assert artifacts.weights(method) == tmp_path / folder
    assert artifacts.weights_marker(method) == tmp_path / marker
