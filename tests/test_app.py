"""The application's request path: no hook or handler hops to a worker thread.

The framework runs a plain-function handler or ``before_request`` hook in a worker thread; that hop cost
about a third of a status read, so every one of the gateway's is a coroutine.
"""

from __future__ import annotations

import inspect
from pathlib import Path

import pytest
from litestar.handlers import HTTPRouteHandler

from gateway.app import create_app
from gateway.settings import Settings


# Built in-process here, the app reports that its handlers use Litestar 2's inferred path parameters and
# dependencies, which Litestar 3 drops (the dependency is pinned below 3).
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_every_handler_and_before_request_hook_runs_on_the_event_loop(tmp_path: Path) -> None:
    app = create_app(Settings(data_dir=tmp_path), run_worker=False)
    handlers = [
        handler
        for route in app.routes
        for handler in getattr(route, "route_handlers", [])
        if isinstance(handler, HTTPRouteHandler)
    ]
    assert len(handlers) > 40
    for handler in handlers:
        assert not handler.sync_to_thread, f"{handler.handler_name} runs in a worker thread"
        hook = handler.resolve_before_request()
        assert hook is None or inspect.iscoroutinefunction(hook), f"{handler.handler_name}'s before_request hook"
