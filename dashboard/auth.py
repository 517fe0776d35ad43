"""Who may see the dashboard: a login page, and nothing else, until the visitor has logged in.

The dashboard shows every team's jobs and spend, so by default it asks for the gateway's admin key
(``BATCHGW_ADMIN_KEY``, the key it calls the admin API with) before it shows anything: no navigation,
no gateway URL, no page, whichever page a link opens. The key is compared in constant time and never
shown; a successful login lasts as long as the browser session (a reload, or a link opened in a new tab,
starts a new one) and the sidebar's "Log out" ends it.

Settings, from the environment:

``BATCHGW_DASHBOARD_LOGIN``
    ``on`` (the default) or ``off`` (``batchgw dashboard --login/--no-login`` set it). ``off`` shows the
    dashboard to whoever reaches its port: only for a dashboard behind an authenticating proxy of its own.
    Any other value keeps the login and is named on the login page (``batchgw dashboard`` refuses it).
``BATCHGW_DASHBOARD_ALLOWED_EMAILS``
    Comma-separated email addresses that may log in through the OIDC provider (case does not matter).
    Unset or empty: anyone the provider authenticates. With a list, an identity whose provider says its
    email is not verified is refused too. The admin key is accepted either way.

Single sign-on: when Streamlit's built-in authentication is configured (an ``[auth]`` section in
``.streamlit/secrets.toml`` with ``redirect_uri``, ``cookie_secret`` and a provider's ``client_id``,
``client_secret`` and ``server_metadata_url``, either in ``[auth]`` itself or in named ``[auth.<name>]``
sections), the login page also offers "Log in with <provider>" (``st.login``), and an identity the
provider logged in (``st.user``) counts as logged in. Without a secrets file, or without such a section,
only the admin key is offered.

Guessing the key: after ``MAX_WRONG_KEYS`` wrong keys a browser session gets no more tries. That only
slows a guesser down (a new session starts counting again); what keeps the dashboard safe is a long,
random admin key.
"""

from __future__ import annotations

import hmac
import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import streamlit as st
from streamlit.errors import StreamlitAPIException

from dashboard.client import ADMIN_KEY_ENV, NO_KEY

LOGIN_ENV = "BATCHGW_DASHBOARD_LOGIN"
ALLOWED_EMAILS_ENV = "BATCHGW_DASHBOARD_ALLOWED_EMAILS"
MAX_WRONG_KEYS = 5
WRONG_KEY = "That is not the admin key."
LOCKED = "Too many wrong keys in this session: reload the page to try again."
PROVIDER_KEYS = ("client_id", "client_secret", "server_metadata_url")
SHARED_KEYS = ("redirect_uri", "cookie_secret")

_LOGGED_IN = "_dashboard_logged_in"  # session-state flag: the admin key was entered in this session
_WRONG = "_dashboard_wrong_keys"  # session-state count of wrong keys


def login_required(value: str | None) -> bool:
    """Whether ``BATCHGW_DASHBOARD_LOGIN`` asks for a login: True for ``on`` or unset, False for ``off``.

    Raises ``ValueError`` for anything else (the caller keeps the login then).
    """
    setting = (value or "on").strip().lower()
    if setting not in ("on", "off"):
        raise ValueError(f"{LOGIN_ENV} must be on or off, not {value!r}")
    return setting == "on"


def allowed_emails(value: str | None) -> frozenset[str]:
    """The addresses of ``BATCHGW_DASHBOARD_ALLOWED_EMAILS``, lower-cased; empty means anyone."""
    return frozenset(part.strip().lower() for part in (value or "").split(",") if part.strip())


def email_allowed(user: Mapping[str, Any], allowed: frozenset[str]) -> bool:
    """Whether an identity the OIDC provider logged in may use the dashboard.

    Any identity when ``allowed`` is empty; otherwise one whose email is listed and not marked unverified.
    """
    if not allowed:
        return True
    email = user.get("email")
    if not isinstance(email, str) or user.get("email_verified") is False:
        return False
    return email.strip().lower() in allowed


def oidc_providers(auth: Mapping[str, Any]) -> list[str]:
    """The providers an ``[auth]`` secrets section configures completely, in order.

    ``"default"`` stands for the provider set in ``[auth]`` itself (``st.login()``); the others are the
    names of ``[auth.<name>]`` sections (``st.login(name)``). None without ``redirect_uri`` and
    ``cookie_secret``, which every provider needs.
    """
    if not all(auth.get(key) for key in SHARED_KEYS):
        return []
    providers = ["default"] if all(auth.get(key) for key in PROVIDER_KEYS) else []
    for name, section in auth.items():
        if isinstance(section, Mapping) and "_" not in name and all(section.get(key) for key in PROVIDER_KEYS):
            providers.append(name)
    return providers


def provider_label(name: str, auth: Mapping[str, Any]) -> str:
    """How the login button names a provider: the section's name, or the default's metadata host."""
    if name != "default":
        return name.capitalize()
    return urlsplit(str(auth.get("server_metadata_url", ""))).hostname or "single sign-on"


