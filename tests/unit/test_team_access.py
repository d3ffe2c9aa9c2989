"""Roles, local accounts and sign-in sessions (lora_core.team.access, accounts): the permission table, the users
file (argon2 hashes only), the sign-in throttle read from the audit log, sessions that sign-out ends."""
import json
import time

import pytest

from lora_core.runs.store import AuditEntry, Registry
from lora_core.team import access
from lora_core.team.access import VIA_ACCOUNT, VIA_CLI, VIA_LOCAL, VIA_OIDC, VIA_OPEN, AccessError, Actor, Role
from lora_core.team.accounts import (SIGN_IN, SIGN_IN_FAILED, SIGN_OUT, AccountError, Accounts, SignIns, manage,
                                     read_cookie, sign_cookie)

VIEWER = Actor("vera", Role.VIEWER, VIA_OIDC)
OPERATOR = Actor("otto", Role.OPERATOR, VIA_ACCOUNT)
ADMIN = Actor("ada", Role.ADMIN, VIA_ACCOUNT)


@pytest.mark.parametrize("action", ["view"])
def test_everyone_may_view(action):
    assert all(access.allowed(a, action) for a in (VIEWER, OPERATOR, ADMIN))


@pytest.mark.parametrize("action", ["launch", "sweep", "upload", "load-model"])
def test_launching_needs_the_operator_role(action):
    assert not access.allowed(VIEWER, action)
    assert access.allowed(OPERATOR, action) and access.allowed(ADMIN, action)
    with pytest.raises(AccessError, match=f"{action} needs the operator role; vera is a viewer"):
        access.check(VIEWER, action)


@pytest.mark.parametrize("action", ["stop", "cancel", "move", "resume", "merge", "export", "push"])
def test_operators_act_on_their_own_runs_only(action):
    assert access.allowed(OPERATOR, action, owner="otto")
    assert not access.allowed(OPERATOR, action, owner="someone-else")
    assert not access.allowed(VIEWER, action, owner="vera")  # a viewer's own run (e.g. demoted since) still not
    assert access.allowed(ADMIN, action, owner="someone-else")
    with pytest.raises(AccessError, match="otto may .* only their own runs; this one belongs to someone-else"):
        access.check(OPERATOR, action, owner="someone-else")


@pytest.mark.parametrize("action", ["delete", "users", "settings", "audit"])
def test_admin_only(action):
    assert not access.allowed(OPERATOR, action, owner="otto") and not access.allowed(VIEWER, action)
    assert access.allowed(ADMIN, action, owner="x")


def test_every_action_has_a_rule_and_unknown_ones_fail_loudly():
    with pytest.raises(KeyError):
        access.allowed(ADMIN, "reboot")


def test_where_a_request_comes_from_decides_confinement_and_trust():
    assert access.cli_actor().via == VIA_CLI and access.cli_actor().trusted and not access.cli_actor().confined
    assert not Actor("me", Role.ADMIN, VIA_LOCAL).confined
    assert all(Actor("x", Role.ADMIN, via).confined for via in (VIA_OPEN, VIA_OIDC, VIA_ACCOUNT))
    with pytest.raises(AccessError, match="unknown role 'root'; allowed: viewer, operator, admin"):
        Role.parse("root")


# -- the users file ------------------------------------------------------------------------------------------------

def test_users_file_holds_argon2_hashes_never_passwords(users_file):
    accounts = Accounts()
    accounts.add("Ana", "admin", "correct horse battery")
    accounts.add("bo@example.com", "operator")  # signs in through the identity provider
    text = users_file.read_text()
    assert "correct horse battery" not in text
    users = json.loads(text)["users"]
    assert users["ana"]["password"].startswith("$argon2id$") and "password" not in users["bo@example.com"]
    assert users_file.stat().st_mode & 0o077 == 0  # readable by its owner only
    assert accounts.verify("ANA", "correct horse battery").role is Role.ADMIN  # names are case-insensitive
    assert accounts.verify("ana", "wrong password") is None
    assert accounts.verify("bo@example.com", "") is None  # no password: cannot sign in with one
    assert accounts.verify("nobody", "correct horse battery") is None
    assert accounts.has_local_accounts()


