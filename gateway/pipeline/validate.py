"""Stage 2 of the data path: line-by-line validation of a batch's input file.

The check (:mod:`gateway.pipeline.input_lines`) runs before anything is sent to a provider, in a CPU
process (:mod:`gateway.cpu_pool`) so that it holds neither the worker's event loop nor the API's. A file whose
lines were checked while it uploaded, under the same rules and limits and for this endpoint, is not read again. Every
problem is reported with its 1-based line number in OpenAI's ``errors.data`` shape; a file with any
problem fails the whole batch. A clean file's requests' figures (:mod:`gateway.pipeline.line_figures`) are kept
beside it, by the upload's check or by this one, so that routing does not read the file for its estimates.
"""

from __future__ import annotations

import logging
from typing import Any

from gateway.context import GatewayContext
from gateway.db import repo
from gateway.db.leases import Lease
from gateway.db.models import Batch, now_s
from gateway.db.unit_of_work import reading, transaction
from gateway.pipeline.input_lines import ValidationReport, report_from_check, validate_input_file
from gateway.pipeline.lifecycle import end_unstarted, fail_batch
from gateway.pipeline.line_figures import store_figures

log = logging.getLogger(__name__)


async def run(context: GatewayContext, batch: Batch, lease: Lease) -> None:
    """Stage entry: validate a ``validating`` batch, then fail it or queue it for routing."""
    async with reading(context.sessions) as session:
        input_file = await repo.get_file(session, batch.team_id, batch.input_file_id)
    if batch.status == "cancelling":
        await end_unstarted(context, batch, lease, status="cancelled")
        return
    limits = context.settings.limits
    if input_file is None:
        report = ValidationReport()
        report.add("input_file_missing", f"The input file '{batch.input_file_id}' was deleted.", None, None, 1)
    elif checked := report_from_check(input_file.line_check, batch.endpoint, limits):
        report = checked  # its lines were checked while it uploaded
    else:
        async with context.blobs.local_copy(input_file.storage_key) as path:
            report = await context.cpu.run(validate_input_file, path, batch.endpoint, limits)
        if report.figures is not None:  # for routing, before the batch moves on to it
            await store_figures(context.blobs, input_file.storage_key, report.figures)
    now = now_s()
    async with transaction(context.sessions) as session:
        if report.ok:
            values: dict[str, Any] = {
                "status": "in_progress",
                "in_progress_at": now,
                "request_total": report.line_count,
                "model": next(iter(report.models)) if len(report.models) == 1 else None,
                "stage": "route",
                "stage_attempts": 0,
            }
        else:
            values = {"status": "failed", "failed_at": now, "errors": report.errors, "stage": "done"}
        changed = await repo.update_batch_if(
            session, batch.id, expected_status="validating", values=values, lease=lease
        )
    if changed:
        log.info("batch %s validated: %s lines, %s problems", batch.id, report.line_count, report.error_count)


async def give_up(context: GatewayContext, batch: Batch, lease: Lease, code: str, message: str) -> None:
    """End a batch whose validation cannot run (its input is gone or unreadable)."""
    if code == "content_missing":
        code, message = "input_file_missing", f"The content of input file '{batch.input_file_id}' is missing."
    await fail_batch(context, batch, lease, code, f"Validation could not run: {message}")
