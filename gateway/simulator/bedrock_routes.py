"""The Bedrock model invocation job routes of an emulated provider, and the job objects they answer.

``POST /model-invocation-job`` creates, ``GET /model-invocation-job/{jobIdentifier}`` reads (the identifier is
the job ARN, URL-encoded by clients so its slash arrives decoded, or the bare 12-character id),
``POST /model-invocation-job/{jobIdentifier}/stop`` stops and ``GET /model-invocation-jobs`` lists. Create bodies
are checked member by member with AWS's ``1 validation error detected: …`` wording.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
import string
from datetime import UTC, datetime
from typing import Any

import msgspec
from litestar import Controller, Request, get, post

from gateway.simulator.bedrock_protocol import BedrockDriver, aws_error, validation_error
from gateway.simulator.errors import ApiError
from gateway.simulator.jobs import Job, JobStatus
from gateway.simulator.state import EmulatorState, emulator_of, note

Req = Request[Any, Any, Any]

JOB_NAME = re.compile(r"[a-zA-Z0-9]{1,63}(-*[a-zA-Z0-9\+\-\.]){0,63}")
ROLE_ARN = re.compile(r"arn:(?P<partition>aws(-[^:]+)?):iam::(?P<account>[0-9]{12})?:role/.+")
REQUEST_TOKEN = re.compile(r"[a-zA-Z0-9]{1,256}(-*[a-zA-Z0-9]){0,256}")
S3_URI = re.compile(r"s3://[a-z0-9][\.\-a-z0-9]{1,61}[a-z0-9](/.*)?")
ACCOUNT_ID = re.compile(r"[0-9]{12}")
JOB_IDENTIFIER = re.compile(
    r"((arn:aws(-[^:]+)?:bedrock:[a-z0-9-]{1,20}:[0-9]{12}:model-invocation-job/)?[a-z0-9]{12})"
)
JOB_ID_CHARS = string.ascii_lowercase + string.digits
JOB_ID_LENGTH = 12
DEFAULT_ACCOUNT = "000000000000"
"""The account of job ARNs whose role ARN names none."""
HOURS_MIN, HOURS_MAX = 24, 168
DEFAULT_HOURS = 24  # the documented default; unverified against the service
MAX_TAGS = 200
MAX_RESULTS = 1000
DEFAULT_MAX_RESULTS = MAX_RESULTS  # the documentation names no default: the largest page is chosen

CREATE_FIELDS = frozenset({
    "jobName", "roleArn", "clientRequestToken", "modelId", "inputDataConfig", "outputDataConfig", "vpcConfig",
    "timeoutDurationInHours", "tags", "modelInvocationType",
})  # fmt: skip
INPUT_FIELDS = frozenset({"s3Uri", "s3InputFormat", "s3BucketOwner"})
OUTPUT_FIELDS = frozenset({"s3Uri", "s3EncryptionKeyId", "s3BucketOwner"})
STATUS: dict[JobStatus, str] = {
    "validating": "Submitted", "in_progress": "InProgress", "finalizing": "InProgress", "completed": "Completed",
    "failed": "Failed", "cancelling": "Stopping", "cancelled": "Stopped", "expired": "Expired",
}  # fmt: skip
"""The machinery's job status -> Bedrock's, before the refinements of :func:`job_status`."""
STATUSES = frozenset({*STATUS.values(), "Validating", "Scheduled", "PartiallyCompleted"})
TERMINAL = frozenset({"Completed", "PartiallyCompleted", "Expired", "Failed", "Stopped"})


# --- the job's view in Bedrock's words ---------------------------------------------------------------------


def processed_count(job: Job) -> int:
    """Records that ran (succeeded or errored); those never run because of a stop or expiry do not count."""
    return sum(1 for outcome in job.outcomes if outcome.status_code is not None)


def job_status(job: Job) -> str:
    """Bedrock's status: ``Validating`` once validation began, ``Scheduled`` while validated but no record ran,
    ``PartiallyCompleted`` instead of ``Expired`` when some records ran before the deadline."""
    if job.status == "validating" and job.extra.get("validation_started"):
        return "Validating"
    if job.status == "in_progress" and not job.outcomes:
        return "Scheduled"
    if job.status == "expired" and processed_count(job):
        return "PartiallyCompleted"
    return STATUS[job.status]


def iso(ts: float) -> str:
    """ISO 8601 with milliseconds in UTC: ``2026-12-03T10:00:00.000Z``."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def job_object(job: Job) -> dict[str, Any]:
    """The job as GetModelInvocationJob answers it (list summaries carry the same fields); optional members
    without a value are left out, as AWS omits them."""
    extra, status = job.extra, job_status(job)
    obj: dict[str, Any] = {"jobArn": extra["arn"], "jobName": extra["name"], "modelId": extra["model_id"]}
    if extra["token"] is not None:
        obj["clientRequestToken"] = extra["token"]
    obj |= {"roleArn": extra["role_arn"], "status": status}
    if status == "Failed" and job.errors:
        obj["message"] = str(job.errors[0].get("message", ""))[:2048]
    obj["submitTime"] = iso(job.created_at)
    obj["lastModifiedTime"] = iso(max([job.created_at, *job.times.values()]))
    if status in TERMINAL:
        obj["endTime"] = iso(job.times.get(f"{job.status}_at", job.created_at))
    obj |= {"inputDataConfig": extra["input_config"], "outputDataConfig": extra["output_config"]}
    if extra["vpc"] is not None:
        obj["vpcConfig"] = extra["vpc"]
    obj["timeoutDurationInHours"] = extra["hours"]
    if job.expires_at is not None:
        obj["jobExpirationTime"] = iso(job.expires_at)
    obj["modelInvocationType"] = extra["invocation_type"]
    if extra.get("validated"):  # the counts are known once validation has read the records
        processed = processed_count(job)
        obj |= {
            "totalRecordCount": len(job.items), "processedRecordCount": processed,
            "successRecordCount": job.completed, "errorRecordCount": processed - job.completed,
        }  # fmt: skip
    return obj


