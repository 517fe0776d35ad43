"""Budgets, billing alerts and the alert webhook.

The pipeline calls these with an open session and commits itself, so each check or alert is part
of the same transaction as the state change that caused it:

* :func:`refuse_new_batch`: at batch creation, why a team's hard budget refuses it (or None).
* :func:`reserve`: at routing, reserve a batch's estimated cost, or say why it does not fit.
* :func:`team_paused`: at submit, why a team's queued shards must wait (or None).
* :func:`after_spend`: after ledger rows are written, fire threshold and anomaly alerts.
* :func:`run_webhook_loop`: a worker task posting queued alerts to the configured webhook.
"""

from gateway.billing.alerts import after_spend
from gateway.billing.budgets import budget_statuses, refuse_new_batch, reserve, team_paused
from gateway.billing.webhooks import deliver_due, run_webhook_loop

__all__ = [
    "after_spend",
    "budget_statuses",
    "deliver_due",
    "refuse_new_batch",
    "reserve",
    "run_webhook_loop",
    "team_paused",
]
