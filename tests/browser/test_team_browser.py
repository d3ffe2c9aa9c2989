"""A team server in a real browser (issue #11): `python -m lora_core serve` in team mode with a real OpenID
Connect provider running locally (the oidc-provider-mock package, started and ended by PID) and local accounts,
driven through Debian's Chromium.

For both ways of signing in: a viewer sees no launch or stop controls, and requests past the widgets are refused
(the operator's launch message replayed through the viewer's websocket; a click on a page whose user was demoted
meanwhile, refused by the service and written to the audit log); an operator launches, stops and resumes its own
run and cannot stop another's; an admin deletes; sign-out works; `audit --json` lists each action with its user
and run id. Local accounts also: the users file holds no password, a wrong one is refused, the sixth failure in
a minute is delayed. And: an uploaded CSV trains, a markdown payload in a run name stays text, an open server
(--insecure-no-auth) shows its banner. Skips (saying why) without /usr/bin/chromium, playwright or the provider.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from browser_helpers import (CHROMIUM, chromium, goto_page, new_page, no_exception_on_page, oidc_provider,
                             serve_server, settle, shot)
from helpers import cli, fake_running, tiny_config, wait_until
from lora_core.runs import Runs, RunStatus

pytestmark = [pytest.mark.browser, pytest.mark.timeout(900)]

PASSWORD = "correct horse battery"
ROLES = {"vera": "viewer", "otto": "operator", "olga": "operator", "ada": "admin"}
WAYS = ("oidc", "account")
# Long enough to watch and stop (tiny-random-gpt2, fast steps; stopping saves a checkpoint to resume from).
LONG_RUN = tiny_config(name="team-run", **{"train.max_steps": 600, "train.logging_steps": 3}).to_yaml()
SHORT_RUN = tiny_config(name="uploaded-data", **{"train.max_steps": 3}).to_yaml()
PAYLOAD = "![pixel](http://127.0.0.1:9/track.png) [click me](http://evil.example/login)"
# Records the page's websocket and what it sends, so a message can be replayed from another session.
RECORD_SOCKET = """(() => {
    window.__sent = []; window.__sockets = [];
    const send = WebSocket.prototype.send;
    WebSocket.prototype.send = function (data) {
        if (!window.__sockets.includes(this)) window.__sockets.push(this);
        const view = data instanceof ArrayBuffer ? new Uint8Array(data)
            : ArrayBuffer.isView(data) ? new Uint8Array(data.buffer, data.byteOffset, data.byteLength) : null;
        if (view) window.__sent.push(btoa(String.fromCharCode(...view)));
        return send.call(this, data);
    };
})()"""
REPLAY = """(messages) => {
    const ws = window.__sockets[window.__sockets.length - 1];
    for (const m of messages) ws.send(Uint8Array.from(atob(m), c => c.charCodeAt(0)));
}"""


def who(way: str, name: str) -> str:
    """The user name a person has: their e-mail through the identity provider, else their account name."""
    return f"{name}@example.com" if way == "oidc" else name


def need_a_browser() -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (`make test` does it when it can)")
    pytest.importorskip("playwright.sync_api", reason="playwright (PyPI) is not installed")


@pytest.fixture(scope="module")
def browser():
    """One Chromium for the module: Playwright's sync API allows one at a time in a thread."""
    need_a_browser()
    with chromium() as browser:
        yield browser


@pytest.fixture(scope="module")
def team(tmp_path_factory, browser):
    """One team server with both ways of signing in, its identity provider, and the browser, for this module."""
    pytest.importorskip("oidc_provider_mock", reason="oidc-provider-mock (PyPI) is not installed")
    root = tmp_path_factory.mktemp("team")
    runs = root / "runs"
    runs.mkdir()
    (root / "data").mkdir()
    env = {"LORA_LAB_USERS_FILE": str(root / "users.json"), "LORA_LAB_DATA_ROOTS": str(root / "data"),
           "LORA_LAB_MAX_CONCURRENT": "3"}
    for name, role in ROLES.items():
        cli("users", "--runs-dir", str(runs), "add", who("oidc", name), "--role", role, "--oidc", env=env)
        cli("users", "--runs-dir", str(runs), "add", name, "--role", role, "--password-stdin", env=env,
            input=PASSWORD + "\n")
    people = [{"sub": name, "email": who("oidc", name), "name": name.title()} for name in ROLES]
    with oidc_provider(root / "oidc.log", people) as issuer:
        secrets = root / "secrets.toml"
        secrets.write_text(f'[auth]\nredirect_uri = "http://127.0.0.1:{{port}}/oauth2callback"\n'
                           f'cookie_secret = "{"0123456789abcdef" * 4}"\nclient_id = "lora-lab"\n'
                           f'client_secret = "lora-lab-secret"\n'
                           f'server_metadata_url = "{issuer}/.well-known/openid-configuration"\n')
        with serve_server(runs, root / "serve.log", "--secrets", str(secrets), **env) as url:
            yield {"url": url, "runs": runs, "env": env, "browser": browser, "root": root}


