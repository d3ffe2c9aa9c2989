"""The run directories are the truth; the registry is an index. A registry deleted, emptied, cut in half or
overwritten with garbage is moved aside (kept) and rebuilt on the next look, in a fresh process (the CLI) and
in a long-lived one (the dashboard's manager), with every run still there; `reindex` does it on demand.
Damaged status.json / results.json files lose no run and fail no page. Plus the registry's other edges:
destructive actions take whole ids, ids with a newline are refused, names print safely, the queue is capped,
a bad concurrency limit creates nothing, and a status read does not read the whole metrics stream."""
from __future__ import annotations

import json
import os
import sqlite3

import pytest
from streamlit.testing.v1 import AppTest

from helpers import ROOT, cli
from lora_core.config import ExperimentConfig
from lora_core.errors import ConfigError, RunError
from lora_core.runs import Runs, RunStatus, files, layout
from lora_core.runs.store import AuditEntry

pytestmark = pytest.mark.reliability

RUNS = 33


def make_runs(runs: Runs, n: int = RUNS) -> list[str]:
    """n ended runs (STOPPED, SUCCEEDED, FAILED in turn), made through the manager: nothing is left for a look
    (which reconciles) to start."""
    ids = []
    for i in range(n):
        rid = runs.create(ExperimentConfig.from_dict({"name": f"run {i}", "lora": {"r": 1 + i % 8}})).id
        if i % 3 == 0:
            runs.cancel(rid)
        else:
            runs.registry.set_status(rid, RunStatus.RUNNING)
            end = RunStatus.SUCCEEDED if i % 3 == 1 else RunStatus.FAILED
            runs.registry.set_status(rid, end, results={"accuracy": i / n}, error=None if i % 3 == 1 else "boom")
        ids.append(rid)
    return ids


DAMAGE = {
    "deleted": lambda p: p.unlink(),
    "zero bytes": lambda p: p.write_bytes(b""),
    "cut in half": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),
    "garbage header": lambda p: p.write_bytes(b"\x00garbage!" * 12 + p.read_bytes()[108:]),
    "all garbage": lambda p: p.write_bytes(os.urandom(p.stat().st_size)),
}


def damage(runs_dir, how: str) -> None:
    registry = layout.registry_path(runs_dir)
    for part in layout.sqlite_companions(registry):  # a checkpointed registry: the damage is all in one file
        part.unlink(missing_ok=True)
    DAMAGE[how](registry)


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_damaged_registry_is_kept_aside_and_rebuilt_for_the_cli(runs, runs_dir, how):
    ids = make_runs(runs)
    statuses = {r.id: r.status for r in runs.list(reconcile=False)}
    damage(runs_dir, how)
    listed = cli("list", "--json", "--runs-dir", str(runs_dir), check=False)
    assert listed.returncode == 0 and "Traceback" not in listed.stderr, listed.stderr
    assert {r["id"]: r["status"] for r in json.loads(listed.stdout)} == statuses  # no run lost, none changed
    assert len(ids) == RUNS
    notices = [line for line in listed.stderr.splitlines() if line.startswith("lora-lab: ")]
    assert len(notices) == 1 and "rebuilt it from 33 run directories" in notices[0], listed.stderr
    kept = layout.registries_aside(runs_dir)
    assert len(kept) == (0 if how == "deleted" else 1)  # the damaged file is kept for inspection


@pytest.mark.parametrize("how", list(DAMAGE))
def test_a_long_lived_manager_rebuilds_on_its_next_look(runs, runs_dir, how):
    make_runs(runs)
    runs.list()  # the manager has opened the registry: later damage happens under it, as under a dashboard
    damage(runs_dir, how)
    assert len(runs.list()) == RUNS
    assert runs.notices() and "rebuilt it from 33 run directories" in runs.notices()[-1]
    assert len(runs.list()) == RUNS and len(runs.notices()) == 1  # once, not on every look


def test_reindex_on_demand(runs, runs_dir):
    make_runs(runs)
    out = cli("reindex", "--runs-dir", str(runs_dir))
    assert "rebuilt the run registry from 33 run directories; the old one is kept as registry.sqlite.reindexed-" \
        in out.stdout
    assert len(layout.registries_aside(runs_dir)) == 1 and len(Runs(runs_dir).list()) == RUNS


