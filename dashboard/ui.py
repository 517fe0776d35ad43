"""Helpers the pages share: the admin client of this session and how API failures are shown."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import streamlit as st

from dashboard.client import AdminClient, GatewayError

T = TypeVar("T")

_ICONS = {
    "down": ":material/cloud_off:",
    "auth": ":material/key_off:",
    "disabled": ":material/lock:",
    "unavailable": ":material/construction:",
    "not_found": ":material/search_off:",
    "conflict": ":material/warning:",
}


def client() -> AdminClient:
    """The admin client, configured from the environment (``batchgw dashboard`` sets it)."""
    return AdminClient.from_env()


def show_error(error: GatewayError, what: str = "") -> None:
    """One clear message for a failed call: 'not available' is informational, the rest are errors."""
    prefix = f"{what}: " if what else ""
    if error.kind == "unavailable":
        st.info(f"{prefix}not available on this gateway yet.", icon=_ICONS["unavailable"])
    elif error.kind in ("not_found", "conflict"):
        st.warning(prefix + error.message, icon=_ICONS[error.kind])
    else:
        st.error(prefix + error.message, icon=_ICONS.get(error.kind, ":material/error:"))


def fetch(call: Callable[[], T], what: str = "") -> T | None:
    """Run an admin call; on failure show the message and return None."""
    try:
        with st.spinner(f"Loading {what}…" if what else "Loading…"):
            return call()
    except GatewayError as error:
        show_error(error, what)
        return None


def act(call: Callable[[], T], done: str) -> T | None:
    """Run an admin action; show ``done`` as a toast on success, the reason on failure."""
    try:
        result = call()
    except GatewayError as error:
        show_error(error)
        return None
    st.toast(done, icon=":material/check_circle:")
    return result
