"""AWS Bedrock batch inference (model invocation jobs): the driver that reads a job's records from S3, runs them
through the deterministic model and writes the results back to S3.

The control plane speaks rest-json at the root (routes in :mod:`gateway.simulator.bedrock_routes`). A job's input
is one ``.jsonl`` object or every ``.jsonl`` object under a prefix, one ``{"recordId"?, "modelInput"}`` per line;
its output is ``<output s3Uri>/<job id>/<input file name>.out`` per input file (one line per processed record, to
be joined on ``recordId``) plus ``<output s3Uri>/<job id>/manifest.json.out``. ``modelInput`` is the model's
native InvokeModel body: Anthropic Messages for Claude (``anthropic_version: "bedrock-2023-05-31"``, no ``model``
or ``stream``), ``{"inputText", ...}`` for Titan text embeddings and ``{"texts", "input_type", ...}`` for Cohere Embed
v3 and v4, whose answers carry no token counts (the manifest does). Other model families answer a per-record 400.

Calls authenticate with a Bedrock API key (``Authorization: Bearer <api_key>``) or a SigV4 ``Authorization``
header whose access key id is the spec's ``api_key``. The emulator sees only headers, so the signature itself is
not verified; its scope (service ``bedrock``, the emulator's region), signed headers and ``x-amz-date`` (within
15 minutes of the wall clock) are. Where the service's documentation is silent, a comment says what was chosen.
"""

from __future__ import annotations

import hashlib
import math
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec

from gateway.simulator.anthropic_protocol import simulate_message
from gateway.simulator.bedrock_s3 import InputProblem, S3Access, split_s3_uri
from gateway.simulator.errors import ApiError
from gateway.simulator.file_store import StoredFile
from gateway.simulator.jobs import ItemOutcome, Job, JobItem
from gateway.simulator.model import POISON_NESTING, embedding_vector, stable_id, text_tokens
from gateway.simulator.state import EmulatorState

if TYPE_CHECKING:
    pass

SERVICE = "bedrock"
ERROR_TYPE_HEADER = "x-amzn-ErrorType"
EXCEPTION_BY_STATUS: dict[int, str] = {
    400: "ValidationException", 403: "AccessDeniedException", 404: "UnknownOperationException",
    405: "UnknownOperationException", 429: "ThrottlingException", 500: "InternalServerException",
    503: "ServiceUnavailableException",
}  # fmt: skip
"""The exception of an error raised without one: call faults and unknown routes (unknown ids raise their own)."""
INVALID_TOKEN = "The security token included in the request is invalid."
SIGV4 = re.compile(
    r"AWS4-HMAC-SHA256\s+Credential=(?P<key>[^/,\s]+)/(?P<date>\d{8})/(?P<region>[^/,\s]+)/(?P<service>[^/,\s]+)"
    r"/aws4_request,\s*SignedHeaders=(?P<signed>[a-z0-9;-]+),\s*Signature=(?P<signature>[0-9a-f]{64})"
)
AMZ_DATE = "%Y%m%dT%H%M%SZ"
CLOCK_SKEW_S = 15 * 60

OUTPUT_SUFFIX = ".out"
MANIFEST = "manifest.json.out"
RECORD_ID_CHARS = string.digits + string.ascii_uppercase
RECORD_ID_LENGTH = 11

ANTHROPIC_VERSION = "bedrock-2023-05-31"
GEO_PREFIXES = frozenset({"us", "eu", "apac", "global", "jp", "au", "ca", "us-gov"})
"""Leading segments of cross-region inference profile ids (``us.anthropic.…``)."""
TITAN_V2_FIELDS = frozenset({"inputText", "dimensions", "normalize", "embeddingTypes"})
TITAN_V2_DIMENSIONS = (256, 512, 1024)
TITAN_V1_DIMENSIONS = 1536
EMBEDDING_TYPES = frozenset({"float", "binary"})
COHERE_V3_FIELDS = frozenset({"texts", "images", "input_type", "truncate", "embedding_types"})
COHERE_V4_FIELDS = COHERE_V3_FIELDS | {"inputs", "output_dimension", "max_tokens"}
COHERE_INPUT_TYPES = frozenset({"search_document", "search_query", "classification", "clustering"})
COHERE_V3_TYPES = frozenset({"float", "int8", "uint8", "binary"})
COHERE_V4_TYPES = COHERE_V3_TYPES | {"ubinary"}
COHERE_V3_DIMENSIONS = 1024
COHERE_V4_DIMENSIONS = (256, 512, 1024, 1536)
COHERE_MAX_TEXTS = 96
COHERE_V3_MAX_CHARS = 2048


