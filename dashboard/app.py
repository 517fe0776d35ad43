"""Operator dashboard (Streamlit). Run with ``streamlit run dashboard/app.py``."""

from __future__ import annotations

import streamlit as st

st.set_page_config(page_title="batch-gateway", layout="wide")
st.title("batch-gateway")
st.info("The operator dashboard is not built yet. Use the admin API (/admin/*) meanwhile.")
