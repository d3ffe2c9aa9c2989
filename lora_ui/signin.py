"""The sign-in form for local accounts and sign-out, served beside the dashboard by `python -m lora_core serve`
(Starlette routes on Streamlit's st.App, like Streamlit's own /auth/login for st.login).

A plain HTML form posts the name and password here, not through the dashboard's websocket, so the session can be
an HttpOnly cookie the page's scripts never see. The form carries a one-time token matched against a cookie
(double submit), so another site cannot sign a browser in. Failed attempts are throttled (lora_core.team.accounts:
after five in a minute for a name or an address, each further attempt waits 2, 4, ... 30 s before its password is
even checked; the wait never blocks other requests) and every attempt is written to the audit log.
"""
from __future__ import annotations

import asyncio
import html
import secrets

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from lora_core.team import serving
from lora_core.team.accounts import SignIns, read_cookie, sign_cookie
from lora_ui import service
from lora_ui.service import SESSION_COOKIE, SESSION_S, SIGN_IN_PATH, SIGN_OUT_PATH

CSRF_COOKIE = "lora_lab_csrf"
MAX_FIELD = 1024  # longer names or passwords are refused unread

_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sign in · LoRA Lab</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>body{{font-family:system-ui,sans-serif;background:#f6f5fb;display:flex;justify-content:center;margin:0}}
main{{background:#fff;margin-top:10vh;padding:2rem 2.5rem;border-radius:12px;box-shadow:0 2px 12px #0002;width:22rem}}
h1{{font-size:1.4rem;margin-top:0}} label{{display:block;margin:.8rem 0 .2rem}}
input{{width:100%;box-sizing:border-box;padding:.5rem;font-size:1rem}}
button{{margin-top:1.2rem;width:100%;padding:.6rem;font-size:1rem;background:#6C4BF4;color:#fff;border:0;
border-radius:6px;cursor:pointer}} .error{{color:#b00020;background:#fde7ea;padding:.6rem;border-radius:6px}}
a{{color:#6C4BF4}}</style></head><body><main><h1>🧪 Sign in to LoRA Lab</h1>{message}
<form method="post" action="{action}"><input type="hidden" name="csrf" value="{token}">
<label for="name">User name</label><input id="name" name="name" autocomplete="username" required autofocus
value="{name}"><label for="password">Password</label>
<input id="password" name="password" type="password" autocomplete="current-password" required>
<button type="submit">Sign in</button></form><p><a href="/">Back to the dashboard</a></p></main></body></html>"""


# -- the sign-in records (the registry the dashboard's run manager uses) ------------------------------------------

def _signins() -> SignIns:
    return SignIns(service.runs_manager().registry)


def _cookie_secret() -> str:
    return serving.cookie_secret(service.secrets())


def _delay(name: str, client: str | None) -> float:
    return _signins().delay(name, client)


def _attempt(name: str, password: str, client: str | None, delayed: float) -> str | None:
    """A signed session cookie value when the password is right, else None (both audited)."""
    session_id = _signins().attempt(name, password, client, delayed)
    return sign_cookie(session_id, _cookie_secret()) if session_id else None


def _end_session(cookie: str | None, client: str | None) -> None:
    session_id = read_cookie(cookie, _cookie_secret())
    if session_id:
        _signins().sign_out(session_id, client)


def _cookie_secret_set() -> bool:
    return len(_cookie_secret()) >= serving.MIN_COOKIE_SECRET


def _https(request: Request) -> bool:
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto", "") == "https"


def _form_page(request: Request, message: str = "", name: str = "", status: int = 200) -> Response:
    token = secrets.token_urlsafe(24)
    body = _PAGE.format(message=f'<p class="error" role="alert">{html.escape(message)}</p>' if message else "",
                        action=SIGN_IN_PATH, token=token, name=html.escape(name))
    response = HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})
    response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict", secure=_https(request),
                        path=SIGN_IN_PATH)
    return response


async def sign_in(request: Request) -> Response:
    if request.method == "GET":
        return _form_page(request)
    form = await request.form()
    name, password = str(form.get("name") or ""), str(form.get("password") or "")
    sent, expected = str(form.get("csrf") or ""), request.cookies.get(CSRF_COOKIE) or ""
    if not expected or not secrets.compare_digest(sent, expected):
        return _form_page(request, "The form expired; please sign in again.", status=400)
    if len(name) > MAX_FIELD or len(password) > MAX_FIELD:
        return _form_page(request, "Wrong user name or password.", status=401)
    if not _cookie_secret_set():
        return _form_page(request, "This server has no cookie secret: an admin must set [auth] cookie_secret "
                                   "in .streamlit/secrets.toml.", status=503)
    client = request.client.host if request.client else None
    delay = await run_in_threadpool(_delay, name, client)
    if delay:
        await asyncio.sleep(delay)  # this request waits; the server goes on serving others
    cookie = await run_in_threadpool(_attempt, name, password, client, delay)
    if cookie is None:
        note = (f" This attempt was delayed {delay:.0f} s: too many failed sign-ins in the last minute."
                if delay else "")
        return _form_page(request, "Wrong user name or password." + note, name=name, status=401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(SESSION_COOKIE, cookie, max_age=SESSION_S, httponly=True, samesite="strict",
                        secure=_https(request), path="/")
    response.delete_cookie(CSRF_COOKIE, path=SIGN_IN_PATH)
    return response


async def sign_out(request: Request) -> Response:
    await run_in_threadpool(_end_session, request.cookies.get(SESSION_COOKIE),
                            request.client.host if request.client else None)
    response = RedirectResponse("/", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


def routes() -> list[Route]:
    return [Route(SIGN_IN_PATH, sign_in, methods=["GET", "POST"]),
            Route(SIGN_OUT_PATH, sign_out, methods=["GET", "POST"])]