# --- create-body checks ------------------------------------------------------------------------------------


def _shown(value: Any) -> str:
    return "null" if value is None else f"'{value}'" if isinstance(value, str) else msgspec.json.encode(value).decode()


def constraint(value: Any, where: str, rule: str) -> ApiError:
    """A ValidationException naming the member and the constraint it breaks."""
    return validation_error(f"1 validation error detected: Value {_shown(value)} at '{where}' failed to satisfy "
                            f"constraint: {rule}")  # fmt: skip


def _known(obj: dict[str, Any], allowed: frozenset[str], where: str) -> None:
    # A rest-json service may ignore unknown members; refusing them names a client's typo at once.
    for name in obj:
        if name not in allowed:
            raise validation_error(f"1 validation error detected: Unknown member '{where}{name}' in the request.")


def _string(
    obj: dict[str, Any], name: str, where: str = "", *, required: bool = False, pattern: re.Pattern[str] | None = None,
    max_length: int = 2048,
) -> str | None:  # fmt: skip
    value, path = obj.get(name), f"{where}{name}"
    if value is None:
        if required:
            raise constraint(None, path, "Member must not be null")
        return None
    if not isinstance(value, str):
        raise constraint(value, path, "Member must be a string")
    if not 1 <= len(value) <= max_length:
        raise constraint(value, path, f"Member must have length between 1 and {max_length}")
    if pattern is not None and not pattern.fullmatch(value):
        raise constraint(value, path, f"Member must satisfy regular expression pattern: {pattern.pattern}")
    return value


def _structure(obj: dict[str, Any], name: str, allowed: frozenset[str], where: str = "") -> dict[str, Any] | None:
    value, path = obj.get(name), f"{where}{name}"
    if value is None:
        return None
    if not isinstance(value, dict):
        raise constraint(value, path, "Member must be a structure")
    _known(value, allowed, f"{path}.")
    return value


