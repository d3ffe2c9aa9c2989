"""The dashboard on a team server (issue #11), through AppTest with a signed-in identity-provider user (at.user):
controls by role, refusals from the service and the engine for requests that skip the widgets, the reproductions
of the remote-code and file-read findings, escaped run names, uploads, and the Team page. Local accounts (cookies)
and the real identity provider are covered by the browser tests."""
from __future__ import annotations

from pathlib import Path

import pytest

from streamlit.testing.v1 import AppTest

from apptest_helpers import APP, errors, no_exception, open_page, texts
from helpers import fake_running, tiny_config
from lora_core.runs import Runs, RunStatus
from lora_core.team.accounts import Accounts

pytestmark = pytest.mark.timeout(300)

CSV = "text,label\nSECRET-CELL-1,alpha\nSECRET-CELL-2,beta\nSECRET-CELL-3,alpha\nSECRET-CELL-4,beta\n"
PAYLOAD = "![pixel](http://127.0.0.1:9/track.png) [click me](http://evil.example/login)"


def as_user(at: AppTest, email: str) -> AppTest:
    at.user = {"is_logged_in": True, "email": email, "sub": email.split("@")[0], "iat": 1}
    return at


def page(name: str, email: str | None = None, session: dict | None = None) -> AppTest:
    """`name` (pages/<name>.py) through app.py's navigation, signed in as `email` when given."""
    at = AppTest.from_file(APP, default_timeout=120)
    if email:
        as_user(at, email)
    for key, value in (session or {}).items():
        at.session_state[key] = value
    at.run()
    no_exception(at)
    at.switch_page(f"pages/{name}.py").run()
    no_exception(at)
    return at


@pytest.fixture
def team(runs_dir, tmp_path, monkeypatch):
    """Team mode with a data root, three people the identity provider signs in, and a quiet run manager."""
    monkeypatch.setenv("LORA_LAB_MODE", "team")
    data = tmp_path / "data"
    data.mkdir()
    monkeypatch.setenv("LORA_LAB_DATA_ROOTS", str(data))
    accounts = Accounts()
    for name, role in (("vera@example.com", "viewer"), ("otto@example.com", "operator"),
                       ("ada@example.com", "admin")):
        accounts.add(name, role)
    return Runs(runs_dir)


def buttons(at: AppTest) -> set[str]:
    return {b.key for b in at.button if b.key}


def test_signed_out_visitors_see_only_the_sign_in_page(team):
    at = AppTest.from_file(APP, default_timeout=60).run()
    no_exception(at)
    assert "Sign in" in texts(at) and not any(t.value == "Train" for t in at.title)
    at = as_user(AppTest.from_file(APP, default_timeout=60), "stranger@example.com").run()
    assert "has not given you a role" in texts(at)  # signed in at the provider, not on this server's list
    refused = team.audit_log(action="sign-in")[0]
    assert (refused.actor, refused.outcome) == ("stranger@example.com", "denied")


def test_a_viewer_sees_no_launch_or_stop_controls_and_a_forged_launch_is_refused(team):
    running = fake_running(team, tiny_config(name="otto-run"), "otto@example.com")
    at = page("train", "vera@example.com")
    keys = buttons(at)
    assert "train_launch" not in keys and "train_sweep_go" not in keys and f"train_stop_{running.id}" not in keys
    assert "needs the operator role" in texts(at) and "otto-run" in texts(at)  # watching is allowed
    at = page("runs", "vera@example.com")
    assert "runs_stop" not in buttons(at) and "runs_delete" not in buttons(at)

    def forged():  # the launch a viewer's session cannot click, sent to the service anyway
        import streamlit as st

        from helpers import tiny_config
        from lora_ui import service

        for action in (lambda: service.launch(tiny_config(name="forged")),
                       lambda: service.stop(st.session_state["target"])):
            try:
                action()
            except Exception as exc:  # noqa: BLE001
                st.error(f"{type(exc).__name__}: {exc}")

    at = as_user(AppTest.from_function(forged), "vera@example.com")
    at.session_state["target"] = running.id
    at.run()
    assert errors(at) == ["AccessError: refused: launch needs the operator role; vera@example.com is a viewer",
                          "AccessError: refused: stop needs the operator role; vera@example.com is a viewer"]
    assert [r.name for r in team.list(reconcile=False)] == ["otto-run"]
    denied = [(e.actor, e.action, e.outcome) for e in team.audit_log() if e.action != "sign-in"]
    assert denied == [("vera@example.com", "stop", "denied"), ("vera@example.com", "launch", "denied")]


