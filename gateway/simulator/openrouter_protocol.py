"""OpenRouter's Batch API (``/api/v1/batches``, also ``/api/beta/batches``), run through the deterministic model.

There is no file upload: the submit body carries ``{endpoint, model, requests: [{custom_id, body}]}`` and must
name ``endpoint``, ``model`` (and ``callback_url``) before ``requests``, as OpenRouter stream-parses it. The
submit answers 202 with a ``validating`` batch; the per-request checks (``body`` an object, ``body.model``
equal to the batch's) run afterwards and fail the whole batch naming the first offending request. Results
come back inline on ``GET /batches/{id}`` once the batch is terminal, as OpenAI output lines whose bodies'
``usage`` carries the ``cost`` billed at the provider spec's ``usd_per_mtok``. Results are inline JSON, so
the ``malformed_output_line`` fault does not apply (as for Gemini's inline results). Where the documentation
is silent (list envelope, delete answer, webhook signing, status of a deleted batch) the comment says what
was chosen.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx
import msgspec
from litestar import Controller, Request, Router, delete, get, post

from gateway.simulator.anthropic_protocol import simulate_message
from gateway.simulator.errors import ApiError
from gateway.simulator.file_store import StoredFile
from gateway.simulator.jobs import ItemOutcome, Job, JobItem
from gateway.simulator.model import POISON_NESTING, random_id, stable_id
from gateway.simulator.openai_protocol import chat_completion, embeddings
from gateway.simulator.openai_routes import list_page
from gateway.simulator.state import DAY_S, EmulatorState, emulator_of, note

log = logging.getLogger(__name__)

CHAT, RESPONSES, MESSAGES, EMBEDDINGS = "/v1/chat/completions", "/v1/responses", "/v1/messages", "/v1/embeddings"
ENDPOINTS = (CHAT, RESPONSES, MESSAGES, EMBEDDINGS)
MAX_REQUESTS = 5_000
WINDOW = "24h"
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})
LIST_STATUSES = frozenset({"validating", "in_progress", "completed", "failed", "expired", "cancelled"})
COLLAPSED = {"finalizing": "in_progress", "cancelling": "in_progress"}
"""The list filter knows no ``finalizing``/``cancelling``: stored jobs count as ``in_progress``."""
LIST_DEFAULT_LIMIT, LIST_MAX_LIMIT = 20, 100
ORDERED_BEFORE_REQUESTS = ("endpoint", "model", "callback_url")
PROVIDER_KEYS = frozenset({"only", "allow_fallbacks"})
CALLBACK_POLL_S = 0.05
CALLBACK_TIMEOUT_S = 5.0
Req = Request[Any, Any, Any]


def bad_request(message: str, status: int = 400) -> ApiError:
    """An error answer (rendered as ``{"error": {"code", "message"}}``), a 400 unless told."""
    return ApiError(status, message)


def request_cost(price: Sequence[float], input_tokens: int, output_tokens: int) -> float:
    """USD billed for one request at ``price`` = ``[input, output]`` USD per million tokens."""
    return (input_tokens * price[0] + output_tokens * price[1]) / 1e6


def _item_error(err: ApiError) -> dict[str, Any]:
    """The body kept for a request that failed; its ``error`` becomes the result item's error."""
    kind = err.type or ("server_error" if err.status >= 500 else "invalid_request_error")
    return {"error": {"code": err.status, "message": err.message, "type": kind, "param": err.param}}