def _required(value: dict[str, Any] | None, path: str) -> dict[str, Any]:
    if value is None:
        raise constraint(None, path, "Member must not be null")
    return value


def _string_list(obj: dict[str, Any], name: str, where: str, most: int) -> None:
    value = obj.get(name)
    if not isinstance(value, list) or not 1 <= len(value) <= most or not all(isinstance(v, str) for v in value):
        raise constraint(value, f"{where}{name}", f"Member must be a list of 1 to {most} strings")


def resolve_model(model_id: str, models: list[str]) -> str:
    """The served model a ``modelId`` names: an id or a foundation-model/inference-profile ARN ending in one.

    An unknown model is a 400 ValidationException (as InvokeModel answers an invalid model identifier) rather
    than a 404: the service documents both for create, without saying which a bad id gets.
    """
    model = model_id.rsplit("/", 1)[-1] if model_id.startswith("arn:") else model_id
    if model not in models:
        raise validation_error("The provided model identifier is invalid.")
    return model


def parse_create(raw: bytes, models: list[str]) -> dict[str, Any]:
    """Check a CreateModelInvocationJob body; the normalized fields a job keeps in ``extra``."""
    try:
        body = msgspec.json.decode(raw) if raw else {}
    except msgspec.DecodeError:
        raise aws_error(400, "SerializationException", "The request body is not valid JSON.") from None
    if not isinstance(body, dict):
        raise aws_error(400, "SerializationException", "The request body must be a JSON object.")
    _known(body, CREATE_FIELDS, "")
    name = _string(body, "jobName", required=True, pattern=JOB_NAME, max_length=63)
    role_arn = _string(body, "roleArn", required=True, pattern=ROLE_ARN)
    token = _string(body, "clientRequestToken", pattern=REQUEST_TOKEN, max_length=256)
    model_id = _string(body, "modelId", required=True) or ""
    source = _required(_structure(body, "inputDataConfig", frozenset({"s3InputDataConfig"})), "inputDataConfig")
    where = "inputDataConfig.s3InputDataConfig"
    s3_input = _required(_structure(source, "s3InputDataConfig", INPUT_FIELDS, "inputDataConfig."), where)
    input_uri = _string(s3_input, "s3Uri", f"{where}.", required=True, pattern=S3_URI, max_length=1024)
    if s3_input.setdefault("s3InputFormat", "JSONL") != "JSONL":
        rule = "Member must satisfy enum value set: [JSONL]"
        raise constraint(s3_input["s3InputFormat"], f"{where}.s3InputFormat", rule)
    _string(s3_input, "s3BucketOwner", f"{where}.", pattern=ACCOUNT_ID)
    target = _required(_structure(body, "outputDataConfig", frozenset({"s3OutputDataConfig"})), "outputDataConfig")
    where = "outputDataConfig.s3OutputDataConfig"
    s3_output = _required(_structure(target, "s3OutputDataConfig", OUTPUT_FIELDS, "outputDataConfig."), where)
    output_uri = _string(s3_output, "s3Uri", f"{where}.", required=True, pattern=S3_URI, max_length=1024)
    _string(s3_output, "s3EncryptionKeyId", f"{where}.")
    _string(s3_output, "s3BucketOwner", f"{where}.", pattern=ACCOUNT_ID)
    vpc = _structure(body, "vpcConfig", frozenset({"subnetIds", "securityGroupIds"}))
    if vpc is not None:
        _string_list(vpc, "subnetIds", "vpcConfig.", 16)
        _string_list(vpc, "securityGroupIds", "vpcConfig.", 5)
    hours = body.get("timeoutDurationInHours", DEFAULT_HOURS)
    if isinstance(hours, bool) or not isinstance(hours, int) or not HOURS_MIN <= hours <= HOURS_MAX:
        rule = f"Member must be an integer between {HOURS_MIN} and {HOURS_MAX}"
        raise constraint(hours, "timeoutDurationInHours", rule)
    tags = body.get("tags")
    if tags is not None and not (
        isinstance(tags, list) and len(tags) <= MAX_TAGS
        and all(isinstance(t, dict) and set(t) == {"key", "value"} and isinstance(t["key"], str)
                and 1 <= len(t["key"]) <= 128 and isinstance(t["value"], str) and len(t["value"]) <= 256 for t in tags)
    ):  # fmt: skip
        raise constraint(tags, "tags", f"Member must be a list of at most {MAX_TAGS} {{key, value}} string pairs")
    invocation_type = body.get("modelInvocationType", "InvokeModel")
    if invocation_type == "Converse":
        raise validation_error("modelInvocationType 'Converse' is not emulated; use 'InvokeModel'.")
    if invocation_type != "InvokeModel":
        rule = "Member must satisfy enum value set: [InvokeModel, Converse]"
        raise constraint(invocation_type, "modelInvocationType", rule)
    return {
        "name": name, "role_arn": role_arn, "token": token, "model_id": model_id,
        "model": resolve_model(model_id, models), "input_config": source, "output_config": target,
        "input_uri": input_uri, "output_uri": output_uri, "vpc": vpc, "hours": hours,
        "invocation_type": invocation_type, "tags": {t["key"]: t["value"] for t in tags or []},
    }  # fmt: skip