def test_an_operator_may_stop_its_own_run_only(team):
    mine = fake_running(team, tiny_config(name="mine"), "otto@example.com")
    theirs = fake_running(team, tiny_config(name="theirs"), "ada@example.com")
    at = page("train", "otto@example.com")
    assert f"train_stop_{mine.id}" in buttons(at) and f"train_stop_{theirs.id}" not in buttons(at)
    assert "train_launch" in buttons(at)
    at.button(key=f"train_stop_{mine.id}").click().run()
    no_exception(at)
    assert team.get(mine.id, reconcile=False).stop_requested
    stop = team.audit_log(action="stop")[0]
    assert (stop.actor, stop.run_id, stop.role, stop.via) == ("otto@example.com", mine.id, "operator", "oidc")


def test_run_names_with_markdown_payloads_render_as_plain_text(team):
    record = team.create(tiny_config(name=PAYLOAD), owner="otto@example.com")
    team.cancel(record.id)
    for name in ("train", "runs"):
        at = page(name, "otto@example.com", {"train_launched": [record.id]})
        shown = texts(at) + "\n".join(str(e.value) for e in at.subheader)
        assert "\\!\\[pixel\\](http\u2060://127.0.0.1:9/track.png)" in shown, name  # no autolink either
        assert "![pixel](" not in shown and "[click me](" not in shown, name