def test_damaged_status_and_results_files_lose_no_run(runs, runs_dir):
    """The registry is garbage AND some runs' status.json are cut short: those runs are rebuilt from their
    config and results (a half-written results.json reads as no results), the rest from their mirrors."""
    ids = make_runs(runs, 6)
    succeeded = next(r for r in runs.list(reconcile=False) if r.status is RunStatus.SUCCEEDED)
    files.write_json(succeeded.dir.results, {"accuracy": 0.5, "stopped": False})
    failed = next(r for r in runs.list(reconcile=False) if r.status is RunStatus.FAILED)
    for record in (succeeded, failed):
        record.dir.status.write_text('{"id": "' + record.id + '", "sta')
        os.utime(record.dir.config, (0, 0))  # created long ago (a run dir being created now is left alone)
    cancelled = next(r for r in runs.list(reconcile=False) if r.status is RunStatus.STOPPED)
    cancelled.dir.results.write_text('{"accuracy": 0.')  # half-written results
    damage(runs_dir, "all garbage")
    rebuilt = {r.id: r for r in Runs(runs_dir).list(reconcile=False)}
    assert sorted(rebuilt) == sorted(ids)
    assert rebuilt[succeeded.id].status is RunStatus.SUCCEEDED and rebuilt[succeeded.id].results["accuracy"] == 0.5
    assert rebuilt[failed.id].status is RunStatus.FAILED and "status was lost" in rebuilt[failed.id].error
    assert Runs(runs_dir).results(cancelled.id) is None


# -- the team's records (issue #11) live only in the registry: a rebuild must not lose them silently -----------