class OpenRouterDriver:
    """Submit checks, per-request execution and inline results of OpenRouter batches."""

    kind = "openrouter"
    answers_in_files = False
    base_path = "/api/v1"

    def __init__(self) -> None:
        self.watchers: set[asyncio.Task[None]] = set()  # strong references to the callback tasks

    def route_handlers(self) -> list[Any]:
        # Both documented bases serve the same handlers; which one survives upstream is unknown.
        return [Router(path=base, route_handlers=[BatchesController]) for base in (self.base_path, "/api/beta")]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        return {"error": {"code": err.status, "message": err.message}}

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        return headers.get("authorization") == f"Bearer {api_key}"

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        sent = headers.get("authorization", "").removeprefix("Bearer ").strip()
        return ApiError(401, "User not found." if sent else "No auth credentials found")

    def validate(self, state: EmulatorState, job: Job) -> None:
        """The checks OpenRouter makes after the 202; the first offending request fails the batch."""
        requests: list[dict[str, Any]] = job.extra["requests"]
        items: list[JobItem] = []
        for index, entry in enumerate(requests):
            where = f"Request {index} (custom_id {entry['custom_id']!r})"
            body = entry.get("body")
            if job.endpoint == RESPONSES:
                # The emulator has no deterministic Responses API model; it fails such batches outright.
                job.errors = [{"message": f"{where}: this emulator does not execute {RESPONSES} batches."}]
                return
            if not isinstance(body, dict):
                job.errors = [{"message": f"{where}: 'body' must be a JSON object."}]
                return
            model = body.get("model")
            if model is not None and model != job.model:
                message = f"{where}: body.model {model!r} does not match the batch model {job.model!r}."
                job.errors = [{"message": message}]
                return
            items.append(JobItem(entry["custom_id"], body, index + 1))
        job.items = items

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        body = {**item.body, "model": job.model}
        gen_id = stable_id("gen-batch-", job.id, item.custom_id)
        try:
            if job.endpoint == CHAT:
                answer = {**chat_completion(body, state.models, item.custom_id, state.clock.ts()), "id": gen_id}
                tokens = answer["usage"]["prompt_tokens"], answer["usage"]["completion_tokens"]
            elif job.endpoint == EMBEDDINGS:
                answer = {"id": gen_id, **embeddings(body, state.models)}
                tokens = answer["usage"]["prompt_tokens"], 0
            else:  # /v1/messages: Anthropic's shape, answered by the same deterministic model
                answer = simulate_message(body, state.models, gen_id)
                tokens = answer["usage"]["input_tokens"], answer["usage"]["output_tokens"]
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, _item_error(err))
        cost = request_cost(state.spec.usd_per_mtok, *tokens)
        answer["usage"] = {**answer["usage"], "cost": cost}
        job.extra["cost_usd"] += cost  # failed requests cost nothing
        return ItemOutcome(item.custom_id, 200, answer, input_tokens=tokens[0], output_tokens=tokens[1])

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        """Keep the result items on the job (answered inline); no files. The ``nested_output_line`` fault nests
        the first answer's body too deeply for any decoder (in the middle of the one JSON answer)."""
        results = [_result_item(job, outcome) for outcome in outcomes]
        first = next((item for item in results if item["response"] is not None), None)
        if state.faults.nested_output_line and first is not None:
            first["response"]["body"] = POISON_NESTING
        job.extra["results"] = results
        return []


def _result_item(job: Job, outcome: ItemOutcome) -> dict[str, Any]:
    """One result in OpenAI's output-line shape; failures carry ``response: null`` and an ``error``."""
    item_id = stable_id("batch_req_", job.id, outcome.custom_id)
    response = error = None
    if outcome.ok:
        request_id = stable_id("req_", "request", job.id, outcome.custom_id, length=32)
        response = {"status_code": outcome.status_code, "request_id": request_id, "body": outcome.body}
    elif outcome.status_code is None:  # never ran: the batch was cancelled or expired first
        error = {"message": outcome.error_message, "type": outcome.error_code, "param": None}
    else:
        detail = (outcome.body or {}).get("error") or {}
        kind = detail.get("type") or ("server_error" if outcome.status_code >= 500 else "invalid_request_error")
        error = {"message": detail.get("message", ""), "type": kind, "param": detail.get("param")}
    return {"id": item_id, "custom_id": outcome.custom_id, "response": response, "error": error}


