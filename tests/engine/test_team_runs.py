"""The run manager with actors (issue #11): owners, roles checked and audited, what a browser request may touch
(paths inside the data roots, allowlisted hub ids and remote code, per-user caps), the CLI and local mode
unchanged. Nothing here starts a worker: launches that pass are made with reconcile switched off."""
from __future__ import annotations

import os

import pytest

from helpers import tiny_config
from lora_core.config import ConfigError
from lora_core import preflight
from lora_core.errors import ModelError, RunError
from lora_core.runs import Runs, RunStatus
from lora_core.team.access import VIA_ACCOUNT, VIA_LOCAL, VIA_OIDC, VIA_OPEN, AccessError, Actor, Role, os_user

VIEWER = Actor("vera", Role.VIEWER, VIA_OIDC)
OTTO = Actor("otto", Role.OPERATOR, VIA_ACCOUNT)
OLGA = Actor("olga", Role.OPERATOR, VIA_OIDC)
ADMIN = Actor("ada", Role.ADMIN, VIA_ACCOUNT)
CSV = "text,label\ngood film,1\nbad film,0\ngreat,1\nawful,0\nfine,1\nmeh,0\n"


@pytest.fixture
def quiet(runs, monkeypatch):
    """The manager with reconcile off: launched runs stay QUEUED, no worker starts."""
    monkeypatch.setattr(runs, "reconcile", lambda: [])
    return runs


@pytest.fixture
def roots(tmp_path, monkeypatch):
    """A data root with a CSV and a model folder in it; a CSV, a model folder and a link to them outside it."""
    inside, outside = tmp_path / "data", tmp_path / "private"
    for folder in (inside, outside):
        folder.mkdir()
        (folder / "train.csv").write_text(CSV)
        (folder / "model").mkdir()
        (folder / "model" / "config.json").write_text('{"model_type": "bert"}')
    (inside / "link.csv").symlink_to(outside / "train.csv")
    monkeypatch.setenv("LORA_LAB_DATA_ROOTS", str(inside))
    return inside, outside


def test_every_run_records_its_owner(quiet):
    by_cli = quiet.launch(tiny_config())
    by_otto = quiet.launch(tiny_config(), actor=OTTO)
    assert quiet.get(by_cli, reconcile=False).owner == os_user()
    assert quiet.get(by_otto, reconcile=False).owner == "otto"
    assert [r.id for r in quiet.list(owner="otto", reconcile=False)] == [by_otto]
    launches = quiet.audit_log(action="launch")
    assert {(e.actor, e.run_id, e.via) for e in launches} == {(os_user(), by_cli, "cli"), ("otto", by_otto, VIA_ACCOUNT)}


def test_a_viewer_cannot_launch_and_the_refusal_is_audited(quiet):
    with pytest.raises(AccessError, match="launch needs the operator role; vera is a viewer"):
        quiet.launch(tiny_config(), actor=VIEWER)
    with pytest.raises(AccessError):
        quiet.sweep(tiny_config(), {"lora.r": [2, 4]}, actor=VIEWER)
    assert quiet.list(reconcile=False) == []
    assert [(e.actor, e.action, e.outcome) for e in quiet.audit_log()] == [("vera", "sweep", "denied"),
                                                                ("vera", "launch", "denied")]


def test_operators_act_on_their_own_runs_and_admins_on_all(quiet):
    mine, theirs = quiet.launch(tiny_config(), actor=OTTO), quiet.launch(tiny_config(), actor=OLGA)
    with pytest.raises(AccessError, match="otto may stop only their own runs; this one belongs to olga"):
        quiet.stop(theirs, actor=OTTO)
    with pytest.raises(AccessError):
        quiet.move(theirs, 0, actor=OTTO)
    assert quiet.get(theirs, reconcile=False).status == RunStatus.QUEUED
    assert quiet.cancel(mine, actor=OTTO) == RunStatus.STOPPED
    with pytest.raises(AccessError, match="delete needs the admin role"):
        quiet.delete(mine, actor=OTTO)
    quiet.cancel(theirs, actor=ADMIN)
    quiet.delete(theirs, actor=ADMIN)
    assert [r.id for r in quiet.list(reconcile=False)] == [mine]
    log = [(e.actor, e.action, e.run_id, e.outcome) for e in reversed(quiet.audit_log())]
    assert ("otto", "stop", theirs, "denied") in log and ("otto", "cancel", mine, "ok") in log
    assert ("ada", "delete", theirs, "ok") in log and ("otto", "delete", mine, "denied") in log