def secrets_auth_section() -> Mapping[str, Any]:
    """The ``[auth]`` section of Streamlit's secrets; empty when there is no secrets file or no section."""
    try:
        if not st.secrets.load_if_toml_exists():
            return {}
        section = st.secrets.get("auth")
    except (FileNotFoundError, KeyError):  # no file, or one that cannot be read
        return {}
    return section if isinstance(section, Mapping) else {}


def key_matches(given: str | None, admin_key: str | None) -> bool:
    """Whether ``given`` is the admin key, compared in constant time; never with no admin key set."""
    if not admin_key or not given:
        return False
    return hmac.compare_digest(given.encode(), admin_key.encode())


@dataclass(frozen=True)
class LoginSettings:
    """The dashboard's login, from the environment and the secrets file."""

    required: bool
    admin_key: str | None
    allowed: frozenset[str]
    auth: Mapping[str, Any]
    problem: str | None = None

    @classmethod
    def load(cls, env: Mapping[str, str] | None = None) -> LoginSettings:
        """Read the settings (``env`` defaults to the process environment); a bad setting keeps the login."""
        env = os.environ if env is None else env
        problem = None
        try:
            required = login_required(env.get(LOGIN_ENV))
        except ValueError as error:
            required, problem = True, str(error)
        return cls(
            required=required,
            admin_key=env.get(ADMIN_KEY_ENV) or None,
            allowed=allowed_emails(env.get(ALLOWED_EMAILS_ENV)),
            auth=secrets_auth_section() if required else {},
            problem=problem,
        )

    @property
    def providers(self) -> list[str]:
        """The OIDC providers offered on the login page."""
        return oidc_providers(self.auth)


def _oidc_user() -> dict[str, Any] | None:
    """The identity an OIDC provider logged in for this session, or None."""
    user = st.user.to_dict()
    return dict(user) if user.get("is_logged_in") is True else None


def logged_in(settings: LoginSettings) -> bool:
    """Whether this session may see the dashboard."""
    if not settings.required or st.session_state.get(_LOGGED_IN) is True:
        return True
    if not settings.providers:  # st.user is only trusted when a provider is configured
        return False
    user = _oidc_user()
    return user is not None and email_allowed(user, settings.allowed)


def login_page(settings: LoginSettings) -> None:
    """The login page: a title, the OIDC providers if configured, and the admin key form; nothing else."""
    st.title("batch-gateway")
    if settings.problem:
        st.warning(f"{settings.problem}: the login stays on.", icon=":material/warning:")
    _oidc_login(settings)
    if not settings.admin_key:
        st.error(NO_KEY, icon=":material/key_off:")
        return
    wrong = int(st.session_state.get(_WRONG, 0))
    if wrong >= MAX_WRONG_KEYS:
        st.error(LOCKED, icon=":material/lock:")
        return
    with st.form("login", clear_on_submit=True, border=False):
        given = st.text_input("Admin key", type="password", key="login_key", help=f"The gateway's {ADMIN_KEY_ENV}.")
        submitted = st.form_submit_button("Log in", type="primary", icon=":material/login:")
    if not submitted:
        return
    if key_matches(given, settings.admin_key):
        st.session_state[_LOGGED_IN] = True
        st.session_state.pop(_WRONG, None)
        st.rerun()
    st.session_state[_WRONG] = wrong + 1
    st.error(LOCKED if wrong + 1 >= MAX_WRONG_KEYS else WRONG_KEY, icon=":material/key_off:")


def _oidc_login(settings: LoginSettings) -> None:
    """A button per configured provider; a refusal when the provider's identity is not allowed."""
    providers = settings.providers
    if not providers:
        return
    user = _oidc_user()
    if user is not None and not email_allowed(user, settings.allowed):
        st.error(f"{user.get('email') or 'This identity'} may not use this dashboard.", icon=":material/block:")
        if st.button("Log out of the provider", key="oidc_logout"):
            st.logout()
    for name in providers:
        label = provider_label(name, settings.auth)
        if st.button(f"Log in with {label}", key=f"oidc_login_{name}", icon=":material/account_circle:"):
            try:
                st.login(None if name == "default" else name)
            except StreamlitAPIException as error:  # Authlib missing or an incomplete section
                st.error(str(error), icon=":material/error:")
    if importlib.util.find_spec("authlib") is None:
        st.caption("Single sign-on needs Authlib: `pip install 'streamlit[auth]'`.")
    if settings.admin_key:
        st.caption("Or enter the admin key:")


def require_login(settings: LoginSettings) -> None:
    """Show the login page and stop the run unless this session is logged in."""
    if not logged_in(settings):
        login_page(settings)
        st.stop()


def logout_button(settings: LoginSettings) -> None:
    """The sidebar's "Log out": ends this session's login (and the provider's, for an OIDC identity)."""
    if not settings.required:
        return
    if st.button("Log out", key="logout", icon=":material/logout:"):
        st.session_state.pop(_LOGGED_IN, None)
        if settings.providers and _oidc_user() is not None:
            st.logout()
        st.rerun()
