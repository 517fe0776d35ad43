"""Stage 1 of the data path: what enters the gateway.

* :mod:`.upload`: a client's upload, streamed into the blob store with its limits enforced on the way.
* :mod:`.files`: a stored upload's record, created idempotently.
* :mod:`.batches`: the checks on a create request, creating a batch (idempotently) and cancelling one.
* :mod:`.retry`: a new batch of a finished batch's failed requests.
* :mod:`.idempotency`: what an ``Idempotency-Key`` means for the create calls.

The client API, the admin API and the CLI call these functions; they only parse and render around them.
"""

from gateway.pipeline.intake.batches import BatchRequest, cancel_batch, check_batch_request, create_batch
from gateway.pipeline.intake.files import create_file, delete_file_blobs
from gateway.pipeline.intake.retry import retry_batch
from gateway.pipeline.intake.upload import MULTIPART_ALLOWANCE, UploadResult, check_declared_length, receive_upload

__all__ = [
    "MULTIPART_ALLOWANCE",
    "BatchRequest",
    "UploadResult",
    "cancel_batch",
    "check_batch_request",
    "check_declared_length",
    "create_batch",
    "create_file",
    "delete_file_blobs",
    "receive_upload",
    "retry_batch",
]