def test_bad_names_roles_passwords_and_duplicates_are_refused():
    accounts = Accounts()
    with pytest.raises(AccountError, match="invalid user name"):
        accounts.add("../etc", "viewer", "long enough pw")
    with pytest.raises(AccessError, match="unknown role"):
        accounts.add("cy", "superuser", "long enough pw")
    with pytest.raises(AccountError, match="at least 8 characters"):
        accounts.add("cy", "viewer", "short")
    accounts.add("cy", "viewer", "long enough pw")
    with pytest.raises(AccountError, match="already exists"):
        accounts.add("CY", "admin", "long enough pw")
    with pytest.raises(AccountError, match="no user 'dee'"):
        accounts.set_role("dee", "admin")


# -- sessions and the throttle ---------------------------------------------------------------------------------------

@pytest.fixture
def signins(tmp_path):
    Accounts().add("ana", "operator", "correct horse battery")
    return SignIns(Registry(tmp_path / "runs"))


def test_a_session_names_its_account_until_sign_out(signins):
    session_id = signins.attempt("ana", "correct horse battery", "10.0.0.1")
    actor = signins.actor(session_id)
    assert (actor.name, actor.role, actor.via) == ("ana", Role.OPERATOR, VIA_ACCOUNT)
    assert signins.actor("forged-session-id") is None
    manage("set-role", "ana", signins.registry, role="admin")
    assert signins.actor(session_id).role is Role.ADMIN  # the role is read at each look
    signins.sign_out(session_id, "10.0.0.1")
    assert signins.actor(session_id) is None
    actions = [e.action for e in signins.registry.audit_log()]
    assert actions == [SIGN_OUT, SIGN_IN]
    assert signins.registry.session(session_id) is None  # the registry keeps only the id's hash


def test_removing_an_account_or_changing_its_password_ends_its_sessions(signins):
    first = signins.attempt("ana", "correct horse battery", None)
    manage("set-password", "ana", signins.registry, password="a new long password")
    assert signins.actor(first) is None
    second = signins.attempt("ana", "a new long password", None)
    assert signins.actor(second) is not None
    manage("remove", "ana", signins.registry)
    assert signins.actor(second) is None and Accounts().get("ana") is None


def test_the_sixth_failed_attempt_in_a_minute_is_delayed(signins):
    delays = []
    for _ in range(7):
        delays.append(signins.delay("ana", "10.0.0.9"))
        assert signins.attempt("ana", "wrong password", "10.0.0.9", delays[-1]) is None
    assert delays == [0, 0, 0, 0, 0, 2.0, 4.0]
    # the same address trying another name is slowed too (password spraying), another address for another
    # name is not; failures older than a minute no longer count
    assert signins.delay("bo", "10.0.0.9") > 0 and signins.delay("bo", "10.0.0.10") == 0
    assert signins.registry.count_audit(SIGN_IN_FAILED, time.time() + 61, actor="ana") == 0
    failed = signins.registry.audit_log(action=SIGN_IN_FAILED)
    assert len(failed) == 7 and failed[0].detail == {"delayed_s": 4.0} and failed[0].outcome == "denied"
    # the right password still signs in after the wait
    assert signins.attempt("ana", "correct horse battery", "10.0.0.9", delays[-1]) is not None


def test_session_cookies_are_signed_with_the_cookie_secret():
    cookie = sign_cookie("abc", "s" * 32)
    assert read_cookie(cookie, "s" * 32) == "abc"
    assert read_cookie(cookie, "t" * 32) is None
    assert read_cookie("abc." + "0" * 64, "s" * 32) is None
    assert read_cookie(cookie, "") is None and read_cookie(None, "s" * 32) is None


def test_the_audit_log_is_append_only(tmp_path):
    registry = Registry(tmp_path / "runs")
    registry.audit(AuditEntry("ana", "launch", "run-1"))
    with registry._write() as con, pytest.raises(Exception, match="append-only"):
        con.execute("UPDATE audit SET actor = 'someone-else'")
    with registry._write() as con, pytest.raises(Exception, match="append-only"):
        con.execute("DELETE FROM audit")
    assert [e.actor for e in registry.audit_log()] == ["ana"]


def test_a_sign_in_is_recorded_once_per_session(tmp_path):
    registry = Registry(tmp_path / "runs")
    entry = AuditEntry("vera@example.com", SIGN_IN, session="tag-1")
    assert registry.audit(entry, once=True) and not registry.audit(entry, once=True)
    assert registry.audit(AuditEntry("vera@example.com", SIGN_IN, session="tag-2"), once=True)
    assert len(registry.audit_log(action=SIGN_IN)) == 2
