"""Adapter for AWS Bedrock batch inference (``kind = "bedrock"``): records in S3, jobs on the control plane.

``base_url`` is Bedrock's control plane (``https://bedrock.<region>.amazonaws.com``). A shard's OpenAI lines
become records in the model family's native body (:mod:`gateway.translate.bedrock`), written to the
provider's own bucket (``s3_uri``, which the job's service role ``role_arn`` can read and write) as
``<prefix>/<submit token>/batchgw-<submit token>.jsonl``; the job writes its ``.jsonl.out`` records and
``manifest.json.out`` under ``<prefix>/<submit token>/out/<job id>/``.

Calls are signed with SigV4 (botocore's signer, credentials from the standard AWS chain: environment,
``AWS_PROFILE``, web identity, instance role), or carry a Bedrock API key as a bearer token when
``api_key_env`` is set. The create call carries the submit token as ``clientRequestToken``, so a retried
create never starts a second job, and as the job's name, by which a crashed submit is found again.

A job needs a minimum number of records (a per-account quota, 100 by default): routing sends smaller
work elsewhere (:meth:`ProviderAdapter.min_requests`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote

import httpx
import msgspec

from gateway.providers.base import (
    LOCAL_BATCH_PREFIX,
    HealthReport,
    PollResult,
    ProviderAuthFailed,
    ProviderBatchState,
    ProviderError,
    ProviderRateLimited,
    ProviderRejected,
    ProviderUnavailable,
    ShardSubmission,
    SubmitResult,
    UnsupportedEndpoint,
    unix_time,
)
from gateway.providers.bedrock_wire import (
    MANIFEST,
    OUTPUT_SUFFIX,
    ShardIndex,
    apportion,
    job_id_of,
    job_name,
    manifest_tokens,
    parse_job,
    response_tokens,
    result_envelope,
    timeout_hours,
    translate_shard,
)
from gateway.providers.http import HttpAdapter, Params
from gateway.providers.jsonl import LineSplitter, encode_line, iter_requests
from gateway.providers.openai_wire import rejected_line
from gateway.settings import StorageSettings, parse_s3_url
from gateway.storage.s3 import S3BlobStore
from gateway.translate import MalformedResult, estimated_tokens
from gateway.translate.anthropic import DEFAULT_MAX_TOKENS
from gateway.translate.bedrock import FAMILIES, Family, family_of

if TYPE_CHECKING:
    # botocore is imported where a Bedrock call is signed: every process would otherwise pay its start-up.
    from botocore.credentials import Credentials, ReadOnlyCredentials

log = logging.getLogger(__name__)

JOB = "/model-invocation-job"
JOBS = "/model-invocation-jobs"
SIGNING_NAME = "bedrock"
MAX_LIST_PAGES = 20
TARGET = "a Bedrock model"
_ROLE_ARN = re.compile(r"arn:aws(-[^:]+)?:iam::\d{12}:role/.+")
_CONTROL_HOST = re.compile(r"bedrock(?:-fips)?\.([a-z0-9-]+)\.amazonaws\.com")
_RETRY_LATER = ("ThrottlingException", "ServiceQuotaExceededException", "ServiceUnavailableException")
"""Error types Bedrock answers with a 400 (a quota of jobs in flight) or 429 that pass with time."""


@dataclass
class BedrockBatchAdapter(HttpAdapter):
    """A provider reached through Bedrock's ``/model-invocation-job`` API and an S3 bucket."""

    kind: ClassVar[str] = "bedrock"
    DEFAULT_MIN_REQUESTS: ClassVar[int] = 100
    role_arn: str = ""
    """The service role the job runs as (``arn:aws:iam::<account>:role/<name>``); it reads and writes ``s3_uri``."""
    s3_uri: str = ""
    """``s3://bucket/prefix`` where records and results are kept (the provider's bucket, not the gateway's)."""
    region: str | None = None
    """The region to sign for; unset: from ``base_url``'s host, else ``AWS_REGION``/``AWS_DEFAULT_REGION``."""
    s3_endpoint_url: str | None = None
    """An S3-compatible endpoint instead of AWS S3 (a test or private store)."""
    s3_allow_http: bool = False
    default_max_tokens: int = DEFAULT_MAX_TOKENS
    """``max_tokens`` of Claude requests that set neither ``max_tokens`` nor ``max_completion_tokens``."""
    _store: S3BlobStore | None = field(default=None, init=False, repr=False)
    _credentials: Credentials | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        problems = []
        if not _ROLE_ARN.fullmatch(self.role_arn):
            problems.append("options.role_arn must be an IAM role ARN (arn:aws:iam::<12 digits>:role/<name>)")
        try:
            parse_s3_url(self.s3_uri)
        except ValueError:
            problems.append("options.s3_uri must name the bucket the jobs read and write: 's3://bucket/prefix'")
        for name, model in self.config.models.items():
            if family_of(model) is None:
                known = ", ".join(f"{f.name} ({f.endpoint})" for f in FAMILIES)
                problems.append(f"model {name} ({model}) is of a Bedrock model family not supported here; "
                                f"supported: {known}")  # fmt: skip
        self.region = self.region or _region_of(self.config.base_url)
        if not self.region:
            problems.append("options.region is not set and base_url names no region (set AWS_REGION or region)")
        if problems:
            raise ValueError(f"provider {self.name}: " + "; ".join(problems))

    # ----------------------------------------------------------------- adapter contract

    def serves(self, endpoint: str) -> bool:
        """The endpoints of the configured models' families (Claude: chat; Titan and Cohere: embeddings)."""
        return any(self._family(model).endpoint == endpoint for model in self.config.models.values())

    async def submit(self, shard: ShardSubmission) -> SubmitResult:
        """Write the shard's records to S3, then create a job on them (idempotent by the submit token)."""
        family = self._family(shard.provider_model)
        if shard.endpoint != family.endpoint:
            raise UnsupportedEndpoint(
                f"provider {self.name}: {shard.provider_model} serves {family.endpoint}, not {shard.endpoint}", 400
            )
        store = self._blobs()
        name = job_name(shard.submit_token)
        input_key = _input_key(shard.submit_token)
        with tempfile.TemporaryDirectory(prefix="batchgw-bedrock-") as folder:
            records = Path(folder) / f"{name}.jsonl"
            index = await asyncio.to_thread(
                translate_shard, shard.input_path, shard.endpoint, family, self.default_max_tokens, records
            )
            if not index.sent:
                return SubmitResult(provider_batch_id=LOCAL_BATCH_PREFIX + shard.submit_token)
            if index.sent < self.min_requests():
                # Routing keeps small work away; lines refused by translation can still leave too few.
                raise ProviderRejected(
                    f"provider {self.name}: {index.sent} requests can be sent, fewer than the "
                    f"{self.min_requests()} a Bedrock job needs",
                    400,
                )
            try:
                await store.put_file(input_key, records)
            except OSError as exc:
                raise ProviderUnavailable(f"provider {self.name}: writing the records to S3 failed: {exc}") from None
        bucket, prefix = parse_s3_url(self.s3_uri)
        base = f"s3://{bucket}/{prefix + '/' if prefix else ''}{shard.submit_token}"
        body = {
            "jobName": name,
            "clientRequestToken": shard.submit_token,
            "roleArn": self.role_arn,
            "modelId": shard.provider_model,
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": f"{base}/{name}.jsonl", "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": f"{base}/out/"}},
            "timeoutDurationInHours": timeout_hours(shard.window_s),
        }

        async def create() -> str:
            answer = await self._send_json("POST", JOB, json=body)
            arn = answer.get("jobArn") if isinstance(answer, dict) else None
            if not isinstance(arn, str) or not arn:
                raise ProviderUnavailable(f"provider {self.name}: POST {JOB} answered without a jobArn")
            return arn

        # The same clientRequestToken returns the job the first try created, so a retry needs no lookup.
        arn = await self._create_once(shard, create, None)
        return SubmitResult(provider_batch_id=arn, provider_file_id=input_key)

    async def find_submitted(self, submit_token: str) -> SubmitResult | None:
        """The job named after ``submit_token`` (and created with it as ``clientRequestToken``), if any."""
        name = job_name(submit_token)
        params: dict[str, str | int] = {"nameContains": name, "maxResults": 100}
        for _ in range(MAX_LIST_PAGES):  # the name is unique, so one page holds it unless the filter is ignored
            answer = await self._call_json("GET", JOBS, params=params)
            jobs = answer.get("invocationJobSummaries") if isinstance(answer, dict) else None
            for job in jobs if isinstance(jobs, list) else []:
                if isinstance(job, dict) and job.get("jobName") == name and isinstance(job.get("jobArn"), str):
                    token = job.get("clientRequestToken")
                    if token not in (None, submit_token):
                        continue
                    return SubmitResult(provider_batch_id=job["jobArn"], provider_file_id=_input_key(submit_token))
            after = answer.get("nextToken") if isinstance(answer, dict) else None
            if not isinstance(after, str) or not after:
                return None
            params["nextToken"] = after
        log.warning("provider %s: job %s not in the first %d pages of the listing", self.name, name, MAX_LIST_PAGES)
        return None

    async def poll(self, provider_batch_id: str, *, fresh_after: float | None = None) -> PollResult:
        """Read the job's status and record counts."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return PollResult(state=ProviderBatchState.COMPLETED, raw_status="Completed")
        return self._poll_result(*parse_job(await self._retrieve(provider_batch_id)))

    async def fetch_results(self, provider_batch_id: str, dest: Path, *, input_path: Path | None = None) -> None:
        """Append the job's records as OpenAI output lines under their client ``custom_id``s, then the unsent lines.

        Records are joined on ``recordId`` (Bedrock does not promise input order); the manifest's token
        counts are compared with the records' and a difference is logged. Answers that carry no token counts
        (Cohere's) share the manifest's input tokens by the size of their texts.
        """
        local = provider_batch_id.startswith(LOCAL_BATCH_PREFIX)
        job: dict[str, Any] = {}
        if local:  # nothing was sent: the shard names its model
            shard_model = await asyncio.to_thread(_shard_model, input_path) if input_path else None
            model = shard_model or next(iter(self.config.models.values()))
        else:
            job = await self._retrieve(provider_batch_id)
            model = str(job.get("modelId") or next(iter(self.config.models.values())))
        family = self._family(model)
        if input_path is None:  # the shard input is gone: records keep their recordId, enough to bill them
            index = ShardIndex(known=False)
        else:
            args = (input_path, family.endpoint, family, self.default_max_tokens)
            index = await asyncio.to_thread(translate_shard, *args)
        with dest.open("ab") as out:
            answered: set[str] = set()
            if not local:
                folder = self._output_folder(job, provider_batch_id)
                created = unix_time(job.get("endTime")) or unix_time(job.get("submitTime")) or 0
                with contextlib.ExitStack() as stack:
                    copy = _RecordCopy(self.name, out, index, family, model, job_id_of(provider_batch_id), created)
                    if family.counts_in_manifest:
                        try:
                            copy.spool = stack.enter_context(tempfile.TemporaryFile(prefix="batchgw-bedrock-"))
                        except OSError as exc:  # a full or missing temporary folder passes
                            raise ProviderUnavailable(f"provider {self.name}: no temporary file: {exc}") from None
                    reported = _count_of(job, "successRecordCount", "errorRecordCount")
                    await self._copy_records(folder, copy, reported)
                answered = copy.answered
            for rid, custom_id, err in index.rejected:
                if rid not in answered:
                    out.write(encode_line(rejected_line(custom_id, err, batch_id=provider_batch_id, target=TARGET)))

    async def cancel(self, provider_batch_id: str) -> None:
        """Stop the job; a job already ended or stopping is fine (its finished records stay in S3)."""
        if provider_batch_id.startswith(LOCAL_BATCH_PREFIX):
            return
        try:
            await self._call_json("POST", f"{JOB}/{_job_identifier(provider_batch_id)}/stop")
        except ProviderRejected:
            status = (await self._retrieve(provider_batch_id)).get("status")
            result, known = parse_job({"status": status})
            if not known or not (result.state.is_terminal or result.state is ProviderBatchState.CANCELLING):
                raise
            log.info("provider %s: job %s is %s, stop skipped", self.name, provider_batch_id, status)

    async def health(self) -> HealthReport:
        """``GET /model-invocation-jobs?maxResults=1``, without retries."""
        return await self._probe((JOBS, {"maxResults": 1}))

    # ----------------------------------------------------------------- hooks of the HTTP base

    def _error_class(self, response: httpx.Response) -> type[ProviderError]:
        if response.headers.get("x-amzn-errortype", "").split(":")[0] in _RETRY_LATER:
            return ProviderRateLimited
        return super()._error_class(response)

    def _error_detail(self, response: httpx.Response) -> str:
        detail = super()._error_detail(response)
        kind = response.headers.get("x-amzn-errortype", "").split(":")[0]
        return f"{kind}: {detail}" if kind else detail

    async def _signed(
        self, method: str, url: str, params: Params | None, body: bytes | None, headers: dict[str, str]
    ) -> dict[str, str]:
        if self.api_key:  # a Bedrock API key: the bearer header of the base
            return headers
        if body is None:
            raise ProviderRejected(f"provider {self.name}: a streamed body cannot be signed", 400)
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest

        credentials = await self._frozen_credentials()
        target = str(httpx.URL(url, params=params)) if params else url
        request = AWSRequest(method=method, url=target, data=body or b"", headers=headers)
        assert self.region is not None  # resolved at start
        SigV4Auth(credentials, SIGNING_NAME, self.region).add_auth(request)
        return dict(request.headers.items())

    def _key_hint(self) -> str:
        if self.config.api_key_env:
            return super()._key_hint()
        return "check the AWS credentials (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the role)"

    # ----------------------------------------------------------------- helpers

    def _family(self, model: str) -> Family:
        family = family_of(model)
        if family is None:
            raise UnsupportedEndpoint(f"provider {self.name}: {model} is of a Bedrock model family not supported here")
        return family

    def _blobs(self) -> S3BlobStore:
        if self._store is None:
            settings = StorageSettings(
                url=self.s3_uri, endpoint_url=self.s3_endpoint_url, allow_http=self.s3_allow_http, region=self.region
            )
            scratch = Path(tempfile.gettempdir()) / "batchgw-bedrock"
            self._store = S3BlobStore.from_settings(settings, scratch)
        return self._store

    async def _frozen_credentials(self) -> ReadOnlyCredentials:
        from botocore.exceptions import BotoCoreError, ClientError
        from botocore.session import get_session

        try:
            if self._credentials is None:
                found = await asyncio.to_thread(get_session().get_credentials)
                if found is None:
                    raise ProviderAuthFailed(f"provider {self.name}: no AWS credentials found; {self._key_hint()}", 401)
                self._credentials = found
            return await asyncio.to_thread(self._credentials.get_frozen_credentials)
        except (BotoCoreError, ClientError) as exc:  # a profile not found, a refresh refused...
            kind = type(exc).__name__
            raise ProviderAuthFailed(
                f"provider {self.name}: AWS credentials unavailable ({kind}); {self._key_hint()}", 401
            ) from None

    async def _retrieve(self, provider_batch_id: str) -> dict[str, Any]:
        job = await self._call_json("GET", f"{JOB}/{_job_identifier(provider_batch_id)}", label=f"{JOB}/{{id}}")
        if not isinstance(job, dict) or not isinstance(job.get("status"), str):
            raise ProviderUnavailable(f"provider {self.name}: GET {JOB}/{{id}} answered no job")
        return job

    def _output_folder(self, job: Mapping[str, Any], provider_batch_id: str) -> str:
        """The store key of the job's output folder, which must lie in the configured bucket and prefix."""
        uri = ((job.get("outputDataConfig") or {}).get("s3OutputDataConfig") or {}).get("s3Uri")
        bucket, prefix = parse_s3_url(self.s3_uri)
        try:
            out_bucket, out_key = parse_s3_url(str(uri))
        except ValueError:
            out_bucket, out_key = "", ""
        start = prefix + "/" if prefix else ""
        if out_bucket != bucket or not out_key.startswith(start):
            raise ProviderRejected(f"provider {self.name}: job {provider_batch_id} writes outside {self.s3_uri}", 400)
        return f"{out_key.removeprefix(start)}/{job_id_of(provider_batch_id)}/"

    async def _copy_records(self, folder: str, results: _RecordCopy, reported: int) -> None:
        """Copy the records of the job's output folder; ``reported`` is how many the job says it processed."""
        store = self._blobs()
        try:
            keys = sorted([info.key async for info in store.list(folder)])
        except OSError as exc:
            raise ProviderUnavailable(f"provider {self.name}: listing the job's results in S3 failed: {exc}") from None
        start = results.out.tell()
        try:
            for key in (k for k in keys if k.endswith(OUTPUT_SUFFIX)):
                splitter, number = LineSplitter(), 0
                async for chunk in store.iter_bytes(key):
                    for line in splitter.feed(chunk):
                        number += 1
                        results.write(line, number, key)
                for line in splitter.flush():
                    number += 1
                    results.write(line, number, key)
            manifest = f"{folder}{MANIFEST}"
            counted = None
            if manifest in keys:
                counted = manifest_tokens(b"".join([chunk async for chunk in store.iter_bytes(manifest)]))
            results.price_uncounted(counted)
        except BaseException as exc:
            results.out.truncate(start)
            results.out.seek(start)
            if not isinstance(exc, OSError):  # BlobMissing is one
                raise
            failure = f"provider {self.name}: reading the job's results from S3 failed: {exc}"
            raise ProviderUnavailable(failure) from None
        if reported and not results.answered:
            # Never read an empty folder as "nothing ran": the unfinished requests would run and be paid again.
            raise ProviderUnavailable(
                f"provider {self.name}: job {results.job_id} reports {reported} processed records, "
                f"but {self.s3_uri}/{folder} holds none"
            )
        if counted is not None and counted != results.tokens:
            log.warning("provider %s: job %s's manifest counts %d input and %d output tokens, its records %d and %d",
                        self.name, results.job_id, *counted, *results.tokens)  # fmt: skip


@dataclass
class _RecordCopy:
    """Turns one job's ``.jsonl.out`` records into OpenAI output lines in ``out``, summing their tokens.

    An answer without token counts (Cohere's) waits in a spool until the manifest is read; then the job's
    input tokens that the counted answers do not account for are shared among them by the size of their texts.
    """

    provider: str
    out: IO[bytes]
    index: ShardIndex
    family: Family
    model: str
    job_id: str
    created: int
    tokens: tuple[int, int] = (0, 0)
    answered: set[str] = field(default_factory=set)
    """``recordId``s written (or waiting in the spool)."""
    spool: IO[bytes] | None = None
    """Where answers without token counts wait for the manifest (None: the family's answers all have them)."""
    _uncounted: list[str] = field(default_factory=list, init=False, repr=False)
    """``recordId``s of the spooled answers, in spool order."""

    def write(self, line: bytes, number: int, key: str) -> None:
        if not line.strip():
            return
        try:
            envelope = result_envelope(
                line, index=self.index, family=self.family, model=self.model, job_id=self.job_id, created=self.created
            )
        except (MalformedResult, RecursionError) as exc:
            where = f"line {number} of {key} of job {self.job_id}"
            # A RecursionError: deeper than the JSON decoder goes, unreadable like any other line.
            why = "nested too deeply to read" if isinstance(exc, RecursionError) else str(exc)
            log.warning("provider %s: skipped %s: %s", self.provider, where, why)
            return
        rid = envelope["id"].removeprefix(f"batch_req_{self.job_id}_")  # the line id ends in the recordId
        self.answered.add(rid)
        response = envelope["response"]
        if self.spool is not None and response["status_code"] == 200 and "usage" not in response["body"]:
            self.spool.write(encode_line(envelope))
            self._uncounted.append(rid)
            return
        self._emit(envelope)

    def price_uncounted(self, counted: tuple[int, int] | None) -> None:
        """Write the spooled answers, priced from the manifest's counts (``None``: by the bytes / 4 rule)."""
        if self.spool is None or not self._uncounted:
            return
        weights = [self.index.text_bytes.get(rid, 0) for rid in self._uncounted]
        left = counted[0] - self.tokens[0] if counted is not None else 0
        # Each answer with text to embed needs a token at least: a count short of that is not the answers'.
        if left >= max(1, sum(1 for weight in weights if weight > 0)):
            shares = apportion(left, weights)
        else:  # never bill answered texts at nothing: a missing or short count is logged and estimated
            shares = [estimated_tokens(weight) for weight in weights]
            why = "no token counts in its manifest" if counted is None else "too few input tokens in its manifest"
            log.warning("provider %s: job %s has %s; %d answers are priced at the estimate",
                        self.provider, self.job_id, why, len(shares))  # fmt: skip
        self.spool.seek(0)
        for raw, share in zip(self.spool, shares, strict=True):  # one line at a time: embeddings are large
            envelope = msgspec.json.decode(raw)
            envelope["response"]["body"]["usage"] = {"prompt_tokens": share, "total_tokens": share}
            self._emit(envelope)

    def _emit(self, envelope: dict[str, Any]) -> None:
        used = response_tokens(envelope)
        self.tokens = (self.tokens[0] + used[0], self.tokens[1] + used[1])
        self.out.write(encode_line(envelope))


def _count_of(job: Mapping[str, Any], *keys: str) -> int:
    return sum(v for k in keys if isinstance(v := job.get(k), int) and not isinstance(v, bool) and v > 0)


def _job_identifier(job_arn: str) -> str:
    """The path's ``jobIdentifier``: the job's 12-character id, which Bedrock takes as well as the ARN; an ARN in
    a path needs its ``/`` escaped, which a server that decodes paths before routing would not find."""
    return quote(job_id_of(job_arn), safe="")


def _input_key(submit_token: str) -> str:
    """The records' key below ``s3_uri`` (also the shard's ``provider_file_id``)."""
    return f"{submit_token}/{job_name(submit_token)}.jsonl"


def _shard_model(input_path: Path) -> str | None:
    """The provider model the first request of a shard names."""
    for _, _, body in iter_requests(input_path):
        model = body.get("model") if isinstance(body, dict) else None
        return model if isinstance(model, str) else None
    return None


def _region_of(base_url: str) -> str | None:
    host = httpx.URL(base_url).host
    found = _CONTROL_HOST.fullmatch(host)
    if found:
        return found.group(1)
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None