# --- routes ------------------------------------------------------------------------------------------------


def _driver(emu: EmulatorState) -> BedrockDriver:
    driver = emu.driver
    assert isinstance(driver, BedrockDriver)
    return driver


def _job(request: Req, identifier: str) -> Job:
    """The job an identifier (its ARN or its 12-character id) names."""
    if not JOB_IDENTIFIER.fullmatch(identifier):
        raise constraint(identifier, "jobIdentifier", f"Member must satisfy regular expression pattern: "
                                                      f"{JOB_IDENTIFIER.pattern}")  # fmt: skip
    job = emulator_of(request).jobs.get(identifier.rsplit("/", 1)[-1])
    if job is None or ("/" in identifier and identifier != job.extra["arn"]):
        raise aws_error(404, "ResourceNotFoundException", f"Could not find model invocation job {identifier}.")
    return job


class ModelInvocationJobController(Controller):
    """Create, get and stop; the identifier is a ``path`` parameter since a decoded ARN holds a slash."""

    path = "/model-invocation-job"

    @post("/", status_code=200)
    async def create(self, request: Req) -> dict[str, Any]:
        emu = emulator_of(request)
        fields = parse_create(await request.body(), emu.models)
        jobs = list(emu.jobs.values())
        if fields["token"] is not None:  # a repeated idempotency token creates nothing and answers the same job
            for job in jobs:
                if job.extra["token"] == fields["token"]:
                    note(request, job_id=job.id, replay=True)
                    return {"jobArn": job.extra["arn"]}
        # Unverified: the service lists ConflictException for create without saying when; a name already
        # taken is the likeliest cause.
        if any(job.extra["name"] == fields["name"] for job in jobs):
            raise aws_error(400, "ConflictException", f"A model invocation job named {fields['name']} already exists.")
        job_id = "".join(secrets.choice(JOB_ID_CHARS) for _ in range(JOB_ID_LENGTH))
        while job_id in emu.jobs:
            job_id = "".join(secrets.choice(JOB_ID_CHARS) for _ in range(JOB_ID_LENGTH))
        role = ROLE_ARN.fullmatch(fields["role_arn"])
        assert role is not None
        driver, account = _driver(emu), role["account"] or DEFAULT_ACCOUNT  # jobs run in the role's account
        arn = f"arn:{role['partition']}:bedrock:{driver.region}:{account}:model-invocation-job/{job_id}"
        now = emu.clock.ts()
        extra = {**fields, "arn": arn, "sequence": driver.next_sequence()}
        job = Job(job_id, fields["invocation_type"], now, now + fields["hours"] * 3600, fields["tags"] or None, extra)
        job.model = fields["model"]
        emu.launch(job)
        note(request, job_id=job_id, model=job.model, job_name=fields["name"])
        return {"jobArn": arn}

    @get("/{identifier:path}")
    async def retrieve(self, request: Req) -> dict[str, Any]:
        return job_object(_job(request, request.path_params["identifier"].strip("/")))

    @post("/{identifier:path}", status_code=200)
    async def stop(self, request: Req) -> dict[str, Any]:
        target, _, action = request.path_params["identifier"].strip("/").rpartition("/")
        if action != "stop" or not target:
            raise aws_error(404, "UnknownOperationException", f"Invalid URL (POST {request.url.path})")
        job = _job(request, target)
        status = job_status(job)
        # Unverified: stopping a job that already ended is answered with a ValidationException naming its
        # status; stopping one that is already stopping succeeds again.
        if status in TERMINAL:
            raise validation_error(f"The job {job.extra['arn']} cannot be stopped: its status is {status}.")
        emulator_of(request).request_cancel(job)
        note(request, job_id=job.id)
        return {}


