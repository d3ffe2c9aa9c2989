"""The CLI's team commands: users, audit, settings, serve (cli.py loads this module only when one of them runs).

The CLI on the server is trusted: it acts as the OS user with the admin role, and what it changes is written to
the audit log like a change from the dashboard."""
from __future__ import annotations

import getpass
import importlib
import math
import os
import sys
import time

import yaml

from .cli import emit, safe
from .runs import Runs
from .team import serving, settings
from .team.access import cli_actor
from .team.accounts import AccountError, Accounts, manage
from .team.settings import TeamSettings

SERVER = "lora_ui.server"


def _password(args) -> str:
    if args.password_stdin:
        return sys.stdin.readline().rstrip("\n")
    if not sys.stdin.isatty():
        raise AccountError("no terminal to ask for the password: pass it on stdin with --password-stdin")
    first = getpass.getpass("Password: ")
    if first != getpass.getpass("Again: "):
        raise AccountError("the two passwords differ")
    return first


def cmd_users(args) -> int:
    accounts, runs = Accounts(), args.runs
    op = args.users_command
    if op == "list":
        users = [{"name": a.name, "role": a.role.value, "sign_in": "password" if a.has_password else "provider"}
                 for a in accounts.list()]
        emit(users, args.json, "\n".join(f"{u['name']:<40} {u['role']:<9} {u['sign_in']}" for u in users)
             or f"no users in {accounts.path}")
        return 0
    password = _password(args) if op == "set-password" or (op == "add" and not args.oidc) else None
    detail = manage(op, args.name, runs.registry, role=getattr(args, "role", None), password=password,
                    accounts=accounts)
    runs.audit(cli_actor(), "users", detail=detail)
    print(f"{op}: {detail['user']}" + (f" ({detail['role']})" if "role" in detail else "") + f"  [{accounts.path}]")
    return 0


def cmd_audit(args) -> int:
    entries = args.runs.audit_log(args.limit, actor=args.actor, action=args.action, run_id=args.run)
    if args.json:
        emit([e.to_dict() for e in entries], True)
        return 0
    for e in reversed(entries):  # oldest first, like a log
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e.at))
        print(safe(f"{when}  {e.actor} ({e.role or '-'}, {e.via or '-'})  {e.action}  {e.run_id or '-'}  "
                   f"{e.outcome}" + (f"  {e.detail}" if e.detail else "")))  # names and details came from users
    return 0


def cmd_settings(args) -> int:
    runs: Runs = args.runs
    if args.assignments:
        changes = {}
        for item in args.assignments:
            key, sep, value = item.partition("=")
            if not sep:
                raise AccountError(f"settings set takes KEY=VALUE, got {item!r}")
            changes[key.strip()] = [] if value.strip() == "" else yaml.safe_load(value)
        current = runs.update_settings(changes, actor=cli_actor())
    else:
        current = runs.team_settings()
    values = current.to_dict()
    emit(values, args.json, "\n".join(f"{k} = {v!r}\n    {TeamSettings.help(k)}" for k, v in values.items()))
    return 0


def cmd_serve(args) -> int:
    files = serving.secrets_files(args.secrets)
    setup = serving.SignInSetup.of(serving.read_secrets(files))
    mode = serving.choose_mode(args.host, setup, args.insecure_no_auth)
    if mode is None:
        print(serving.refusal(args.host, setup), file=sys.stderr)
        return 2
    os.environ["LORA_LAB_MODE"] = mode  # the dashboard runs in this process and reads it
    print(f"LoRA Lab: {mode} mode on http://{args.host}:{args.port} ({serving.MODE_NOTES[mode]})", file=sys.stderr,
          flush=True)
    importlib.import_module(SERVER).run(args.host, args.port, team=mode == settings.TEAM, secrets_files=files,
                                        max_upload_mb=math.ceil(settings.max_upload_bytes() / 1e6))
    return 0
