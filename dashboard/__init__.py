"""Operator dashboard for batch-gateway (a Streamlit app that talks to the admin API only)."""