# --- errors and authentication ---------------------------------------------------------------------------


def aws_error(status: int, exception: str, message: str) -> ApiError:
    """An error answered as ``{"message"}`` with the exception's name in ``x-amzn-ErrorType``."""
    return ApiError(status, message, type=exception, headers={ERROR_TYPE_HEADER: exception})


def validation_error(message: str) -> ApiError:
    """The 400 ``ValidationException``."""
    return aws_error(400, "ValidationException", message)


def malformed(detail: str) -> ApiError:
    """A per-record 400 in the words InvokeModel uses for a body the model's schema refuses."""
    return validation_error(f"Malformed input request: {detail}, please reformat your input and try again.")


def sigv4_problem(credential: re.Match[str], headers: Mapping[str, str], region: str, now: float) -> str | None:
    """Why a parsed SigV4 header is refused whatever its access key, or None when only the key is left to check.

    The request time is compared with the wall clock, not the emulator's clock: advancing the latter past a
    job's deadline must not invalidate the clients' signatures.
    """
    if credential["service"] != SERVICE:
        return f"Credential should be scoped to correct service: '{SERVICE}'."
    if credential["region"] != region:
        return "Credential should be scoped to a valid region."
    if not {"host", "x-amz-date"} <= set(credential["signed"].split(";")):
        return "'Host' and 'X-Amz-Date' must be signed headers in the AWS Authorization."
    stamp = headers.get("x-amz-date", "")
    try:
        signed_at = datetime.strptime(stamp, AMZ_DATE).replace(tzinfo=UTC).timestamp()
    except ValueError:
        return "Authorization header requires existence of a valid 'X-Amz-Date' header."
    if stamp[:8] != credential["date"]:
        return f"Date in Credential scope does not match X-Amz-Date: '{credential['date']}' != '{stamp[:8]}'."
    if abs(now - signed_at) > CLOCK_SKEW_S:
        current = datetime.fromtimestamp(now, UTC).strftime(AMZ_DATE)
        return f"Signature expired: {stamp} is not within 15 minutes of {current}."
    return None


# --- model families ----------------------------------------------------------------------------------------

Invocation = Callable[[str, dict[str, Any], str], tuple[dict[str, Any], int, int]]
"""(model id, modelInput, a stable per-record key) -> (modelOutput, input tokens, output tokens)."""


def base_model_id(model: str) -> str:
    """The foundation-model id behind a cross-region inference profile id (``us.anthropic.x`` -> ``anthropic.x``)."""
    geo, _, rest = model.partition(".")
    return rest if geo in GEO_PREFIXES and rest else model


def anthropic_model_name(model: str) -> str:
    """``anthropic.claude-3-haiku-20240307-v1:0`` -> ``claude-3-haiku-20240307``, the name a Claude response
    carries in ``model`` (unverified for every model; recent responses name the Anthropic model)."""
    return re.sub(r"-v\d+(:\d+)?$", "", base_model_id(model).removeprefix("anthropic."))


def invoke_claude(model: str, body: dict[str, Any], key: str) -> tuple[dict[str, Any], int, int]:
    """An Anthropic Messages response to a Bedrock Claude InvokeModel body."""
    if "anthropic_version" not in body:
        raise malformed("#: required key [anthropic_version] not found")
    if body["anthropic_version"] != ANTHROPIC_VERSION:
        raise malformed(f"#/anthropic_version: {body['anthropic_version']!r} is not a supported version")
    for name in ("model", "stream"):
        if name in body:
            raise malformed(f"#: extraneous key [{name}] is not permitted")
    betas = body.get("anthropic_beta", [])
    if not isinstance(betas, list) or not all(isinstance(b, str) for b in betas):
        raise malformed("#/anthropic_beta: expected type: JSONArray of strings")
    params = {k: v for k, v in body.items() if k not in ("anthropic_version", "anthropic_beta")}
    message = simulate_message({**params, "model": model}, [model], stable_id("msg_bdrk_", key))
    message["model"] = anthropic_model_name(model)
    for block in message["content"]:
        if block.get("citations", "") is None:  # the first-party API's empty citations; not in Bedrock's body
            del block["citations"]
    usage = message["usage"]
    usage.pop("service_tier", None)  # the first-party API's tier; Bedrock bills its own way
    return message, usage["input_tokens"], usage["output_tokens"]


