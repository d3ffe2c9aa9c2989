"""Who acts, and what each role may do: the one permission table.

Every run action names its actor. An `Actor` carries a name (the run owner it writes), a `Role` and where the
request came from (`via`): the CLI on the server (trusted), a local single-user dashboard, a dashboard served
open with --insecure-no-auth, or a signed-in team member (an identity provider or a local account).

    viewer    sees runs, curves, comparisons, the estimator and configs
    operator  also launches runs and sweeps, uploads data, and stops / resumes / merges / exports its OWN runs
    admin     every run, delete, users, server settings, the audit log

`check(actor, action, owner)` is the one place this is decided; the dashboard's service layer and the run
manager both call it, so a request forged past the page's widgets meets the same check as a click.
"""
from __future__ import annotations

import getpass
from dataclasses import dataclass, field
from enum import Enum

from ..errors import LoraLabError


class AccessError(LoraLabError):
    """The actor's role does not allow the action (or the run is someone else's)."""


class Role(str, Enum):
    VIEWER = "viewer"
    OPERATOR = "operator"
    ADMIN = "admin"

    def __str__(self) -> str:
        return self.value

    @property
    def rank(self) -> int:
        return list(Role).index(self)

    @classmethod
    def parse(cls, value: str) -> "Role":
        try:
            return cls(str(value).strip().lower())
        except ValueError:
            raise AccessError(f"unknown role {value!r}; allowed: {', '.join(r.value for r in cls)}",
                              "role") from None


# Where a request comes from. CLI: a shell on the server, trusted like the files it can read anyway.
VIA_CLI, VIA_LOCAL, VIA_OPEN, VIA_OIDC, VIA_ACCOUNT = "cli", "local", "open", "oidc", "account"
_CONFINED = {VIA_OPEN, VIA_OIDC, VIA_ACCOUNT}  # a browser on a shared server: files and code are fenced in


@dataclass(frozen=True)
class Rule:
    role: Role                 # the least role that may do it
    own_only: bool = False     # below admin, only on runs the actor owns


RULES: dict[str, Rule] = {
    "view": Rule(Role.VIEWER),
    "launch": Rule(Role.OPERATOR),
    "sweep": Rule(Role.OPERATOR),
    "upload": Rule(Role.OPERATOR),
    "load-model": Rule(Role.OPERATOR),      # load weights into the dashboard process (QLoRA loader, Playground)
    "vote": Rule(Role.OPERATOR),            # record a Playground preference (the Playground is an operator's page)
    "stop": Rule(Role.OPERATOR, own_only=True),
    "cancel": Rule(Role.OPERATOR, own_only=True),
    "move": Rule(Role.OPERATOR, own_only=True),
    "resume": Rule(Role.OPERATOR, own_only=True),
    "merge": Rule(Role.OPERATOR, own_only=True),
    "export": Rule(Role.OPERATOR, own_only=True),
    "push": Rule(Role.OPERATOR, own_only=True),
    "delete": Rule(Role.ADMIN),
    "users": Rule(Role.ADMIN),
    "settings": Rule(Role.ADMIN),
    "audit": Rule(Role.ADMIN),
}


@dataclass(frozen=True)
class Actor:
    """Who is acting. `trusted_code`: model ids whose own code this actor confirmed it trusts (local mode)."""
    name: str
    role: Role
    via: str
    trusted_code: frozenset[str] = field(default_factory=frozenset)
    client: str | None = None    # the browser's address, for the audit log
    session: str | None = None   # the sign-in session's tag, for the audit log

    @property
    def confined(self) -> bool:
        """A browser on a shared server: paths must stay inside the data roots, remote code needs the allowlist,
        hub ids the hub allowlists."""
        return self.via in _CONFINED

    @property
    def trusted(self) -> bool:
        """The CLI on the server: no per-user caps, no confirmation for remote code."""
        return self.via == VIA_CLI

    def __str__(self) -> str:
        return f"{self.name} ({self.role})"


def os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no passwd entry (some containers)
        return "unknown"


def cli_actor() -> Actor:
    """The CLI and any Python caller that names no actor: the OS user, trusted as an admin."""
    return Actor(os_user(), Role.ADMIN, VIA_CLI)


def allowed(actor: Actor, action: str, owner: str | None = None) -> bool:
    return denial(actor, action, owner) is None


def denial(actor: Actor, action: str, owner: str | None = None) -> str | None:
    """Why `actor` may not do `action` (on a run owned by `owner`), or None when it may."""
    rule = RULES.get(action)
    if rule is None:
        raise KeyError(f"no access rule for action {action!r}")
    if actor.role.rank < rule.role.rank:
        return f"{action} needs the {rule.role} role; {actor.name} is a {actor.role}"
    if rule.own_only and actor.role != Role.ADMIN and owner != actor.name:
        return f"{actor.name} may {action} only their own runs; this one belongs to {owner or 'nobody'}"
    return None


def check(actor: Actor, action: str, owner: str | None = None) -> None:
    """AccessError when `actor` may not do `action` (on a run owned by `owner`)."""
    reason = denial(actor, action, owner)
    if reason:
        raise AccessError(f"refused: {reason}")
