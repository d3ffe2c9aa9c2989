"""The sign-in page, the warning banner of an open server, the signed-in user's corner of the sidebar, and which
pages each role sees. Layout only: who is signed in, and whether they may act, is lora_ui.service's to say (and
the engine's to enforce); hiding a page here is a courtesy, not the check."""
from __future__ import annotations

import streamlit as st

from lora_ui import service
from lora_ui.format import md
from lora_ui.service import LOCAL, OPEN, Role

# Pages a viewer does not see (they load models into the dashboard process, or administer the server).
PAGE_ROLES = {"pages/qlora.py": Role.OPERATOR, "pages/merge.py": Role.OPERATOR,
              "pages/playground.py": Role.OPERATOR, "pages/team.py": Role.ADMIN}
LINK_STYLE = ("display:inline-block;padding:0.4rem 0.9rem;border-radius:0.5rem;border:1px solid #6C4BF4;"
              "color:#6C4BF4;text-decoration:none;font-weight:500")
OPEN_WARNING = ("**This LoRA Lab is open to anyone who can reach it** (served with --insecure-no-auth): every "
                "visitor can launch, stop and delete runs. Configure sign-in (README, 'Serve it to your team') "
                "and restart it without that flag.")


def gate():
    """The signed-in actor; otherwise draws the sign-in page (or says why this session may not continue) and
    stops the script, so no page below ever runs for nobody."""
    if service.mode() == LOCAL and st.context.headers and not service.listens_locally():
        st.error("LoRA Lab in local mode (no sign-in) only listens on this machine, but this server listens on "
                 f"{md(st.get_option('server.address') or 'every interface')}. Start it with "
                 "`python -m lora_core serve` (README, 'Serve it to your team'), which sets up sign-in for a "
                 "shared server.", icon="🔒")
        st.stop()
    identity = service.identify()
    if identity.actor is not None:
        return identity.actor
    st.title("🧪 LoRA Lab")
    if identity.refused:
        st.warning(f"You are signed in as **{md(identity.refused)}**, but this server has not given you a role. "
                   "Ask an admin to add you (Team page, or `python -m lora_core users add EMAIL --role viewer "
                   "--oidc`).", icon="✋")
        if st.button("Sign out", key="auth_sign_out"):
            st.logout()
        st.stop()
    sign_in_page()
    st.stop()


def sign_in_page() -> None:
    st.subheader("Sign in")
    st.caption("This LoRA Lab is shared by a team: sign in to see runs, and (with the operator role) to launch them.")
    providers, accounts = service.sign_in_options()
    for provider in providers:
        label = f"Sign in with {provider}" if provider else "Sign in with your organization's account"
        if st.button(label, key=f"auth_login_{provider or 'default'}", type="primary"):
            st.login(provider) if provider else st.login()
    if accounts:
        same_tab_link("Sign in with a LoRA Lab account", service.SIGN_IN_PATH)
    if not providers and not accounts:
        st.error("No way to sign in is configured: add a local account (`python -m lora_core users add NAME "
                 "--role admin`) and a cookie secret, or an identity provider, in .streamlit/secrets.toml.")


def banner() -> None:
    """A warning that stays on every page of an open server."""
    if service.mode() == OPEN:
        st.warning(OPEN_WARNING, icon="⚠️")


def may_open(page: str, actor) -> bool:
    """Whether the actor's role may open the page (its script path, e.g. "pages/merge.py")."""
    return actor.role.rank >= PAGE_ROLES.get(page, Role.VIEWER).rank


def sidebar_user(actor) -> None:
    """Who is signed in, their role, and sign-out."""
    if service.mode() in (LOCAL, OPEN):
        return
    st.caption(f"Signed in as **{md(actor.name)}** · {actor.role}")
    if service.signed_in_with_provider():
        if st.button("Sign out", key="auth_sign_out", icon=":material/logout:"):
            service.sign_out_provider_user()
            st.logout()
    else:
        same_tab_link("Sign out", service.SIGN_OUT_PATH)


def same_tab_link(label: str, href: str) -> None:
    """A button-like link that opens in this tab (st.link_button opens a new one), for the sign-in form's own
    page. Only constant labels and addresses go in here: the HTML is not escaped."""
    st.markdown(f'<a href="{href}" target="_self" style="{LINK_STYLE}">{label}</a>', unsafe_allow_html=True)