def batch_object(job: Job, results: bool | None = False) -> dict[str, Any]:
    """The batch; ``results`` True: inline results once terminal, False: ``results: null``, None: no key."""
    extra, terminal = job.extra, job.status in TERMINAL
    finalized = job.times.get(f"{job.status}_at") if terminal else None
    usage = None
    if terminal:
        total = job.input_tokens + job.output_tokens
        usage = {
            "prompt_tokens": job.input_tokens, "completion_tokens": job.output_tokens, "total_tokens": total,
            "cost": extra["cost_usd"], "is_byok": False,
        }  # fmt: skip
    failed = job.status == "failed" and job.errors
    routed = job.status != "validating" and bool(job.total)  # a batch refused at validation ran nowhere
    batch: dict[str, Any] = {
        "id": job.id, "object": "batch", "endpoint": job.endpoint, "model": job.model,
        "completion_window": WINDOW, "status": job.status, "created_at": job.created_at,
        "finalized_at": finalized,
        "request_counts": {"total": extra["count"], "completed": job.completed, "failed": job.failed},
        "usage": usage, "error": {"message": job.errors[0]["message"]} if failed else None,
        "provider": extra["provider"] if routed else None, "expires_at": job.expires_at,
    }  # fmt: skip
    if results is not None:
        # A terminal batch that never ran has no results ([]); a deleted one has none stored (null).
        batch["results"] = extra.get("results", []) if results and terminal else None
    return batch


# --- submit ---------------------------------------------------------------------------------------------


def _check_envelope(body: Any, models: Sequence[str], cap: int) -> None:
    """The checks OpenRouter makes before its 202 (raises a 400 ``ApiError``)."""
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.")
    for name in ("endpoint", "model", "requests"):
        if not body.get(name):
            raise bad_request(f"'{name}' is required and must not be empty.")
    keys = list(body)
    if any(name in body and keys.index(name) > keys.index("requests") for name in ORDERED_BEFORE_REQUESTS):
        raise bad_request("'endpoint', 'model' and 'callback_url' must be serialized before 'requests'.")
    if body["endpoint"] not in ENDPOINTS:
        raise bad_request(f"'endpoint' must be one of {', '.join(ENDPOINTS)}.")
    if body["model"] not in models:
        raise bad_request(f"Model {body['model']!r} is not available for batch processing.")
    if body.get("completion_window") not in (None, WINDOW):
        raise bad_request(f"'completion_window' must be {WINDOW!r}.")
    if body.get("callback_url") is not None:
        _check_callback(body["callback_url"])
    if body.get("provider") is not None:
        _provider_slug(body["provider"], "")
    requests = body["requests"]
    if not isinstance(requests, list):
        raise bad_request("'requests' must be an array.")
    if len(requests) > cap:
        raise bad_request(f"A batch holds at most {cap} requests, not {len(requests)}.")
    seen: set[str] = set()
    for index, entry in enumerate(requests):
        custom_id = entry.get("custom_id") if isinstance(entry, dict) else None
        if not isinstance(custom_id, str) or not custom_id:
            raise bad_request(f"requests[{index}]: 'custom_id' must be a non-empty string.")
        if custom_id in seen:
            raise bad_request(f"requests[{index}]: custom_id {custom_id!r} is not unique.")
        seen.add(custom_id)


def _check_callback(url: Any) -> None:
    """HTTPS as documented; plain http only to a loopback receiver, so local tests can listen."""
    parts = urlsplit(url) if isinstance(url, str) else None
    host = (parts.hostname or "") if parts else ""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if parts is None or not host or not (parts.scheme == "https" or (parts.scheme == "http" and loopback)):
        raise bad_request("'callback_url' must be an HTTPS URL.")


def _provider_slug(preference: Any, default: str) -> str:
    """The provider a batch runs on: the first of ``provider.only`` (the emulator serves any), else ours."""
    only = preference.get("only") if isinstance(preference, dict) else None
    if (
        not isinstance(preference, dict)
        or set(preference) - PROVIDER_KEYS
        or not isinstance(preference.get("allow_fallbacks", False), bool)
        or not (only is None or (isinstance(only, list) and all(isinstance(s, str) and s for s in only)))
    ):
        raise bad_request("'provider' takes only 'only' (an array of provider slugs) and 'allow_fallbacks'.")
    return only[0] if only else default


async def _read_body(request: Req, limit: int) -> Any:
    too_large = bad_request(f"The batch body exceeds the {limit}-byte limit.", 413)
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large
    raw = await request.body()
    if len(raw) > limit:
        raise too_large
    try:
        return msgspec.json.decode(raw)  # objects keep their key order, which the ordering rule needs
    except msgspec.DecodeError:
        raise bad_request("The request body is not valid JSON.") from None


# --- webhook --------------------------------------------------------------------------------------------