def test_run_ids_from_requests_are_checked_before_any_path_is_built(runs):
    for bad in ("../registry", "..", "a/../../etc", "/etc/passwd"):
        with pytest.raises(RunError, match="invalid run id"):
            runs.dir(bad)
        with pytest.raises(RunError, match="invalid run id"):
            runs.delete(bad, actor=ADMIN)


@pytest.mark.parametrize("field, where", [("data.train", "absolute"), ("data.train", "dotdot"),
                                          ("data.train", "symlink"), ("data.eval", "absolute"),
                                          ("model.source", "absolute"), ("model.source", "dotdot")])
def test_paths_outside_the_roots_are_refused_on_a_shared_server(quiet, roots, field, where):
    inside, outside = roots
    target = {"data.train": "train.csv", "data.eval": "train.csv", "model.source": "model"}[field]
    path = {"absolute": str(outside / target), "dotdot": f"{inside}/../private/{target}",
            "symlink": str(inside / "link.csv")}[where]
    missing = str(outside / ("nothing-" + target))
    messages = []
    for value in (path, missing):  # an existing file and a missing one get the very same refusal
        with pytest.raises(ConfigError) as err:
            quiet.launch(tiny_config(**{field: value}), actor=OTTO)
        assert err.value.field == field
        messages.append(str(err.value))
    assert messages[0] == messages[1]  # says nothing about whether the file exists
    assert "reads and writes files only inside" in messages[0] and "private" not in messages[0]
    assert quiet.list(reconcile=False) == []


def test_the_same_paths_work_from_the_cli_and_in_local_mode(quiet, roots):
    _, outside = roots
    cfg = tiny_config(**{"data.train": str(outside / "train.csv")})
    assert quiet.launch(cfg)  # the CLI: the OS user on the server, trusted
    assert quiet.launch(cfg, actor=Actor(os_user(), Role.ADMIN, VIA_LOCAL))
    inside_root = quiet.launch(tiny_config(**{"data.train": str(roots[0] / "train.csv")}), actor=OTTO)
    assert quiet.get(inside_root, reconcile=False).owner == "otto"


def test_an_open_server_confines_too_and_protects_its_own_files(quiet, roots, runs_dir):
    anonymous = Actor("anonymous", Role.ADMIN, VIA_OPEN)
    with pytest.raises(ConfigError, match="data.train"):
        quiet.launch(tiny_config(**{"data.train": str(roots[1] / "train.csv")}), actor=anonymous)
    os.environ["LORA_LAB_DATA_ROOTS"] = str(runs_dir.parent)  # even when a root holds the users file
    with pytest.raises(ConfigError, match="data.train"):
        quiet.launch(tiny_config(**{"data.train": os.environ["LORA_LAB_USERS_FILE"]}), actor=anonymous)


def test_hub_allowlists(quiet):
    quiet.update_settings({"hub_models": ["org/allowed"], "hub_datasets": ["glue"]})
    with pytest.raises(ConfigError, match="model.source: 'org/other' is not one of this server's hub models"):
        quiet.launch(tiny_config(**{"model.source": "org/other"}), actor=OTTO)
    with pytest.raises(ConfigError, match="data.train: 'imdb' is not one of this server's hub datasets"):
        quiet.launch(tiny_config(**{"data.train": "imdb"}), actor=OTTO)
    assert quiet.launch(tiny_config(), actor=OTTO)  # bundled models and samples are always allowed