def sign_in(team, way: str, name: str, init_script: str = ""):
    """A fresh browser context signed in as `name` the given way, on the Train page."""
    pg = new_page(team["browser"], team["url"], init_script=init_script)
    if way == "oidc":
        pg.get_by_role("button", name="Sign in with your organization's account").click()
        pg.wait_for_url("**/oauth2/authorize**")
        pg.get_by_role("button", name=name, exact=True).click()  # the provider's predefined person
    else:
        pg.get_by_role("link", name="Sign in with a LoRA Lab account").click()
        pg.wait_for_url("**/lora-lab/sign-in")
        pg.get_by_label("User name").fill(name)
        pg.get_by_label("Password").fill(PASSWORD)
        pg.get_by_role("button", name="Sign in").click()
    pg.get_by_role("heading", name="Train", exact=True).wait_for()
    front(pg)
    pg.get_by_text(f"Signed in as {who(way, name)}").wait_for()
    return pg


def front(pg):
    """Bring a person's page to the front before using it: Streamlit's page in a background window stops
    following the server (its live parts and clicks wait until it is shown again)."""
    pg.bring_to_front()
    settle(pg)
    return pg


def sign_out(team, pg, way: str) -> None:
    sidebar = pg.locator('[data-testid="stSidebar"]')
    (sidebar.get_by_role("button", name="Sign out") if way == "oidc"
     else sidebar.get_by_role("link", name="Sign out")).first.click()
    if way == "oidc":  # Streamlit clears its cookie, then sends the browser to the provider's end-session page
        pg.wait_for_url("**/oauth2/end_session**")
    pg.goto(team["url"])
    pg.get_by_role("heading", name="Sign in").wait_for()


def load_config(pg, yaml_text: str, tmp: Path) -> None:
    """Load a config file on the Config builder (the page's own "Load a saved config")."""
    goto_page(pg, "Config builder")
    path = tmp / "config.yaml"
    path.write_text(yaml_text)
    box = pg.locator('[data-testid="stExpander"]').filter(has_text="Load a saved config (YAML or JSON)").first
    uploader = box.locator('[data-testid="stFileUploader"]')
    is_open = box.locator("details").first
    for _ in range(3):  # open until it shows its uploader: a click while the page still draws can be lost
        if not is_open.evaluate("d => d.open"):
            box.locator("summary").first.click()
        try:
            uploader.wait_for(timeout=10_000)
            break
        except Exception:  # noqa: BLE001 - Playwright's TimeoutError: look again
            settle(pg)
    uploader.locator('input[type="file"]').set_input_files(str(path))
    try:
        pg.get_by_text("Loaded config.yaml").first.wait_for()
    except Exception:  # what the page showed instead: an upload error, a closed section, an exception
        shot(pg, "team_load_config_failed")
        raise AssertionError(f"section open: {is_open.evaluate('d => d.open')}; uploader: "
                             f"{uploader.all_inner_texts()}; alerts: "
                             f"{pg.locator('[data-testid=stAlert], [data-testid=stException]').all_inner_texts()}"
                             ) from None
    settle(pg)


def explain(team, pg=None) -> str:
    """What went on, for a failure message: the latest audit entries, the runs, the page's alerts, the server log."""
    runs = Runs(team["runs"]).list(reconcile=False)
    alerts = pg.locator('[data-testid="stAlert"]').all_inner_texts() if pg is not None else []
    return (f"audit: {audit(team)[:8]}\nruns: {[(r.id, r.status, r.owner, r.error) for r in runs]}\n"
            f"alerts: {alerts}\nserver log: {(team['root'] / 'serve.log').read_text()[-2000:]}")


def audit(team) -> list[dict]:
    return json.loads(cli("audit", "--runs-dir", str(team["runs"]), "--json", env=team["env"]).stdout)