@pytest.mark.parametrize("how", ["reindex", "garbage header", "cut in half"])
def test_a_rebuilt_registry_keeps_owners_and_an_append_only_audit_log(runs, runs_dir, capsys, how):
    owners = {runs.create(ExperimentConfig.from_dict({"name": f"run of {who}"}), owner=who).id: who
              for who in ("ana", "ben")}
    for rid in owners:
        runs.cancel(rid)  # audited, as the CLI's OS user
    runs.registry.audit(AuditEntry("ana", "launch", next(iter(owners))))
    runs.registry.save_settings({"max_sweep_runs": 3}, "ada")
    before = runs.audit_log(None)
    if how == "reindex":
        notice = runs.reindex()
    else:
        damage(runs_dir, how)
        fresh = Runs(runs_dir)
        fresh.list(reconcile=False)
        notice = fresh.notices()[-1]
    rebuilt = Runs(runs_dir)
    assert {r.id: r.owner for r in rebuilt.list(reconcile=False)} == owners  # from each run's status.json
    assert [r.id for r in rebuilt.list(owner="ben", reconcile=False)] == [k for k, v in owners.items() if v == "ben"]
    kept = rebuilt.audit_log(None)
    if how == "reindex":  # a healthy file: everything is carried over, the settings too
        assert [e.to_dict() for e in kept] == [e.to_dict() for e in before]
        assert rebuilt.team_settings().max_sweep_runs == 3 and "carried over rows from it: 3 audit" in notice
    elif how == "garbage header":  # nothing can be read: said in the notice (on stderr too), not dropped silently
        assert kept == [] and "could not read the audit log, sessions or settings in it" in notice
        assert "could not read the audit log" in capsys.readouterr().err
    else:  # whatever survived is carried, and whatever did not is said
        assert "carried over rows from it" in notice or "could not read" in notice
        assert {e.id for e in kept} <= {e.id for e in before}
    # the audit table is back with its triggers: appends work, changes are refused
    assert rebuilt.registry.audit(AuditEntry("ada", "settings", detail={"after": how}))
    con = sqlite3.connect(layout.registry_path(runs_dir))
    try:
        triggers = {row[0] for row in con.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert {"audit_no_update", "audit_no_delete"} <= triggers
        for sql in ("UPDATE audit SET actor = 'mallory'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.DatabaseError, match="append-only"):
                con.execute(sql)
    finally:
        con.close()
    assert rebuilt.audit_log(1)[0].detail == {"after": how}


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    at.switch_page(f"pages/{name}.py").run()
    return at


@pytest.mark.parametrize("name", ["train", "runs"])
def test_pages_survive_a_damaged_registry(runs, runs_dir, name):
    make_runs(runs, 4)
    damage(runs_dir, "garbage header")
    at = page(name)
    assert not at.exception, [e.value for e in at.exception]
    if name == "runs":
        assert any("rebuilt it from 4 run directories" in w.value for w in at.warning)
        assert "4 of 4 runs" in " ".join(c.value for c in at.caption)


# -- ids, names, limits ------------------------------------------------------------------------------------------

def test_destructive_actions_take_whole_ids(runs, runs_dir):
    (rid,) = make_runs(runs, 1)
    for action in (runs.delete, runs.cancel, runs.stop):
        with pytest.raises(RunError, match="did you mean"):
            action(rid[:3])
    refused = cli("delete", rid[0], "--runs-dir", str(runs_dir), check=False)
    assert refused.returncode == 2 and "did you mean" in refused.stderr
    assert runs.get(rid[:3]).id == rid  # reading still takes a unique prefix
    runs.delete(rid)
    assert runs.list() == [] and not any(runs_dir.glob(f"*{rid}*"))


def test_run_ids_with_a_trailing_newline_are_refused():
    for bad in ("abc\n", "abc\r\n", "ab\nc", " abc"):
        with pytest.raises(RunError, match="invalid run id"):
            layout.check_run_id(bad)


def test_list_prints_names_safely(runs, runs_dir):
    runs.cancel(runs.create(ExperimentConfig.from_dict({"name": "evil\nFAKE-ROW SUCCEEDED\x1b[2J\x1b[31mred"})).id)
    out = cli("list", "--runs-dir", str(runs_dir)).stdout
    assert len(out.splitlines()) == 1 and "\x1b" not in out
    assert "evil\\nFAKE-ROW SUCCEEDED\\x1b[2J\\x1b[31mred" in out


@pytest.mark.parametrize("value", ["0", "-1", "two", "99999999999"])
def test_a_bad_concurrency_limit_creates_nothing(runs, monkeypatch, value):
    monkeypatch.setenv("LORA_LAB_MAX_CONCURRENT", value)
    with pytest.raises(ConfigError, match="LORA_LAB_MAX_CONCURRENT"):
        runs.launch(ExperimentConfig.from_dict({"name": "orphan?"}))
    assert runs.list(reconcile=False) == []


def test_the_queue_is_capped(runs, monkeypatch):
    monkeypatch.setenv("LORA_LAB_MAX_QUEUED", "3")
    cfg = ExperimentConfig.from_dict({"name": "q"})
    for _ in range(3):
        runs.create(cfg)
    with pytest.raises(RunError, match="the queue is full: 3 runs are waiting"):
        runs.create(cfg)
    with pytest.raises(RunError, match="the queue has room for 0 more runs"):
        runs.sweep(cfg, {"lora.r": [2, 4]})
    assert len(runs.list(reconcile=False)) == 3


def test_status_reads_only_the_end_of_a_long_metrics_stream(runs, runs_dir, monkeypatch):
    rid = runs.create(ExperimentConfig.from_dict({"name": "long"})).id
    path = runs.dir(rid).metrics
    lines = [json.dumps({"kind": "phase", "phase": "training"})] + [
        json.dumps({"kind": "log", "step": i, "loss": 1.0, "progress": i / 200_000}) for i in range(1, 200_001)]
    path.write_text("\n".join(lines) + "\n")
    read = []
    real_open = open

    def counting_open(*args, **kwargs):
        f = real_open(*args, **kwargs)
        real_read = f.read
        f.read = lambda *a: (lambda data: (read.append(len(data)), data)[1])(real_read(*a))
        return f

    monkeypatch.setattr(files, "open", counting_open, raising=False)
    latest = runs.latest(rid)
    assert latest["last"]["step"] == 200_000 and latest["phase"] == "training"
    assert latest["progress"] == 1.0
    assert sum(read) <= files.TAIL_BYTES < path.stat().st_size / 100
