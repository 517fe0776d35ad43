"""``create_app(settings)``: the Litestar application. Nothing heavy happens at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from litestar import Litestar, Router
from litestar.config.app import AppConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin

from gateway import __version__
from gateway.api.admin import AdminController
from gateway.api.admin_billing import AdminBillingController
from gateway.api.admin_keys import AdminKeysController
from gateway.api.admin_ops import AdminOpsController
from gateway.api.admin_webhooks import AdminWebhooksController
from gateway.api.batches import BatchesController
from gateway.api.errors import EXCEPTION_HANDLERS
from gateway.api.estimates import EstimatesController
from gateway.api.files import FilesController
from gateway.api.health import healthz, readyz
from gateway.api.inputs import check_request_url
from gateway.api.message_batches import MessageBatchesController
from gateway.api.metrics import http_metrics, metrics_endpoint
from gateway.api.models import ModelsController
from gateway.api.openapi import COMPONENTS
from gateway.api.provider_webhooks import provider_webhook
from gateway.api.request_ids import add_request_id
from gateway.context import GatewayContext
from gateway.db.engine import upgrade_to_head
from gateway.jobs.worker import Worker
from gateway.pipeline.intake import upload_check
from gateway.settings import Settings

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, *, run_worker: bool | None = None) -> Litestar:
    """Build the gateway application; the worker runs inside unless disabled."""
    settings = settings or Settings()
    with_worker = settings.worker.enabled_in_serve if run_worker is None else run_worker

    @contextlib.asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        if settings.auto_migrate:
            await asyncio.to_thread(upgrade_to_head, settings.resolved_database_url)
        context = GatewayContext.create(settings)
        app.state.context = context
        upload_check.warm(context.upload_checks)
        worker = Worker(context) if with_worker else None
        task = asyncio.create_task(worker.run()) if worker else None
        try:
            yield
        finally:
            if worker and task:
                worker.stop()
                with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                    # The worker gives its running steps their grace period, then releases what it still holds.
                    await asyncio.wait_for(task, timeout=settings.worker.shutdown_grace_s + 10)
            await context.close()

    v1 = Router(
        path="/v1",
        route_handlers=[
            FilesController,
            BatchesController,
            EstimatesController,
            ModelsController,
            MessageBatchesController,
        ],
    )
    return Litestar(
        route_handlers=[
            v1,
            AdminController,
            AdminBillingController,
            AdminOpsController,
            AdminKeysController,
            AdminWebhooksController,
            healthz,
            readyz,
            metrics_endpoint,
            provider_webhook,
        ],
        lifespan=[lifespan],
        exception_handlers=EXCEPTION_HANDLERS,  # type: ignore[arg-type]
        before_request=check_request_url,
        middleware=[http_metrics],
        before_send=[add_request_id],
        openapi_config=OpenAPIConfig(
            title="batch-gateway",
            version=__version__,
            path="/schema",
            render_plugins=[SwaggerRenderPlugin()],
            components=COMPONENTS,
        ),
        request_max_body_size=None,
        debug=False,
        on_app_init=[_quiet_logging],
    )


def _quiet_logging(config: AppConfig) -> AppConfig:
    config.logging_config = None
    return config
