"""Which mode to serve the dashboard in, decided from the address and the sign-in set up (`python -m lora_core
serve`; lora_ui.server then starts the web server):

    loopback address, no sign-in configured         local: one user, no sign-in (`make app` does the same)
    sign-in configured (any address)                team: sign-in required, roles, files confined
    another address, no sign-in                     refused, saying how to configure sign-in
    --insecure-no-auth                              open: no sign-in, confined, a warning banner on every page

Sign-in is configured when the secrets hold a cookie secret ([auth] cookie_secret) and either an OpenID Connect
provider ([auth] or [auth.NAME] with client_id and server_metadata_url, for Streamlit's st.login) or the users
file holds a local account. The secrets are read as Streamlit reads them (TOML files, later ones override).
"""
from __future__ import annotations

import ipaddress
import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..runs.layout import REPO_ROOT
from . import settings
from .accounts import Accounts

MIN_COOKIE_SECRET = 16


def secrets_files(given: list[str] | None = None) -> list[Path]:
    """The secrets files the dashboard reads: those given, else Streamlit's usual places and the app's."""
    if given:
        return [Path(p).expanduser().resolve() for p in given]
    places = [Path.home() / ".streamlit", Path.cwd() / ".streamlit", REPO_ROOT / ".streamlit"]
    return list(dict.fromkeys((p / "secrets.toml").resolve() for p in places))


def read_secrets(files: list[Path]) -> dict:
    """The secrets merged as Streamlit merges them; ConfigError names a file that does not parse."""
    merged: dict = {}
    for path in files:
        if path.is_file():
            try:
                merged.update(tomllib.loads(path.read_text(encoding="utf-8")))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError("secrets", f"cannot read {path}: {exc}") from None
    return merged


def auth_section(secrets: dict) -> dict:
    section = secrets.get("auth") or {}
    return {k: (dict(v) if hasattr(v, "keys") else v) for k, v in dict(section).items()}


def _is_provider(section: dict) -> bool:
    return bool(section.get("client_id")) and bool(section.get("server_metadata_url"))


def oidc_providers(secrets: dict) -> list[str | None]:
    """Providers st.login can use: None for the default ([auth] itself), else the [auth.NAME] section names."""
    section = auth_section(secrets)
    found: list[str | None] = [None] if _is_provider(section) else []
    return found + [name for name, value in section.items() if isinstance(value, dict) and _is_provider(value)]


def cookie_secret(secrets: dict) -> str:
    return str(auth_section(secrets).get("cookie_secret") or "")


def is_loopback(host: str | None) -> bool:
    """True for localhost and loopback addresses; an empty address means every interface."""
    if not host or host == "localhost":
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class SignInSetup:
    providers: list
    local_accounts: bool
    cookie_secret: bool

    @classmethod
    def of(cls, secrets: dict) -> "SignInSetup":
        return cls(oidc_providers(secrets), Accounts().has_local_accounts(),
                   len(cookie_secret(secrets)) >= MIN_COOKIE_SECRET)

    @property
    def configured(self) -> bool:
        return self.cookie_secret and bool(self.providers or self.local_accounts)

    def missing(self) -> str:
        if not (self.providers or self.local_accounts):
            return "no identity provider and no local account is configured"
        return f"the secrets have no [auth] cookie_secret of at least {MIN_COOKIE_SECRET} characters"


def choose_mode(host: str, setup: SignInSetup, insecure: bool) -> str | None:
    """The mode to serve in, or None when serving must be refused."""
    if insecure:
        return settings.OPEN
    if setup.configured:
        return settings.TEAM
    return settings.LOCAL if is_loopback(host) else None


def refusal(host: str, setup: SignInSetup) -> str:
    return (f"error: refusing to serve LoRA Lab on {host} without sign-in ({setup.missing()}): anyone who can reach "
            "that address could launch, stop and delete runs and read the server's files.\n"
            "Configure sign-in (README, 'Serve it to your team'):\n"
            "  - local accounts:   python -m lora_core users add NAME --role admin\n"
            "  - or an OpenID Connect provider: an [auth] section in .streamlit/secrets.toml\n"
            "  - and in both cases a cookie secret in .streamlit/secrets.toml:\n"
            "        [auth]\n"
            "        cookie_secret = \"...\"   # python -c 'import secrets; print(secrets.token_hex(32))'\n"
            "or pass --insecure-no-auth to serve it open anyway (every page then shows a warning banner).")


MODE_NOTES = {settings.LOCAL: "no sign-in: this machine only", settings.TEAM: "sign-in required",
              settings.OPEN: "NO SIGN-IN: anyone who reaches it is an admin"}
