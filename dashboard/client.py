"""The dashboard's only I/O: an httpx client for the gateway's admin API.

Every failure becomes a ``GatewayError`` whose ``kind`` says what the operator should do:
``down`` (gateway unreachable), ``auth`` (wrong or missing admin key), ``disabled`` (the gateway has
no admin key set), ``unavailable`` (this gateway does not offer the endpoint yet), ``not_found``
(an unknown id), ``conflict`` (the object's state forbids the action) or ``error`` (anything else).
The admin key is sent in a header and never appears in a message.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from http.cookiejar import CookieJar, DefaultCookiePolicy
from typing import Any

import httpx

DEFAULT_GATEWAY_URL = "http://127.0.0.1:8080"
GATEWAY_URL_ENV = "BATCHGW_DASHBOARD_GATEWAY_URL"
ADMIN_KEY_ENV = "BATCHGW_ADMIN_KEY"
NO_KEY = "No admin key: set BATCHGW_ADMIN_KEY (or pass --admin-key to batchgw dashboard)."

_http = httpx.Client(cookies=CookieJar(policy=DefaultCookiePolicy(allowed_domains=[])))
"""One connection pool for every page run of this dashboard process: a client per call would build a TLS
context each time (about 50 ms of CPU) and open a new connection. It keeps no cookies, so no page run sees
anything another one received."""


class GatewayError(Exception):
    """A failed admin API call, classified for display."""

    def __init__(self, kind: str, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status


def _message(response: httpx.Response) -> tuple[str, str | None]:
    try:
        error = response.json().get("error") or {}
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return str(error.get("message") or f"HTTP {response.status_code}"), error.get("code")


@dataclass(frozen=True)
class AdminClient:
    """Calls ``/admin/*`` on one gateway with the admin key."""

    base_url: str
    admin_key: str | None
    timeout: float = 10.0

    @classmethod
    def from_env(cls) -> AdminClient:
        """The gateway URL and admin key from ``BATCHGW_DASHBOARD_GATEWAY_URL`` and ``BATCHGW_ADMIN_KEY``."""
        url = os.environ.get(GATEWAY_URL_ENV) or DEFAULT_GATEWAY_URL
        return cls(base_url=url.rstrip("/"), admin_key=os.environ.get(ADMIN_KEY_ENV) or None)

    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.admin_key}"} if self.admin_key else {}

    def _check(self, response: httpx.Response) -> None:
        if response.is_success:
            return
        message, code = _message(response)
        status = response.status_code
        if status == 401:
            kind = "auth"
            message = (
                "The gateway refused the admin key. Set BATCHGW_ADMIN_KEY (or --admin-key) to the gateway's admin key."
            )
        elif status == 403 and code == "admin_disabled":
            kind = "disabled"
        elif status in (404, 405) and code in ("unknown_url", "method_not_allowed"):
            kind = "unavailable"
            message = f"Not available: this gateway does not offer {response.request.url.path} yet."
        elif status == 404:
            kind = "not_found"
        elif status == 409:
            kind = "conflict"
        else:
            kind = "error"
        raise GatewayError(kind, message, status)

    def request(self, method: str, path: str, **kwargs: Any) -> Any:
        """One admin call; the decoded JSON answer, or a ``GatewayError``."""
        if not self.admin_key:
            raise GatewayError("auth", NO_KEY)
        params = {k: v for k, v in (kwargs.pop("params", None) or {}).items() if v not in (None, "")}
        try:
            response = _http.request(
                method, self.base_url + path, headers=self._headers(), params=params, timeout=self.timeout, **kwargs
            )
        except httpx.HTTPError as exc:
            raise GatewayError(
                "down", f"Cannot reach the gateway at {self.base_url} ({type(exc).__name__}). Is it running?"
            ) from None
        self._check(response)
        if not response.content:
            return {}
        try:
            return response.json()
        except ValueError:
            raise GatewayError("error", f"The gateway answered {path} with something that is not JSON.") from None

    # --- reads -----------------------------------------------------------------------------------

    def providers(self) -> list[dict[str, Any]]:
        """Configured providers with health, in-flight counts, turnaround and offers where available."""
        return list(self.request("GET", "/admin/providers").get("data", []))

    def batches(self, *, limit: int = 100, after: str | None = None, **filters: Any) -> dict[str, Any]:
        """One page of batches of every team (filters: status, team, provider, since)."""
        return dict(self.request("GET", "/admin/batches", params={"limit": limit, "after": after, **filters}))

    def batch(self, batch_id: str) -> dict[str, Any]:
        """One batch with shards (and routing decisions where available)."""
        return dict(self.request("GET", f"/admin/batches/{batch_id}"))

    def spend(
        self, *, group_by: str, bucket: str, since: int | None = None, until: int | None = None
    ) -> dict[str, Any]:
        """Spend rows per time bucket and key, and totals."""
        params = {"group_by": group_by, "bucket": bucket, "since": since, "until": until}
        return dict(self.request("GET", "/admin/spend", params=params))

    def budgets(self) -> list[dict[str, Any]]:
        """Budgets with what they have spent and reserved."""
        return list(self.request("GET", "/admin/budgets").get("data", []))

    def alerts(self, *, acknowledged: bool | None = None, limit: int = 100) -> list[dict[str, Any]]:
        """Alerts, newest first."""
        params: dict[str, Any] = {"limit": limit}
        if acknowledged is not None:
            params["acknowledged"] = "true" if acknowledged else "false"
        return list(self.request("GET", "/admin/alerts", params=params).get("data", []))

    def webhook_endpoints(self) -> list[dict[str, Any]]:
        """Batch webhook endpoints of every team, newest first (never their secrets)."""
        return list(self.request("GET", "/admin/webhook_endpoints").get("data", []))

    def webhook_endpoint(self, endpoint_id: str) -> dict[str, Any]:
        """One endpoint with its deliveries by state and its latest events."""
        return dict(self.request("GET", f"/admin/webhook_endpoints/{endpoint_id}"))

    def file_head(self, file_id: str, max_bytes: int = 65536) -> bytes:
        """The first bytes of a file (for samples), without downloading all of it."""
        return b"".join(self._stream(file_id, max_bytes))

    def file_content(self, file_id: str) -> bytes:
        """A whole file's content."""
        return b"".join(self._stream(file_id, None))

    def _stream(self, file_id: str, max_bytes: int | None) -> Iterator[bytes]:
        if not self.admin_key:
            raise GatewayError("auth", NO_KEY)
        url = f"{self.base_url}/admin/files/{file_id}/content"
        read = 0
        try:
            with httpx.stream("GET", url, headers=self._headers(), timeout=self.timeout) as response:
                if not response.is_success:
                    response.read()
                    self._check(response)
                for chunk in response.iter_bytes():
                    if max_bytes is not None and read + len(chunk) >= max_bytes:
                        yield chunk[: max_bytes - read]
                        return
                    read += len(chunk)
                    yield chunk
        except httpx.HTTPError as exc:
            raise GatewayError("down", f"Cannot reach the gateway at {self.base_url} ({type(exc).__name__}).") from None

    # --- actions ---------------------------------------------------------------------------------

    def cancel(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch of any team."""
        return dict(self.request("POST", f"/admin/batches/{batch_id}/cancel"))

    def retry(self, batch_id: str) -> dict[str, Any]:
        """Retry a finished batch's failed requests as a new batch; returns the new batch."""
        return dict(self.request("POST", f"/admin/batches/{batch_id}/retry"))

    def put_budget(self, budget: dict[str, Any]) -> dict[str, Any]:
        """Create or replace the budget of a scope and period."""
        return dict(self.request("PUT", "/admin/budgets", json=budget))

    def delete_budget(self, budget_id: str | int) -> None:
        """Remove a budget."""
        self.request("DELETE", f"/admin/budgets/{budget_id}")

    def ack_alert(self, alert_id: str | int) -> dict[str, Any]:
        """Acknowledge an alert."""
        return dict(self.request("POST", f"/admin/alerts/{alert_id}/ack"))

    def add_webhook_endpoint(self, body: dict[str, Any]) -> dict[str, Any]:
        """Register a team's endpoint; the answer holds its signing secret, this once."""
        return dict(self.request("POST", "/admin/webhook_endpoints", json=body))

    def delete_webhook_endpoint(self, endpoint_id: str) -> None:
        """Stop posting batch events to an endpoint."""
        self.request("DELETE", f"/admin/webhook_endpoints/{endpoint_id}")

    def release_canary(self, batch_id: str) -> dict[str, Any]:
        """Let a batch held after its canary run the rest of its requests."""
        return dict(self.request("POST", f"/admin/batches/{batch_id}/canary/release"))

    def cancel_canary(self, batch_id: str) -> dict[str, Any]:
        """Cancel a batch held after its canary (its canary's answers are kept)."""
        return dict(self.request("POST", f"/admin/batches/{batch_id}/canary/cancel"))

    def held_canaries(self) -> list[dict[str, Any]]:
        """Batches held for an operator after their canary."""
        return list(self.request("GET", "/admin/canaries").get("data", []))

    def estimate(self, file_id: str, **options: str | None) -> dict[str, Any]:
        """Cost, turnaround and the advisor's recommendation for an uploaded file (options: model, policy,
        deadline, endpoint, team)."""
        body = {"file_id": file_id} | {name: value for name, value in options.items() if value}
        return dict(self.request("POST", "/admin/estimate", json=body))
