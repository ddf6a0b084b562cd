"""The Tornado application for one process: the route table (`handlers.route_table`) with each
handler's dependencies, the dashboard and the JSON 404s."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import Application

from handlers.base import BaseHandler, SecurityHeaders
from handlers.dashboard import DashboardHandler, DashboardIndexHandler, NoDashboardHandler
from handlers.openapi import OpenApiHandler
from handlers.openapi_document import openapi_document
from handlers.poll_endpoint import PollHandler
from handlers.route_table import ROUTES
from metrics.handler import MetricsHandler
from metrics.logs import request_logger
from service.app.context import AppContext
from service.transports.poll import VerifiedTokens, poll_pacer

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"


class NotFoundHandler(BaseHandler):
    """Unknown `/api/...` paths answer JSON 404, not HTML."""

    def prepare(self) -> None:
        self.write_json({"error": "not_found", "message": f"no route {self.request.path[:100]}"}, 404)


def route_patterns() -> list[str]:
    """Every path pattern the app serves (the Kubernetes checks compare probes against it)."""
    return [route.pattern for route in ROUTES] + ["/(.*)"]


def make_app(ctx: AppContext, **tornado_settings: Any) -> Application:
    """The Tornado application for one process."""
    settings = ctx.settings
    web_dir = settings.web_dir or DEFAULT_WEB_DIR
    tokens = VerifiedTokens()  # the pollers' verified tokens, one set per process
    pacer = poll_pacer()  # each user's polls answered at once, paced past a burst
    dependencies: dict[type[Any], dict[str, Any]] = {
        PollHandler: {"ctx": ctx, "tokens": tokens, "pacer": pacer},
        OpenApiHandler: {"ctx": ctx, "document": openapi_document()},
        MetricsHandler: {"metrics": ctx.metrics},
    }
    routes: list[Any] = [
        (route.pattern, route.handler, dependencies.get(route.handler, {"ctx": ctx})) for route in ROUTES
    ]
    routes.append((r"/api/.*", NotFoundHandler, {"ctx": ctx}))
    if (web_dir / "index.html").is_file():
        routes.append((r"/(?:index\.html)?", DashboardIndexHandler, {"web_dir": web_dir, "settings": settings}))
        routes.append(
            (r"/(.*)", DashboardHandler, {"path": str(web_dir), "default_filename": "index.html", "settings": settings})
        )
    else:
        routes.append((r"/(.*)", NoDashboardHandler, {"settings": settings}))
    app = Application(
        routes,
        default_handler_class=NotFoundHandler,
        default_handler_args={"ctx": ctx},
        websocket_ping_interval=0,  # the hub's heartbeat pings every connection from one timer
        log_function=request_logger(
            ctx.metrics,
            [route[1] for route in routes],
            streams=[route.handler for route in ROUTES if route.stream],
            quiet=[route.handler for route in ROUTES if route.quiet],
        ),
        compress_response=False,
        **tornado_settings,
    )
    app.add_transform(SecurityHeaders)
    return app
