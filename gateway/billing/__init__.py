"""Money: estimates, budgets, billing alerts and the alert webhook.

The pipeline calls these with an open session and commits itself, so each check or alert is part
of the same transaction as the state change that caused it:

* :func:`refuse_new_batch`: at batch creation, why a team's hard budget refuses it (or None).
* :func:`reserve`: at routing, reserve a batch's estimated cost, or say why it does not fit.
* :mod:`gateway.billing.guard`: reservations that follow reality, and the checks that stop or pause work
  (and re-check a move) so that a hard budget holds, within a documented bound.
* :func:`team_paused`: why a team's work must wait (a hard budget spent), or None.
* :func:`after_spend`: after ledger rows are written, fire threshold and anomaly alerts.
* :func:`run_webhook_loop`: a worker task posting queued alerts to the configured webhook.

Estimates (:mod:`gateway.billing.estimate`) learn from each team's history (:mod:`gateway.billing.history`);
:mod:`gateway.billing.quote` prices a file on every offer and :mod:`gateway.billing.advisor` says whether to
batch it, fan it out, or both.
"""