@pytest.mark.parametrize("way", WAYS)
def test_roles_in_the_browser(team, way, tmp_path):
    runs = Runs(team["runs"])
    otto, vera, ada = who(way, "otto"), who(way, "vera"), who(way, "ada")

    # an operator launches a run (its websocket recorded, for the replay below) ...
    op = sign_in(team, way, "otto", init_script=RECORD_SOCKET)
    load_config(op, LONG_RUN, tmp_path)
    goto_page(op, "Train")
    op.evaluate("window.__sent = []")
    op.get_by_role("button", name="Launch run").click()
    op.get_by_text("Launched").first.wait_for()
    launch_messages = op.evaluate("window.__sent")
    run_id = next(r.id for r in runs.list(reconcile=False) if r.owner == otto)
    wait_until(lambda: (runs.get(run_id, reconcile=False).step or 0) >= 1, timeout=180, what="the run to train")
    # ... sees Stop on its own run only, not on another operator's (live on the page too)
    others = fake_running(runs, tiny_config(name=f"olga-{way}"), who(way, "olga"))
    op.get_by_text(f"olga-{way}").first.wait_for()
    stop_buttons = op.get_by_role("button", name="Stop")
    wait_until(lambda: stop_buttons.count() == 1, timeout=30, what="one Stop button")
    no_exception_on_page(op)
    shot(op, f"team_operator_{way}")

    # a viewer: no launch, no stop; the operator's launch message replayed through its websocket launches nothing
    viewer = sign_in(team, way, "vera", init_script=RECORD_SOCKET)
    viewer.get_by_text("launching and stopping runs needs the operator role").wait_for()
    assert viewer.get_by_role("button", name="Launch run").count() == 0
    assert viewer.get_by_role("button", name="Stop").count() == 0
    shot(viewer, f"team_viewer_{way}")
    before = len(runs.list(reconcile=False))
    viewer.evaluate(REPLAY, launch_messages)
    viewer.wait_for_timeout(2000)
    settle(viewer)
    assert len(runs.list(reconcile=False)) == before and not any(r.owner == vera for r in runs.list(reconcile=False))

    # the operator stops its run, then resumes it as a new linked run
    front(op).get_by_role("button", name="Stop").first.click()
    try:
        wait_until(lambda: runs.get(run_id, reconcile=False).terminal, timeout=120, what="the run to stop")
    except AssertionError:
        raise AssertionError(explain(team, op)) from None
    assert runs.get(run_id, reconcile=False).status is RunStatus.STOPPED
    op.get_by_role("button", name="Resume").first.click()
    op.get_by_text("Resumed").first.wait_for()
    resumed = wait_until(lambda: next((r for r in runs.list(reconcile=False) if r.parent_id == run_id), None))
    assert resumed.owner == otto
    runs.stop(resumed.id)

    # demoted while the page is open: its Launch button is still drawn, and the service refuses the click
    cli("users", "--runs-dir", str(team["runs"]), "set-role", otto, "viewer", env=team["env"])
    op.get_by_role("button", name="Launch run").click()
    op.get_by_text("refused: launch needs the operator role").first.wait_for()
    cli("users", "--runs-dir", str(team["runs"]), "set-role", otto, "operator", env=team["env"])

    # an admin deletes the stopped run (any owner's)
    admin = sign_in(team, way, "ada")
    goto_page(admin, "Runs")
    admin.get_by_label("Search name or id").fill(run_id)
    admin.get_by_label("Search name or id").press("Enter")
    admin.get_by_text(re.compile(r"^1 of \d+ runs")).wait_for()  # filtered: Delete is this run's, not the newest
    settle(admin)
    admin.get_by_role("button", name="Delete").first.click()
    admin.get_by_role("button", name="Delete for good").click()
    try:
        admin.get_by_text(f"Deleted {run_id}").first.wait_for()
    except Exception:
        shot(admin, f"team_admin_delete_failed_{way}")
        raise AssertionError(explain(team, admin)) from None
    assert run_id not in {r.id for r in runs.list(reconcile=False)}
    admin.get_by_text(re.compile(r"^0 of \d+ runs")).wait_for()  # the whole page redrew: the table dropped it
    no_exception_on_page(admin)

    # sign-out ends the session
    sign_out(team, front(viewer), way)

    log = audit(team)
    done = {(e["action"], e["actor"], e["run_id"], e["outcome"]) for e in log}
    for entry in [("launch", otto, run_id, "ok"), ("stop", otto, run_id, "ok"), ("resume", otto, run_id, "ok"),
                  ("launch", otto, None, "denied"), ("delete", ada, run_id, "ok"), ("sign-out", vera, None, "ok")]:
        assert entry in done, entry
    signed_in = {e["actor"] for e in log if e["action"] == "sign-in" and e["outcome"] == "ok"}
    assert {otto, vera, ada} <= signed_in
    assert all(e["via"] == ("oidc" if way == "oidc" else "account") for e in log
               if e["actor"] in (otto, vera, ada) and e["action"] != "users")
    runs.stop(others.id)
    for pg in (op, viewer, admin):
        pg.context.close()


