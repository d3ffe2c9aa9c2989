"""`python -m lora_core serve`: which mode it serves in, and its refusal to serve a network address without
sign-in (issue #11: the plain launch listened on every interface, with no sign-in)."""
import pytest

from helpers import cli
from lora_core.team import serving
from lora_core.team.accounts import Accounts
from lora_core.team.serving import SignInSetup, choose_mode

SECRET = "s" * 32


@pytest.mark.parametrize("host, setup, insecure, mode", [
    ("127.0.0.1", SignInSetup([], False, False), False, "local"),
    ("localhost", SignInSetup([], False, False), False, "local"),
    ("::1", SignInSetup([], False, False), False, "local"),
    ("0.0.0.0", SignInSetup([], False, False), False, None),
    ("192.168.1.5", SignInSetup([], True, False), False, None),       # accounts but no cookie secret
    ("0.0.0.0", SignInSetup([], True, True), False, "team"),
    ("0.0.0.0", SignInSetup([None], False, True), False, "team"),     # an identity provider
    ("127.0.0.1", SignInSetup([None], False, True), False, "team"),   # behind a reverse proxy on this machine
    ("0.0.0.0", SignInSetup([], False, False), True, "open"),
])
def test_the_mode_follows_the_address_and_the_sign_in_set_up(host, setup, insecure, mode):
    assert choose_mode(host, setup, insecure) == mode


def test_providers_and_the_cookie_secret_are_read_from_the_secrets():
    secrets = {"auth": {"cookie_secret": SECRET, "redirect_uri": "http://x/oauth2callback",
                        "client_id": "a", "client_secret": "b", "server_metadata_url": "http://idp/.well-known",
                        "okta": {"client_id": "c", "client_secret": "d", "server_metadata_url": "http://okta"},
                        "half": {"client_id": "e"}}}
    assert serving.oidc_providers(secrets) == [None, "okta"]
    assert serving.cookie_secret(secrets) == SECRET
    assert SignInSetup.of(secrets).configured and not SignInSetup.of({"auth": {"cookie_secret": "short"}}).configured


def test_serving_a_network_address_without_sign_in_is_refused_with_how_to_configure_it(tmp_path):
    empty = tmp_path / "secrets.toml"
    empty.write_text("")
    proc = cli("serve", "--host", "0.0.0.0", "--port", "9", "--secrets", str(empty), check=False, timeout=60)
    assert proc.returncode == 2
    assert "refusing to serve LoRA Lab on 0.0.0.0 without sign-in" in proc.stderr
    assert "python -m lora_core users add NAME --role admin" in proc.stderr and "cookie_secret" in proc.stderr
    assert "--insecure-no-auth" in proc.stderr
    Accounts().add("ana", "admin", "correct horse battery")  # an account, but still no cookie secret
    proc = cli("serve", "--host", "0.0.0.0", "--port", "9", "--secrets", str(empty), check=False, timeout=60)
    assert proc.returncode == 2 and "no [auth] cookie_secret" in proc.stderr


def test_a_broken_secrets_file_is_named(tmp_path):
    broken = tmp_path / "secrets.toml"
    broken.write_text("[auth\ncookie_secret = 1")
    proc = cli("serve", "--secrets", str(broken), check=False, timeout=60)
    assert proc.returncode == 2 and f"cannot read {broken}" in proc.stderr
