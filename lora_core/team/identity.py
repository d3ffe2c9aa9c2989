"""Who is using the dashboard, from what the browser session holds. The dashboard's service layer gathers the
inputs from Streamlit (st.user, the session cookie, the client address) and asks `identify`:

- local mode: the person at this machine, as their OS user, with the admin role;
- open mode (--insecure-no-auth): every visitor is "anonymous", with the admin role (and confined);
- team mode, signed in through the identity provider (st.login): the person named by the e-mail claim, with
  their role from the users file, else the `default_role` setting; "none" there refuses them;
- team mode, a local account: the session its cookie names (signed with the cookie secret, kept in the run
  registry), with the account's role read now from the users file.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Iterable

from ..runs.store import AuditEntry, Registry
from . import settings
from .access import VIA_LOCAL, VIA_OIDC, VIA_OPEN, Actor, Role, os_user
from .accounts import SIGN_IN, Accounts, SignIns, normalize, read_cookie
from .settings import TeamSettings

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Identity:
    """The actor; or who signed in without being given a role (`refused`); or nobody signed in (both None)."""
    actor: Actor | None = None
    refused: str | None = None


def provider_tag(user: dict) -> str:
    """A short tag for one sign-in through the identity provider (its subject and issue time)."""
    return hashlib.sha256(f"{user.get('sub')}|{user.get('iat') or user.get('auth_time')}".encode()).hexdigest()[:16]


def from_provider(user: dict, registry: Registry, team: TeamSettings, client: str | None,
                  record: bool = True) -> Identity:
    """A person st.login signed in. With `record`, the sign-in (or its refusal) goes to the audit log, once per
    sign-in however many times this is asked."""
    name = normalize(user.get("email") or user.get("sub") or "")
    account = Accounts().get(name)
    role = account.role if account else (Role.parse(team.default_role) if team.default_role != "none" else None)
    actor = Actor(name, role or Role.VIEWER, VIA_OIDC, client=client, session=provider_tag(user))
    if record:
        registry.audit(AuditEntry(name, SIGN_IN, outcome="ok" if role else "denied", role=actor.role.value,
                                  via=VIA_OIDC, client=client, session=actor.session,
                                  detail={"provider": "oidc"} if role else {"reason": "not on the user list"}),
                       once=True)
    return Identity(actor) if role else Identity(refused=name)


def from_cookie(cookie: str | None, secret: str, registry: Registry, client: str | None) -> Identity:
    """A local account's live session, named by the cookie the sign-in form set."""
    signins = SignIns(registry)
    session_id = read_cookie(cookie, secret)
    found = signins.actor(session_id)
    if found is None:
        return Identity()
    return Identity(Actor(found.name, found.role, found.via, client=client, session=signins.session_tag(session_id)))


def identify(mode: str, *, registry: Registry, user: dict, cookie: str | None, secret: str,
             client: str | None, trusted_code: Iterable[str] = (), record: bool = True) -> Identity:
    if mode == settings.LOCAL:
        return Identity(Actor(os_user(), Role.ADMIN, VIA_LOCAL, trusted_code=frozenset(trusted_code)))
    if mode == settings.OPEN:
        return Identity(Actor(ANONYMOUS, Role.ADMIN, VIA_OPEN, client=client))
    if user.get("is_logged_in"):
        team = settings.team_settings(registry.settings())
        return from_provider(user, registry, team, client, record)
    return from_cookie(cookie, secret, registry, client)