def test_an_uploaded_csv_trains(team, tmp_path):
    runs = Runs(team["runs"])
    op = sign_in(team, "account", "otto")
    load_config(op, SHORT_RUN, tmp_path)
    rows = "".join(f"review number {i} was {'great' if i % 2 else 'awful'},{i % 2}\n" for i in range(40))
    (tmp_path / "reviews.csv").write_text("text,label\n" + rows)
    op.get_by_role("tab", name="Data").click()
    op.get_by_text("Upload a data file, or use an earlier upload").click()
    uploader = op.locator('[data-testid="stFileUploader"]').filter(has_text="CSV, TSV, JSON, JSONL or Parquet")
    uploader.locator('input[type="file"]').set_input_files(str(tmp_path / "reviews.csv"))
    op.get_by_text("Uploaded reviews.csv").first.wait_for()
    settle(op)
    # the preview reads the stored upload; its cells are in the grid's hidden table (for assistive tech)
    op.get_by_text("review number 0 was awful").first.wait_for(state="attached")
    shot(op, "team_upload")
    goto_page(op, "Train")
    op.get_by_role("button", name="Launch run").click()
    op.get_by_text("Launched").first.wait_for()
    record = next(r for r in runs.list(reconcile=False) if r.name == "uploaded-data")
    done = runs.wait(record.id, timeout=300)
    assert done.status is RunStatus.SUCCEEDED, (done.error, done.error_log)
    train = runs.config(record.id).data.train
    assert Path(train).parent == team["runs"] / "uploads" and Path(train).read_text().startswith("text,label")
    op.context.close()


def test_a_run_name_with_a_markdown_payload_renders_as_text(team):
    runs = Runs(team["runs"])
    record = runs.create(tiny_config(name=PAYLOAD), owner="ada")
    runs.cancel(record.id)
    pg = sign_in(team, "account", "vera")
    goto_page(pg, "Runs")
    pg.get_by_label("Search name or id").fill(record.id)
    pg.get_by_label("Search name or id").press("Enter")
    settle(pg)
    # shown as typed, with an invisible word joiner that keeps Markdown from linking the bare URL
    pg.get_by_text("![pixel](http\u2060://127.0.0.1:9/track.png)").first.wait_for()
    assert pg.locator('img[src*="track.png"]').count() == 0
    assert pg.locator('a[href*="evil.example"]').count() == 0
    shot(pg, "team_markdown_payload")
    pg.context.close()


def test_local_accounts_keep_no_password_and_throttle_guessing(team):
    text = Path(team["env"]["LORA_LAB_USERS_FILE"]).read_text()
    assert PASSWORD not in text and text.count("$argon2id$") == len(ROLES)
    pg = new_page(team["browser"], team["url"] + "/lora-lab/sign-in")
    messages = []
    for _ in range(6):
        pg.get_by_label("User name").fill("guessed")
        pg.get_by_label("Password").fill("wrong password")
        pg.get_by_role("button", name="Sign in").click()
        messages.append(pg.get_by_role("alert").inner_text())
    assert messages[:5] == ["Wrong user name or password."] * 5
    assert messages[5] == ("Wrong user name or password. This attempt was delayed 2 s: too many failed sign-ins "
                           "in the last minute.")
    shot(pg, "team_sign_in_throttled")
    failed = [e for e in audit(team) if e["action"] == "sign-in-failed" and e["actor"] == "guessed"]
    assert len(failed) == 6 and failed[0]["detail"] == {"delayed_s": 2.0}
    pg.context.close()


def test_an_open_server_shows_its_warning_on_every_page(tmp_path, browser):
    """`serve --insecure-no-auth`: no sign-in, and a banner on every page that says so."""
    runs = tmp_path / "runs"
    runs.mkdir()
    with serve_server(runs, tmp_path / "serve.log", "--insecure-no-auth",
                      LORA_LAB_USERS_FILE=str(tmp_path / "users.json")) as url:
        pg = new_page(browser, url)
        banner = pg.get_by_text("This LoRA Lab is open to anyone who can reach it")
        banner.wait_for()
        shot(pg, "insecure_banner")
        for title in ("Runs", "Config builder"):
            goto_page(pg, title)
            banner.wait_for()
        no_exception_on_page(pg)
