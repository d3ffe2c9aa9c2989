"""Who may sign in, with which role: the users file, and the sign-in sessions of local accounts.

The users file ($LORA_LAB_USERS_FILE, else ~/.config/lora-lab/users.json; never inside a data root) lists
everyone with a role. An entry with a password hash is a local account (for teams without an identity
provider); one without is a person the identity provider (st.login) signs in, matched by e-mail:

    {"version": 1, "users": {"ana": {"role": "admin", "password": "$argon2id$v=19$...", "created": 1.7e9},
                             "bo@example.com": {"role": "operator", "created": 1.7e9}}}

Passwords are kept only as argon2id hashes (argon2-cffi); the file is written atomically, readable by its owner
only, under a lock so the CLI and the dashboard can both change it. `python -m lora_core users ...` manages it.

`SignIns` checks a local account's password, throttles guessing (after 5 failed sign-ins in a minute for an
account or from an address, each further attempt is delayed: 2 s, 4 s, ... up to 30 s; the failures are read
from the audit log, so the count survives restarts and is shared by every server process), and keeps sessions
in the run registry: a random id the browser holds in a cookie, stored hashed, ended by sign-out or expiry.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import argon2

from ..errors import LoraLabError
from ..runs.store import AuditEntry, Registry
from .access import VIA_ACCOUNT, Actor, Role

USERS_FILE = "users.json"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@+-]{0,63}$")
MIN_PASSWORD = 8
SESSION_S = 12 * 3600
FREE_FAILURES, WINDOW_S, MAX_DELAY_S = 5, 60.0, 30.0
SIGN_IN, SIGN_IN_FAILED, SIGN_OUT = "sign-in", "sign-in-failed", "sign-out"

_hasher = argon2.PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verified against for unknown names, so a wrong name costs the same time as a wrong password."""
    return _hasher.hash("not a password of anyone's")


class AccountError(LoraLabError):
    """A users-file operation cannot be done: a bad name, role or password, an unknown user."""


def users_file() -> Path:
    env = os.environ.get("LORA_LAB_USERS_FILE", "").strip()
    if env:
        return Path(env).expanduser().resolve()
    config_home = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return (config_home / "lora-lab" / USERS_FILE).resolve()


def normalize(name: str) -> str:
    """A user name as stored: trimmed and lower-cased (e-mail addresses are case-insensitive)."""
    return str(name or "").strip().lower()


@dataclass(frozen=True)
class Account:
    name: str
    role: Role
    has_password: bool  # a local account; without, the identity provider signs this person in
    created: float | None = None


class Accounts:
    """The users file."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path).expanduser().resolve() if path else users_file()

    # reading
    def _load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise AccountError(f"{self.path}: not a readable users file ({exc})") from None
        users = data.get("users") if isinstance(data, dict) else None
        if not isinstance(users, dict):
            raise AccountError(f"{self.path}: not a users file (no 'users' mapping)")
        return users

    def list(self) -> list[Account]:
        return [self._account(name, entry) for name, entry in sorted(self._load().items())]

    def get(self, name: str) -> Account | None:
        entry = self._load().get(normalize(name))
        return self._account(normalize(name), entry) if entry else None

    def has_local_accounts(self) -> bool:
        return any(a.has_password for a in self.list())

    @staticmethod
    def _account(name: str, entry: dict) -> Account:
        return Account(name, Role.parse(entry.get("role", "viewer")), bool(entry.get("password")),
                       entry.get("created"))

    def verify(self, name: str, password: str) -> Account | None:
        """The account when the password is right, else None (the same work either way: no user enumeration)."""
        entry = self._load().get(normalize(name)) or {}
        try:
            _hasher.verify(entry.get("password") or _dummy_hash(), password or "")
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return None
        return self._account(normalize(name), entry) if entry.get("password") else None

    # changing (under the lock; the file is replaced atomically)
    @contextmanager
    def _editing(self) -> Iterator[dict[str, dict]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            users = self._load()
            yield users
            fd, tmp = tempfile.mkstemp(prefix=".users-", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump({"version": 1, "users": users}, f, indent=2, sort_keys=True)
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)

    def add(self, name: str, role: Role | str, password: str | None = None) -> Account:
        name, role = _check_name(name), Role.parse(role)
        entry = {"role": role.value, "created": time.time()}
        if password is not None:
            entry["password"] = _hash(password)
        with self._editing() as users:
            if name in users:
                raise AccountError(f"user {name!r} already exists; change it with set-role or set-password")
            users[name] = entry
        return self._account(name, entry)

    def set_role(self, name: str, role: Role | str) -> Account:
        with self._editing() as users:
            entry = _existing(users, name)
            entry["role"] = Role.parse(role).value
        return self._account(normalize(name), entry)

    def set_password(self, name: str, password: str) -> Account:
        with self._editing() as users:
            entry = _existing(users, name)
            entry["password"] = _hash(password)
        return self._account(normalize(name), entry)

    def remove(self, name: str) -> None:
        with self._editing() as users:
            _existing(users, name)
            del users[normalize(name)]


USER_OPS = ("add", "set-role", "set-password", "remove")


def manage(op: str, name: str, registry: Registry, *, role: str | None = None, password: str | None = None,
           accounts: Accounts | None = None) -> dict:
    """One change to the users file (add, set-role, set-password, remove), ending the sessions a new password
    or a removal must end. Returns what to write to the audit log (never the password)."""
    accounts = accounts or Accounts()
    if op == "add":
        account = accounts.add(name, role or "viewer", password)
    elif op == "set-role":
        account = accounts.set_role(name, role or "viewer")
    elif op == "set-password":
        account = accounts.set_password(name, password or "")
    elif op == "remove":
        accounts.remove(name)
        account = None
    else:
        raise AccountError(f"unknown users operation {op!r}; allowed: {', '.join(USER_OPS)}")
    if op in ("set-password", "remove"):  # whoever held the old password, or the removed account, is signed out
        registry.end_sessions(user=normalize(name))
    return {"op": op, "user": normalize(name), **({"role": account.role.value} if account else {})}


def _check_name(name: str) -> str:
    value = normalize(name)
    if not NAME_RE.match(value):
        raise AccountError(f"invalid user name {name!r}: use 1-64 characters a-z, 0-9 and . _ @ + - (an e-mail "
                           "address for people who sign in through the identity provider)", "name")
    return value


def _hash(password: str) -> str:
    if len(password or "") < MIN_PASSWORD:
        raise AccountError(f"the password must have at least {MIN_PASSWORD} characters", "password")
    return _hasher.hash(password)


def _existing(users: dict, name: str) -> dict:
    entry = users.get(normalize(name))
    if entry is None:
        raise AccountError(f"no user {normalize(name)!r} in the users file")
    return entry


# -- signing in with a local account ----------------------------------------------------------------------------

def sign_cookie(session_id: str, secret: str) -> str:
    """The cookie value for a session: its id and an HMAC of it under the server's cookie secret."""
    return f"{session_id}.{hmac.new(secret.encode(), session_id.encode(), hashlib.sha256).hexdigest()}"