def embed_titan(model: str, body: dict[str, Any], _key: str) -> tuple[dict[str, Any], int, int]:
    """A Titan text embeddings response: v2 takes dimensions/normalize/embeddingTypes, v1 only ``inputText``."""
    v1 = base_model_id(model).startswith("amazon.titan-embed-text-v1")
    extra = sorted(set(body) - ({"inputText"} if v1 else TITAN_V2_FIELDS))
    if extra:
        raise malformed(f"#: extraneous key [{extra[0]}] is not permitted")
    text = body.get("inputText")
    if not isinstance(text, str):
        raise malformed("#: required key [inputText] not found" if text is None else "#/inputText: expected String")
    if not text:
        raise malformed("#/inputText: expected minLength: 1, actual: 0")
    tokens = text_tokens(text)
    if v1:
        return {"embedding": embedding_vector(text, TITAN_V1_DIMENSIONS), "inputTextTokenCount": tokens}, tokens, 0
    dimensions, normalize = body.get("dimensions", 1024), body.get("normalize", True)
    if isinstance(dimensions, bool) or dimensions not in TITAN_V2_DIMENSIONS:
        raise malformed(f"#/dimensions: {dimensions} is not a valid enum value")
    if not isinstance(normalize, bool):
        raise malformed("#/normalize: expected type: Boolean")
    types = body.get("embeddingTypes", ["float"])
    if not isinstance(types, list) or not types or not set(types) <= EMBEDDING_TYPES or len(set(types)) < len(types):
        raise malformed("#/embeddingTypes: expected a non-empty array of unique values among [float, binary]")
    vector = embedding_vector(text, dimensions)
    norm = math.sqrt(sum(v * v for v in vector))
    if normalize and norm:
        vector = [round(v / norm, 6) for v in vector]
    by_type: dict[str, list[Any]] = {}
    if "float" in types:
        by_type["float"] = vector
    if "binary" in types:
        by_type["binary"] = [1 if v > 0 else 0 for v in vector]
    # ``embedding`` is always the float vector, whichever types were asked for.
    return {"embedding": vector, "embeddingsByType": by_type, "inputTextTokenCount": tokens}, tokens, 0


def embed_cohere(model: str, body: dict[str, Any], key: str) -> tuple[dict[str, Any], int, int]:
    """A Cohere Embed response: ``embeddings`` as float vectors (``embeddings_floats``), or by type when
    ``embedding_types`` is given (``embeddings_by_type``). No token counts in the body: InvokeModel sends them
    as response headers, which a batch record has no room for; the tokens still reach the manifest."""
    v4 = base_model_id(model).startswith("cohere.embed-v4")
    extra = sorted(set(body) - (COHERE_V4_FIELDS if v4 else COHERE_V3_FIELDS))
    if extra:
        raise malformed(f"#: extraneous key [{extra[0]}] is not permitted")
    if body.get("input_type") not in COHERE_INPUT_TYPES:
        raise malformed("#: required key [input_type] not found" if "input_type" not in body
                        else f"#/input_type: {body['input_type']} is not a valid enum value")  # fmt: skip
    texts = body.get("texts")
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        missing = texts is None  # images and inputs are not emulated
        raise malformed("#: required key [texts] not found" if missing else "#/texts: expected JSONArray of strings")
    if len(texts) > COHERE_MAX_TEXTS:
        raise malformed(f"#/texts: expected maximum item count: {COHERE_MAX_TEXTS}, found: {len(texts)}")
    if not v4 and any(len(text) > COHERE_V3_MAX_CHARS for text in texts):  # per text: unverified, see the adapter
        raise malformed(f"#/texts: expected maxLength: {COHERE_V3_MAX_CHARS}")
    dimensions = body.get("output_dimension", COHERE_V4_DIMENSIONS[-1]) if v4 else COHERE_V3_DIMENSIONS
    if isinstance(dimensions, bool) or dimensions not in (COHERE_V4_DIMENSIONS if v4 else (COHERE_V3_DIMENSIONS,)):
        raise malformed(f"#/output_dimension: {dimensions} is not a valid enum value")
    types = body.get("embedding_types")
    allowed = COHERE_V4_TYPES if v4 else COHERE_V3_TYPES
    if types is not None and (not isinstance(types, list) or not types or not set(types) <= allowed):
        raise malformed(f"#/embedding_types: expected a non-empty array of values among {sorted(allowed)}")
    vectors = [embedding_vector(text, dimensions) for text in texts]
    output: dict[str, Any] = {"id": stable_id("", key, length=32), "texts": texts}
    if types is None:
        output |= {"embeddings": vectors, "response_type": "embeddings_floats"}
    else:
        by_type: dict[str, list[Any]] = {}
        for kind in types:
            if kind == "float":
                by_type[kind] = vectors
            elif kind in ("binary", "ubinary"):
                by_type[kind] = [[1 if v > 0 else 0 for v in vector] for vector in vectors]
            else:  # int8, uint8
                offset = 128 if kind == "uint8" else 0
                by_type[kind] = [[round(v * 127) + offset for v in vector] for vector in vectors]
        output |= {"embeddings": by_type, "response_type": "embeddings_by_type"}
    return output, sum(text_tokens(text) for text in texts), 0


