"""Operator dashboard (Streamlit): ``batchgw dashboard`` runs it; it reads the gateway's admin API only.

Configuration comes from the environment: ``BATCHGW_DASHBOARD_GATEWAY_URL`` (default
``http://127.0.0.1:8080``) and ``BATCHGW_ADMIN_KEY``. The key is never shown. Nothing but the login page
shows until the visitor has logged in (``dashboard.auth`` says how, and how to turn it off).
"""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from dashboard import auth, ui
from dashboard.client import GatewayError

# Not "pages/": Streamlit takes a folder of that name beside the script for its automatic navigation, which
# a deep link opened in a fresh session would show instead of this app's own.
PAGES = Path(__file__).parent / "views"

st.set_page_config(page_title="batch-gateway", page_icon=":material/inventory_2:", layout="wide")

login = auth.LoginSettings.load()
# The pages are declared even before the login, so a deep link keeps its address through it; hidden and
# not run, they show nothing.
navigation = st.navigation(
    [
        st.Page(PAGES / "jobs.py", title="Jobs", icon=":material/list_alt:", url_path="jobs", default=True),
        st.Page(PAGES / "job.py", title="Job detail", icon=":material/search:", url_path="job"),
        st.Page(PAGES / "spend.py", title="Spend", icon=":material/payments:", url_path="spend"),
        st.Page(PAGES / "alerts.py", title="Alerts & budgets", icon=":material/notifications:", url_path="alerts"),
        st.Page(PAGES / "advisor.py", title="Advisor", icon=":material/balance:", url_path="advisor"),
        st.Page(PAGES / "providers.py", title="Providers", icon=":material/dns:", url_path="providers"),
        st.Page(PAGES / "webhooks.py", title="Webhooks", icon=":material/webhook:", url_path="webhooks"),
    ],
    position="sidebar" if auth.logged_in(login) else "hidden",
)
auth.require_login(login)

admin = ui.client()
with st.sidebar:
    st.caption(f"Gateway: `{admin.base_url}`")
    auth.logout_button(login)
try:
    admin.request("GET", "/admin/providers")
except GatewayError as error:
    st.title("batch-gateway")
    ui.show_error(error)
    if error.kind == "down":
        st.caption("Start it with `batchgw serve`, or point the dashboard elsewhere with --gateway-url.")
    st.stop()

navigation.run()
