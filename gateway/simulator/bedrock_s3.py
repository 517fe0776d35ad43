"""The S3 side of the Bedrock emulator: reading a job's input records and writing its output, through obstore.

Calls block; the driver makes them in worker threads (a job validates and finalizes off the event loop).
"""

from __future__ import annotations

import re
import threading
from datetime import timedelta
from typing import TYPE_CHECKING

import obstore
from obstore.exceptions import BaseError, NotFoundError
from obstore.store import S3Store

if TYPE_CHECKING:
    from obstore.store import ClientConfig, S3Config

S3_FAILURES = (BaseError, OSError)
"""What the S3 client raises (a missing object is a FileNotFoundError, a refused call a BaseError)."""
S3_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][.\-a-z0-9]{1,61}[a-z0-9])(?:/(?P<key>.*))?")


class InputProblem(Exception):
    """Why a job fails validation (the job's ``message``)."""


def split_s3_uri(uri: str) -> tuple[str, str]:
    """``s3://bucket/key`` -> ``("bucket", "key")`` (the key may be empty)."""
    match = S3_URI.fullmatch(uri)
    if match is None:
        raise InputProblem(f"{uri} is not a valid S3 URI.")
    return match["bucket"], match["key"] or ""


class S3Access:
    """Objects on the S3 endpoint (AWS when None), one client per bucket; credentials come from the environment
    (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``). Calls block: the driver makes them in worker threads."""

    def __init__(self, endpoint_url: str | None, region: str) -> None:
        self.endpoint_url, self.region = endpoint_url, region
        self._stores: dict[str, S3Store] = {}
        self._lock = threading.Lock()  # jobs validate and finalize in concurrent worker threads

    def store(self, bucket: str) -> S3Store:
        with self._lock:
            if bucket not in self._stores:
                config: S3Config = {"region": self.region}
                client: ClientConfig = {"timeout": timedelta(seconds=30), "connect_timeout": timedelta(seconds=10)}
                if self.endpoint_url:
                    # Path style: S3-compatible servers on loopback have no per-bucket host names.
                    config["endpoint"] = self.endpoint_url.rstrip("/")
                    config["virtual_hosted_style_request"] = False
                    client["allow_http"] = self.endpoint_url.startswith("http://")
                self._stores[bucket] = S3Store(bucket, config=config, client_options=client)
            return self._stores[bucket]

    def input_keys(self, uri: str) -> list[str]:
        """The object a ``.jsonl`` URI names, or every ``.jsonl`` object under a prefix (in key order)."""
        bucket, key = split_s3_uri(uri)
        if key.endswith(".jsonl"):
            return [key]
        try:
            listing = obstore.list(self.store(bucket), prefix=key.strip("/") or None)
            keys = [meta["path"] for batch in listing for meta in batch]
        except S3_FAILURES as exc:
            raise InputProblem(f"Unable to list the input S3 location {uri}: {type(exc).__name__}.") from None
        found = sorted(k for k in keys if k.endswith(".jsonl"))
        if not found:
            raise InputProblem(f"No .jsonl files were found under the input S3 location {uri}.")
        return found

    def read(self, bucket: str, key: str, max_bytes: int) -> bytes:
        try:
            result = obstore.get(self.store(bucket), key)
            if result.meta["size"] > max_bytes:
                raise InputProblem(f"The input file s3://{bucket}/{key} is larger than {max_bytes} bytes.")
            return bytes(result.bytes())
        except (FileNotFoundError, NotFoundError):
            raise InputProblem(f"The input file s3://{bucket}/{key} does not exist.") from None
        except S3_FAILURES as exc:
            raise InputProblem(f"Unable to read the input file s3://{bucket}/{key}: {type(exc).__name__}.") from None

    def check_output(self, uri: str) -> None:
        """Fail validation when the output location cannot be listed (a missing bucket, no access)."""
        bucket, key = split_s3_uri(uri)
        try:
            next(iter(obstore.list(self.store(bucket), prefix=key.strip("/") or None, chunk_size=1)), None)
        except S3_FAILURES as exc:
            raise InputProblem(f"Unable to access the output S3 location {uri}: {type(exc).__name__}.") from None

    def write(self, uri: str, name: str, data: bytes) -> None:
        bucket, key = split_s3_uri(uri)
        obstore.put(self.store(bucket), f"{key.strip('/')}/{name}".lstrip("/"), data)