FAMILIES: dict[str, Invocation] = {
    "anthropic.": invoke_claude, "amazon.titan-embed-text": embed_titan, "cohere.embed-": embed_cohere,
}  # fmt: skip
"""Model id prefix (after any geo prefix) -> how its InvokeModel bodies are answered."""


def invocation_for(model: str) -> Invocation | None:
    base = base_model_id(model)
    return next((run for prefix, run in FAMILIES.items() if base.startswith(prefix)), None)


def generated_record_id(*parts: str) -> str:
    """An 11-character upper-case alphanumeric recordId for a line without one (stable per job and line)."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return "".join(RECORD_ID_CHARS[b % len(RECORD_ID_CHARS)] for b in digest[:RECORD_ID_LENGTH])


class BedrockDriver:
    """Validation (S3 input), execution by model family and the S3 output of Bedrock model invocation jobs."""

    kind = "bedrock"
    answers_in_files = False
    base_path = ""

    def __init__(self, region: str = "us-east-1", s3_endpoint_url: str | None = None) -> None:
        self.region = region
        self.s3 = S3Access(s3_endpoint_url, region)
        self._sequence = 0

    def next_sequence(self) -> int:
        """A number increasing with each created job (the list routes page on it)."""
        self._sequence += 1
        return self._sequence

    def route_handlers(self) -> list[Any]:
        from gateway.simulator.bedrock_routes import ModelInvocationJobController, list_jobs

        return [ModelInvocationJobController, list_jobs]

    def error_body(self, err: ApiError) -> dict[str, Any]:
        """``{"message"}``; also names the exception in ``err.headers`` for errors raised without one (call
        faults, unknown routes), which both error renderers send after rendering the body."""
        exception = err.type if err.type and err.type.endswith("Exception") else None
        if exception is None:
            fallback = "InternalServerException" if err.status >= 500 else "ValidationException"
            exception = EXCEPTION_BY_STATUS.get(err.status, fallback)
        err.headers.setdefault(ERROR_TYPE_HEADER, exception)
        return {"message": err.message}

    def authorized(self, headers: Mapping[str, str], api_key: str) -> bool:
        authorization = headers.get("authorization", "")
        if authorization == f"Bearer {api_key}":
            return True
        credential = SIGV4.fullmatch(authorization)
        return (
            credential is not None
            and credential["key"] == api_key
            and sigv4_problem(credential, headers, self.region, time.time()) is None
        )

    def key_refused(self, headers: Mapping[str, str]) -> ApiError:
        """403s in AWS's words: a missing header, a malformed or mis-scoped signature, else an unknown key."""
        authorization = headers.get("authorization", "")
        if not authorization:
            return aws_error(403, "MissingAuthenticationTokenException", "Missing Authentication Token")
        if authorization.startswith("AWS4-HMAC-SHA256"):
            credential = SIGV4.fullmatch(authorization)
            if credential is None:
                message = "Authorization header requires 'Credential', 'SignedHeaders' and 'Signature' parameters."
                return aws_error(403, "IncompleteSignatureException", message)
            problem = sigv4_problem(credential, headers, self.region, time.time())
            if problem is not None:
                return aws_error(403, "InvalidSignatureException", problem)
        return aws_error(403, "UnrecognizedClientException", INVALID_TOKEN)

    def validate(self, state: EmulatorState, job: Job) -> None:
        """Read the records of every input file; a missing file, a bad line or a record count outside the
        quota fails the job with a ``message``."""
        job.extra["validation_started"] = True
        try:
            self._read_records(state, job)
        except InputProblem as problem:
            job.items.clear()
            job.errors = [{"message": str(problem)}]
            return
        job.extra["validated"] = True

    def _read_records(self, state: EmulatorState, job: Job) -> None:
        input_uri: str = job.extra["input_uri"]
        self.s3.check_output(job.extra["output_uri"])
        bucket, _ = split_s3_uri(input_uri)
        files: dict[str, str] = {}  # recordId -> the input file's name
        for key in self.s3.input_keys(input_uri):
            name = key.rsplit("/", 1)[-1]
            location = f"s3://{bucket}/{key}"
            for number, raw in enumerate(self.s3.read(bucket, key, state.max_file_bytes).splitlines(), 1):
                if raw.strip():
                    item = _record(raw, number, location, job.id)
                    # The service states no uniqueness rule (unverified); refusing duplicates keeps the
                    # documented join of output to input on recordId unambiguous.
                    if item.custom_id in files:
                        raise InputProblem(f"Line {number} of {location}: recordId {item.custom_id!r} is repeated.")
                    files[item.custom_id] = name
                    job.items.append(item)
        count, minimum = len(job.items), state.spec.min_records
        if count < minimum:
            raise InputProblem(
                f"The number of records ({count}) is below the minimum ({minimum}) for a batch inference job."
            )
        if count > state.max_lines:
            raise InputProblem(
                f"The number of records ({count}) exceeds the maximum ({state.max_lines}) for a batch inference job."
            )
        job.extra["record_files"] = files

    def execute(self, state: EmulatorState, job: Job, item: JobItem) -> ItemOutcome:
        invoke = invocation_for(job.model or "")
        try:
            if invoke is None:
                raise validation_error(f"The model {job.model} is not supported for batch inference.")
            output, input_tokens, output_tokens = invoke(job.model or "", item.body, f"{job.id}:{item.custom_id}")
        except ApiError as err:
            return ItemOutcome(item.custom_id, err.status, self.error_body(err))
        return ItemOutcome(item.custom_id, 200, output, input_tokens=input_tokens, output_tokens=output_tokens)

    def finalize(self, state: EmulatorState, job: Job, outcomes: Sequence[ItemOutcome]) -> list[StoredFile]:
        """Write one ``.out`` per input file holding processed records, and the manifest, to S3.

        Records that never ran (stop, expiry) are left out, and a job where none ran writes nothing
        (both unverified: the service documents the output of finished records only).
        """
        processed = [outcome for outcome in outcomes if outcome.status_code is not None]
        if not processed:
            return []
        items = {item.custom_id: item for item in job.items}
        files: dict[str, str] = job.extra["record_files"]
        lines: dict[str, list[bytes]] = {}
        corrupt, nested = state.faults.malformed_output_line, state.faults.nested_output_line
        for outcome in processed:
            line: dict[str, Any] = {"recordId": outcome.custom_id, "modelInput": items[outcome.custom_id].body}
            if outcome.ok:
                line["modelOutput"] = POISON_NESTING if nested else outcome.body
                nested = False
            else:
                message = (outcome.body or {}).get("message", "")
                line["error"] = {"errorCode": outcome.status_code, "errorMessage": message}
            encoded = msgspec.json.encode(line)
            if corrupt:
                encoded, corrupt = encoded[: len(encoded) // 2], False
            lines.setdefault(files[outcome.custom_id], []).append(encoded)
        folder = f"{job.extra['output_uri'].rstrip('/')}/{job.id}"
        for name, chunk in lines.items():
            self.s3.write(folder, name + OUTPUT_SUFFIX, b"\n".join(chunk) + b"\n")
        successes = [outcome for outcome in processed if outcome.ok]
        manifest = {
            "totalRecordCount": len(job.items), "processedRecordCount": len(processed),
            "successRecordCount": len(successes), "errorRecordCount": len(processed) - len(successes),
            "inputTokenCount": sum(o.input_tokens for o in successes),
            "outputTokenCount": sum(o.output_tokens for o in successes),
        }  # fmt: skip
        self.s3.write(folder, MANIFEST, msgspec.json.encode(manifest))
        return []


def _record(raw: bytes, number: int, location: str, job_id: str) -> JobItem:
    """One input line as a job item (custom_id = recordId); raises ``InputProblem`` naming the line."""
    try:
        line = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise InputProblem(f"Line {number} of {location} is not valid JSON.") from None
    if not isinstance(line, dict) or not isinstance(line.get("modelInput"), dict):
        raise InputProblem(f"Line {number} of {location} has no object 'modelInput'.")
    record_id = line.get("recordId")
    if record_id is None:
        record_id = generated_record_id(job_id, location, str(number))
    # The docs call recordId alphanumeric, but it is unverified that the service refuses other characters:
    # any non-empty string is accepted.
    if not isinstance(record_id, str) or not record_id:
        raise InputProblem(f"Line {number} of {location}: recordId must be a non-empty string.")
    return JobItem(record_id, line["modelInput"], number)