async def _notify_when_done(state: EmulatorState, job: Job, url: str) -> None:
    """POST ``{"type": "batch.<status>", "data": batch}`` once the batch is terminal; best effort.

    Sent unsigned: OpenRouter's signing scheme for batch webhooks is undocumented.
    """
    while state.jobs.get(job.id) is job and job.status not in TERMINAL:
        await asyncio.sleep(CALLBACK_POLL_S)
    if state.jobs.get(job.id) is not job:  # the emulator was reset meanwhile
        return
    event = msgspec.json.encode({"type": f"batch.{job.status}", "data": batch_object(job, results=None)})
    try:
        async with httpx.AsyncClient(timeout=CALLBACK_TIMEOUT_S) as http:
            answer = await http.post(url, content=event, headers={"content-type": "application/json"})
        job.extra["callback_status"] = answer.status_code
    except httpx.HTTPError as exc:
        log.warning("callback of emulated batch %s to %s failed: %s", job.id, url, exc)
        job.extra["callback_status"] = None


# --- routes ---------------------------------------------------------------------------------------------


def _job(request: Req) -> Job:
    jobs, batch_id = emulator_of(request).jobs, request.path_params["batch_id"]
    if batch_id not in jobs:
        raise bad_request(f"Batch {batch_id} not found.", 404)
    return jobs[batch_id]


def _created_bound(request: Req, name: str) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise bad_request(f"'{name}' must be an RFC 3339 timestamp with an offset.")
    return int(moment.timestamp())


class BatchesController(Controller):
    path = "/batches"

    @post("/", status_code=202)
    async def submit(self, request: Req) -> dict[str, Any]:
        emu = emulator_of(request)
        body = await _read_body(request, emu.max_file_bytes)
        _check_envelope(body, emu.models, min(MAX_REQUESTS, emu.max_lines))
        now = emu.clock.ts()
        extra = {
            "requests": body["requests"], "count": len(body["requests"]), "cost_usd": 0.0,
            "provider": _provider_slug(body.get("provider") or {}, emu.name),
        }  # fmt: skip
        job = Job(random_id("batch_", 26), body["endpoint"], now, now + DAY_S, extra=extra, model=body["model"])
        emu.launch(job)
        if (url := body.get("callback_url")) and isinstance(emu.driver, OpenRouterDriver):
            task = asyncio.get_running_loop().create_task(_notify_when_done(emu, job, url))
            emu.driver.watchers.add(task)
            task.add_done_callback(emu.driver.watchers.discard)
        note(request, batch_id=job.id, requests=extra["count"])
        return batch_object(job)

    @get("/")
    async def list_batches(self, request: Req) -> dict[str, Any]:
        # Envelope unverified upstream: OpenAI's list (object, data, first_id, last_id, has_more).
        query = request.query_params
        raw_limit = query.get("limit", str(LIST_DEFAULT_LIMIT))
        if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= LIST_MAX_LIMIT:
            raise bad_request(f"'limit' must be an integer between 1 and {LIST_MAX_LIMIT}.")
        statuses = query.getall("status", [])
        if unknown := sorted(set(statuses) - LIST_STATUSES):
            raise bad_request(f"Unknown status {unknown[0]!r}; one of {', '.join(sorted(LIST_STATUSES))}.")
        after, before = _created_bound(request, "created_after"), _created_bound(request, "created_before")
        jobs = [
            job for job in reversed(emulator_of(request).jobs.values())
            if (not statuses or COLLAPSED.get(job.status, job.status) in statuses)
            and (after is None or job.created_at >= after) and (before is None or job.created_at < before)
        ]  # fmt: skip
        return list_page([batch_object(job, results=None) for job in jobs], query.get("after"), int(raw_limit))

    @get("/{batch_id:str}")
    async def retrieve(self, request: Req) -> dict[str, Any]:
        return batch_object(_job(request), results=True)

    @delete("/{batch_id:str}", status_code=200)
    async def remove(self, request: Req) -> dict[str, Any]:
        job = _job(request)
        if job.status not in TERMINAL:
            raise bad_request(f"Batch {job.id} is {job.status}; only a finished batch can be deleted.", 409)
        # The stored requests and results go; the batch stays (billing is kept), read back with results: null.
        job.extra.update(requests=[], results=None)
        job.items.clear()
        job.outcomes.clear()
        return {"id": job.id, "object": "batch", "deleted": True}