def _position(job: Job) -> tuple[int, int]:
    """Submit time, then creation order: the list's sort key, and what a ``nextToken`` holds."""
    return job.created_at, job.extra["sequence"]


def _page_token(token: str) -> tuple[int, int]:
    try:
        created, sequence = msgspec.json.decode(base64.urlsafe_b64decode(token.encode()))
        return int(created), int(sequence)
    except (binascii.Error, msgspec.DecodeError, TypeError, ValueError):
        raise validation_error("The nextToken is invalid.") from None


def _time(query: Any, name: str) -> float | None:
    raw = query.get(name)
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise constraint(raw, name, "Member must be an ISO 8601 timestamp") from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


@get("/model-invocation-jobs")
async def list_jobs(request: Req) -> dict[str, Any]:
    """ListModelInvocationJobs: filters, then pages of ``maxResults`` sorted by submit time."""
    query = request.query_params
    status, name = query.get("statusEquals"), query.get("nameContains")
    if status is not None and status not in STATUSES:
        raise constraint(status, "statusEquals", f"Member must satisfy enum value set: [{', '.join(sorted(STATUSES))}]")
    raw_max = query.get("maxResults", str(DEFAULT_MAX_RESULTS))
    if not raw_max.isdigit() or not 1 <= int(raw_max) <= MAX_RESULTS:
        raise constraint(raw_max, "maxResults", f"Member must be between 1 and {MAX_RESULTS}")
    order = query.get("sortOrder", "Descending")
    if order not in ("Ascending", "Descending"):
        raise constraint(order, "sortOrder", "Member must satisfy enum value set: [Ascending, Descending]")
    if query.get("sortBy", "CreationTime") != "CreationTime":
        raise constraint(query["sortBy"], "sortBy", "Member must satisfy enum value set: [CreationTime]")
    after, before = _time(query, "submitTimeAfter"), _time(query, "submitTimeBefore")
    descending = order == "Descending"
    jobs = sorted(emulator_of(request).jobs.values(), key=_position, reverse=descending)
    jobs = [
        job for job in jobs
        if (status is None or job_status(job) == status) and (name is None or name in job.extra["name"])
        and (after is None or job.created_at > after) and (before is None or job.created_at < before)
    ]  # fmt: skip
    if "nextToken" in query:
        mark = _page_token(query["nextToken"])
        jobs = [job for job in jobs if (_position(job) < mark if descending else _position(job) > mark)]
    page = jobs[: int(raw_max)]
    answer: dict[str, Any] = {"invocationJobSummaries": [job_object(job) for job in page]}
    if len(jobs) > len(page):
        answer["nextToken"] = base64.urlsafe_b64encode(msgspec.json.encode(list(_position(page[-1])))).decode()
    return answer