def test_remote_code_needs_the_allowlist_on_a_shared_server_and_a_confirmation_locally(quiet, monkeypatch):
    cfg = tiny_config(**{"model.source": "org/custom", "model.trust_remote_code": True})
    with pytest.raises(ConfigError, match="model.trust_remote_code: this server runs a model's own code only"):
        quiet.launch(cfg, actor=OTTO)
    local = Actor(os_user(), Role.ADMIN, VIA_LOCAL)
    with pytest.raises(ConfigError, match="confirm that you trust the code shipped with 'org/custom'"):
        quiet.launch(cfg, actor=local)
    # admitted, the config meets the pre-launch check, which reads the model: org/custom is not on this offline
    # machine. The refusals above came first, from the policy; from here on only admission is under test.
    with pytest.raises(ModelError, match="hub is unreachable"):
        quiet.launch(cfg)
    monkeypatch.setattr(preflight.Preflight, "check", lambda self, cfg, ignore_memory=False: None)
    assert quiet.launch(cfg, actor=Actor(local.name, Role.ADMIN, VIA_LOCAL, trusted_code=frozenset({"org/custom"})))
    quiet.update_settings({"trust_remote_code": ["org/custom"]}, actor=ADMIN)
    assert quiet.launch(cfg, actor=OTTO)
    assert quiet.launch(cfg)  # the CLI is trusted
    change = quiet.audit_log(action="settings")[0]
    assert (change.actor, change.detail) == ("ada", {"trust_remote_code": ["org/custom"]})


def test_per_user_caps_on_queued_runs_and_sweep_sizes(quiet):
    quiet.update_settings({"max_queued_per_user": 3, "max_sweep_runs": 2})
    with pytest.raises(ConfigError, match="this sweep has 3 runs; a sweep from the dashboard may have at most 2"):
        quiet.sweep(tiny_config(), {"lora.r": [2, 4, 8]}, actor=OTTO)
    quiet.sweep(tiny_config(), {"lora.r": [2, 4]}, actor=OTTO)
    quiet.launch(tiny_config(), actor=OTTO)
    with pytest.raises(RunError, match="otto has 3 run\\(s\\) queued or running; adding 1 would pass"):
        quiet.launch(tiny_config(), actor=OTTO)
    assert quiet.launch(tiny_config(), actor=OLGA)  # per user
    assert quiet.sweep(tiny_config(), {"lora.r": [2, 4, 8, 16]})  # the CLI is trusted
    with pytest.raises(AccessError, match="settings needs the admin role"):
        quiet.update_settings({"max_sweep_runs": 100}, actor=OTTO)
    with pytest.raises(ConfigError, match="max_sweep_runs: must be >= 1"):
        quiet.update_settings({"max_sweep_runs": 0})


def test_merge_output_outside_the_roots_is_refused_before_anything_loads(quiet, roots):
    run_id = quiet.launch(tiny_config(), actor=OTTO)
    with pytest.raises(ConfigError, match="merge.out: this server reads and writes files only inside"):
        quiet.merge(run_id, roots[1] / "merged", actor=OTTO)
    with pytest.raises(AccessError):
        quiet.merge(run_id, actor=OLGA)


def test_the_sweep_cap_counts_every_seed(quiet):
    quiet.update_settings({"max_sweep_runs": 3})
    with pytest.raises(ConfigError, match="this sweep has 4 runs; a sweep from the dashboard may have at most 3"):
        quiet.sweep(tiny_config(), {"lora.r": [2, 4]}, 2, actor=OTTO)
    assert len(quiet.plan_sweep(tiny_config(), {"lora.r": [2, 4]}, 2, actor=OTTO)) == 4  # planning is not capped
    _, run_ids = quiet.sweep(tiny_config(), {"lora.r": [2]}, 3, actor=OTTO)
    assert {quiet.get(i, reconcile=False).owner for i in run_ids} == {"otto"}
    seed = tiny_config().train.seed
    assert sorted(quiet.config(i).train.seed for i in run_ids) == [seed, seed + 1, seed + 2]


def test_playground_votes_need_an_operator_and_are_audited(quiet):
    first, second = quiet.launch(tiny_config()), quiet.launch(tiny_config())
    with pytest.raises(AccessError, match="vote needs the operator role; vera is a viewer"):
        quiet.record_vote(first, [first, second], "a prompt", actor=VIEWER)
    assert quiet.votes(first) == {"wins": 0, "comparisons": 0, "ties": 0}
    vote = quiet.record_vote(first, [first, second], "a prompt", actor=OTTO)
    assert vote["actor"] == "otto" and quiet.votes(first)["wins"] == 1
    entries = quiet.audit_log(action="vote")
    assert [(e.actor, e.outcome) for e in entries] == [("otto", "ok"), ("vera", "denied")]