def custom_code_model(folder: Path, marker: Path) -> Path:
    """A model folder whose config.json has an auto_map and whose Python file writes `marker` when imported."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"model_type": "evil", "auto_map": {"AutoConfig": '
                                        '"configuration_evil.EvilConfig", "AutoModelForSequenceClassification": '
                                        '"modeling_evil.EvilModel"}, "hidden_size": 8}')
    code = f"import os\nopen({str(marker)!r}, 'a').write(str(os.getpid()) + '\\n')\n"
    (folder / "configuration_evil.py").write_text(code + "from transformers import PretrainedConfig\n"
                                                  "class EvilConfig(PretrainedConfig):\n    model_type = 'evil'\n")
    (folder / "modeling_evil.py").write_text(code)
    return folder


@pytest.mark.parametrize("mode", ["local", "team"])
def test_the_remote_code_reproduction_runs_nothing_in_the_dashboard(team, tmp_path, monkeypatch, mode):
    """Issue #11: choosing a folder with auto_map code and ticking "Trust remote code" ran its Python file in
    the dashboard process as the page rendered."""
    monkeypatch.setenv("LORA_LAB_MODE", mode)
    monkeypatch.setattr(Runs, "reconcile", lambda self: [])  # admitted launches stay queued: no worker
    marker = tmp_path / "ran.txt"
    model = custom_code_model(tmp_path / "data" / "evil-model", marker)
    session = {"cfg_model_choice": "Hub id or local directory…", "cfg_model_custom": str(model),
               "cfg_model.trust_remote_code": True}
    at = page("config_builder", "otto@example.com", session)
    assert not marker.exists(), "the model's code ran while the page rendered"
    assert "ships its own model code" in texts(at)
    assert any(w for w in at.warning if "Type the model" in w.value or "allowlisted" in w.value)
    at.switch_page("pages/train.py").run()
    no_exception(at)
    at.button(key="train_launch").click().run()
    assert "model.trust_remote_code" in " ".join(errors(at)) and team.list(reconcile=False) == []
    if mode == "local":  # the confirmation: type the model's id
        at.switch_page("pages/config_builder.py").run()
        at.text_input(key="cfg_trust_confirm").set_value(str(model)).run()
        assert "Training may run the code" in texts(at)
    else:  # an admin allowlists it
        team.update_settings({"trust_remote_code": [str(model)]})
    at.switch_page("pages/train.py").run()
    at.button(key="train_launch").click().run()
    no_exception(at)
    assert [r.status for r in team.list(reconcile=False)] == [RunStatus.QUEUED]  # admitted, for the worker
    assert not marker.exists(), "the model's code ran in the dashboard process"


def test_file_reads_outside_the_roots_are_refused_without_contents_or_listings(team, tmp_path):
    """Issue #11: the preview read any data file the server could read (header, rows, every label), and a folder
    typed as a model source had its files listed in the error."""
    secret = tmp_path / "private"
    secret.mkdir()
    (secret / "people.csv").write_text(CSV)
    (secret / "config.txt").write_text("x")
    (secret / "secret-file-name.bin").write_text("x")
    for field, session in (("data.train", {"cfg_tab": "Data", "cfg_train_choice": "Local file or hub dataset…",
                                            "cfg_train_custom": str(secret / "people.csv")}),
                           ("model.source", {"cfg_model_choice": "Hub id or local directory…",
                                             "cfg_model_custom": str(secret)})):
        at = page("config_builder", "otto@example.com", session)
        shown = texts(at) + "".join(str(d.value) for d in at.dataframe)
        assert "SECRET-CELL" not in shown and "alpha" not in shown and "secret-file-name" not in shown
        refused = [e for e in errors(at) if "reads and writes files only inside" in e]
        assert any(e.startswith(field) for e in refused), errors(at)
    other = "Other: config.json, model dir, hub id or a parameter count…"
    at = page("estimator", "otto@example.com", {"est_model": other, "est_custom": str(secret)})
    assert any(e.startswith("model: this server reads and writes files only inside") for e in errors(at))


def test_the_same_file_previews_in_local_mode(runs_dir, tmp_path):
    (tmp_path / "people.csv").write_text(CSV)
    at = open_page("config_builder", {"cfg_tab": "Data", "cfg_train_choice": "Local file or hub dataset…",
                                      "cfg_train_custom": str(tmp_path / "people.csv")})
    no_exception(at)
    assert "SECRET-CELL-1" in "".join(str(d.value) for d in at.dataframe)


def test_an_upload_is_checked_then_becomes_the_training_data(team):
    at = page("config_builder", "otto@example.com", {"cfg_tab": "Data"})
    at.file_uploader(key="cfg_data_upload").upload("bad.csv", b"sentence,stars\nok,5\n", "text/csv").run()
    assert any("no column 'text'" in e for e in errors(at))
    assert not any(team.root.joinpath("uploads").glob("*.csv"))
    at.file_uploader(key="cfg_data_upload").set_value(
        ("good.csv", b"text,label\ngreat,1\nawful,0\nfine,1\nbad,0\n", "text/csv")).run()
    no_exception(at)
    stored = list(team.root.joinpath("uploads").glob("*.csv"))
    assert len(stored) == 1 and at.session_state["cfg_train_custom"] == str(stored[0])
    assert "great" in "".join(str(d.value) for d in at.dataframe)  # previewed like any data file
    assert team.audit_log(action="upload")[0].actor == "otto@example.com"


def test_viewers_cannot_upload_and_see_no_admin_pages(team):
    at = page("config_builder", "vera@example.com", {"cfg_tab": "Data"})
    assert at.selectbox(key="cfg_train_choice").value  # the Data tab is drawn, without the upload
    assert not [u for u in at.file_uploader if u.key == "cfg_data_upload"]
    with pytest.raises(ValueError, match="Could not find a navigation page for .*team.py"):
        page("team", "otto@example.com")  # not in an operator's navigation
    with pytest.raises(ValueError, match="Could not find a navigation page for .*merge.py"):
        page("merge", "vera@example.com")  # loads models: not a viewer's page


def test_the_team_page_shows_the_audit_log_users_and_settings_to_admins(team):
    at = page("team", "ada@example.com")
    assert at.title[0].value == "Team"
    frame = at.dataframe[0].value
    assert "sign-in" in set(frame["action"]) and "ada@example.com" in set(frame["user"])
    at.number_input(key="team_set_sweep").set_value(4)  # a form: committed by its submit button
    at.button(key="FormSubmitter:team_settings-Save settings").click().run()
    no_exception(at)
    assert team.team_settings().max_sweep_runs == 4
    change = team.audit_log(action="settings")[0]
    assert (change.actor, change.detail) == ("ada@example.com", {"max_sweep_runs": 4})