def read_cookie(value: str | None, secret: str) -> str | None:
    """The session id of a cookie signed with `secret`, else None."""
    session_id = (value or "").rpartition(".")[0]
    if not session_id or not secret or not hmac.compare_digest(sign_cookie(session_id, secret), value or ""):
        return None
    return session_id


def _session_key(session_id: str) -> str:
    """What the registry stores for a session id: its hash, so a copy of the registry cannot sign anyone in."""
    return hashlib.sha256(session_id.encode()).hexdigest()


def _clean(name: str) -> str:
    """A typed user name fit for the audit log (it may be anything: printable, at most 64 characters)."""
    return "".join(c for c in str(name) if c.isprintable())[:64] or "(empty)"


class SignIns:
    """Password sign-in for local accounts, its throttle, and the sessions it opens."""

    def __init__(self, registry: Registry, accounts: Accounts | None = None):
        self.registry = registry
        self.accounts = accounts or Accounts()

    def delay(self, name: str, client: str | None) -> float:
        """Seconds the next attempt for this name or from this address must wait (0 for the first five failures
        in a minute)."""
        failures = self.registry.count_audit(SIGN_IN_FAILED, time.time() - WINDOW_S, actor=_clean(normalize(name)),
                                             client=client)
        return 0.0 if failures < FREE_FAILURES else min(MAX_DELAY_S, 2.0 ** (failures - FREE_FAILURES + 1))

    def attempt(self, name: str, password: str, client: str | None, delayed: float = 0.0) -> str | None:
        """Check a password (after the caller waited `delay()`); a new session id when it is right, else None.
        Both outcomes go to the audit log."""
        account = self.accounts.verify(name, password)
        if account is None:
            self.registry.audit(AuditEntry(_clean(normalize(name)), SIGN_IN_FAILED, outcome="denied", client=client,
                                           via=VIA_ACCOUNT, detail={"delayed_s": delayed}))
            return None
        session_id = secrets.token_urlsafe(32)
        key = _session_key(session_id)
        self.registry.open_session(key, account.name, time.time() + SESSION_S, client)
        self.registry.audit(AuditEntry(account.name, SIGN_IN, role=account.role.value, via=VIA_ACCOUNT,
                                       client=client, session=key[:16], detail={"delayed_s": delayed}))
        return session_id

    def actor(self, session_id: str | None) -> Actor | None:
        """The signed-in actor of a live session (its role read now from the users file), else None."""
        if not session_id:
            return None
        session = self.registry.session(_session_key(session_id))
        account = self.accounts.get(session["user"]) if session else None
        return Actor(account.name, account.role, VIA_ACCOUNT) if account else None

    def session_tag(self, session_id: str) -> str:
        """The short tag audit entries of this session carry."""
        return _session_key(session_id)[:16]

    def sign_out(self, session_id: str, client: str | None = None) -> None:
        actor = self.actor(session_id)
        self.registry.end_sessions(session_id=_session_key(session_id))
        if actor is not None:
            self.registry.audit(AuditEntry(actor.name, SIGN_OUT, role=actor.role.value, via=VIA_ACCOUNT,
                                           client=client, session=self.session_tag(session_id)))
