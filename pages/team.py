"""Team (admins): the audit log, who may sign in with which role, and the server settings.

Every change made here goes through lora_ui.service, which checks the admin role again and writes the audit
log; the same changes can be made with `python -m lora_core users | settings` on the server."""
import json

import pandas as pd
import streamlit as st

from lora_ui import service
from lora_ui.format import code, error_text, fmt_time, md
from lora_ui.service import Role, TeamSettings
from lora_ui.state import TEAM
from lora_ui.widgets import action_button, show_message

S = TEAM
ROLES = [r.value for r in Role]
LIST_SETTINGS = ("trust_remote_code", "hub_models", "hub_datasets")


def audit_tab() -> None:
    c1, c2, c3 = st.columns(3)
    actor = c1.text_input("User", key=S.key("audit_actor")).strip() or None
    action = c2.text_input("Action", key=S.key("audit_action"), placeholder="launch, stop, sign-in-failed, …")
    run_id = c3.text_input("Run id", key=S.key("audit_run")).strip() or None
    entries = service.audit_log(1000, actor=actor, action=action.strip() or None, run_id=run_id)
    if not entries:
        st.caption("No audit entries match.")
        return
    frame = pd.DataFrame([{"when": fmt_time(e.at), "user": e.actor, "role": e.role, "via": e.via,
                           "action": e.action, "run": e.run_id or "", "outcome": e.outcome,
                           "detail": json.dumps(e.detail) if e.detail else "", "from": e.client or ""}
                          for e in entries])
    st.dataframe(frame, hide_index=True, width="stretch", height=min(600, 38 + 35 * len(entries)))
    st.download_button("Download CSV", frame.to_csv(index=False), file_name="lora-lab-audit.csv", mime="text/csv",
                       key=S.key("audit_csv"))
    st.caption("Newest first; the log is append-only (the registry refuses to change or delete an entry). "
               "The same log: `python -m lora_core audit --json`.")


def users_tab() -> None:
    accounts = service.users()
    if accounts:
        st.dataframe(pd.DataFrame([{"user": a.name, "role": a.role.value,
                                    "signs in with": "password" if a.has_password else "identity provider",
                                    "added": fmt_time(a.created)} for a in accounts]),
                     hide_index=True, width="stretch")
    else:
        st.caption("No users yet.")
    with st.form(S.key("add_user"), clear_on_submit=True):
        st.markdown("**Add a user**")
        c1, c2, c3 = st.columns([2, 1, 2])
        name = c1.text_input("User name or e-mail", key=S.key("new_name"))
        role = c2.selectbox("Role", ROLES, key=S.key("new_role"))
        password = c3.text_input("Password (empty: signs in through the identity provider)", type="password",
                                 key=S.key("new_password"))
        if st.form_submit_button("Add"):
            _do("Add user", service.change_user, "add", name, role, password or None)
    if accounts:
        names = [a.name for a in accounts]
        c1, c2, c3, c4 = st.columns([2, 1, 1, 1], vertical_alignment="bottom")
        who = c1.selectbox("User", names, key=S.key("edit_user"))
        role = c2.selectbox("New role", ROLES, key=S.key("edit_role"))
        action_button(S, "Change role", service.change_user, "set-role", who, role, key=S.key("set_role"), where=c3)
        with c4.popover("Remove", icon=":material/person_remove:"):
            st.markdown(f"Remove **{md(who)}**? Their sessions end at once.")
            action_button(S, "Remove for good", service.change_user, "remove", who, key=S.key("remove"),
                          type="primary")


def _do(verb: str, action, *args) -> None:
    try:
        S.post("success", md(action(*args).message))
    except Exception as exc:  # noqa: BLE001 - e.g. a bad name or a short password: said, never a traceback
        S.post("error", md(f"{verb}: {error_text(exc)}"))
    st.rerun()


def settings_tab() -> None:
    current = service.team_settings()
    st.caption(f"Mode: **{service.mode()}** · data roots: "
               + (", ".join(code(p) for p in service.data_roots()) or "none (LORA_LAB_DATA_ROOTS)")
               + " · uploads, the runs directory and the model cache are roots too · largest upload "
               f"{service.max_upload_bytes() / 1e6:g} MB (LORA_LAB_MAX_UPLOAD_MB). These come from the environment "
               "the server was started with.")
    with st.form(S.key("settings")):
        changes = {}
        for name in LIST_SETTINGS:
            text = st.text_area(name, value="\n".join(getattr(current, name)), help=TeamSettings.help(name),
                                key=S.key(f"set_{name}"), height=90)
            changes[name] = [line.strip() for line in text.replace(",", "\n").splitlines() if line.strip()]
        c1, c2, c3 = st.columns(3)
        changes["max_queued_per_user"] = c1.number_input("max_queued_per_user", min_value=1, step=1,
                                                         value=current.max_queued_per_user, key=S.key("set_queue"),
                                                         help=TeamSettings.help("max_queued_per_user"))
        changes["max_sweep_runs"] = c2.number_input("max_sweep_runs", min_value=1, step=1,
                                                    value=current.max_sweep_runs, key=S.key("set_sweep"),
                                                    help=TeamSettings.help("max_sweep_runs"))
        roles = ["none", "viewer", "operator"]
        changes["default_role"] = c3.selectbox("default_role", roles, index=roles.index(current.default_role),
                                               key=S.key("set_default_role"), help=TeamSettings.help("default_role"))
        if st.form_submit_button("Save settings", type="primary"):
            changed = {k: v for k, v in changes.items() if v != getattr(current, k)}
            if changed:
                _do("Save settings", service.update_settings, changed)


def main() -> None:
    st.title("Team")
    st.caption("Who did what, who may sign in, and the server's settings. Admins only.")
    show_message(S)
    audit, people, server = st.tabs(["Audit log", "Users", "Settings"])
    with audit:
        audit_tab()
    with people:
        users_tab()
    with server:
        settings_tab()


main()
