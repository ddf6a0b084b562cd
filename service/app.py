"""The route table: which handler answers which path, with its dependencies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import Application, RequestHandler, StaticFileHandler

from handlers.admin import ConnectionHandler, ConnectionsHandler, UserConnectionsHandler
from handlers.base import BaseHandler
from handlers.events import PublishHandler
from handlers.health import LivenessHandler, ReadinessHandler
from handlers.openapi import OpenApiHandler
from handlers.schedules import ScheduleHandler, SchedulesHandler
from handlers.sse import EventStreamEndpoint
from handlers.tasks import TaskExecutionHandler, TaskHandler, TasksHandler
from handlers.tickets import TicketHandler
from handlers.ws import WebSocketEndpoint
from metrics.handler import MetricsHandler
from service.context import AppContext
from service.logs import request_logger

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"
ID = r"([^/]+)"

API_ROUTES: list[tuple[str, type[RequestHandler]]] = [
    (r"/ws", WebSocketEndpoint),
    (r"/events", EventStreamEndpoint),
    (r"/api/tasks", TasksHandler),
    (rf"/api/tasks/{ID}", TaskHandler),
    (rf"/api/tasks/{ID}/execute", TaskExecutionHandler),
    (r"/api/schedules", SchedulesHandler),
    (rf"/api/schedules/{ID}", ScheduleHandler),
    (r"/api/events", PublishHandler),
    (r"/api/realtime/ticket", TicketHandler),
    (r"/api/connections", ConnectionsHandler),
    (rf"/api/connections/{ID}", ConnectionHandler),
    (rf"/api/users/{ID}/connections", UserConnectionsHandler),
    (r"/api/openapi.json", OpenApiHandler),
    (r"/healthz", LivenessHandler),
    (r"/readyz", ReadinessHandler),
]


class NotFoundHandler(BaseHandler):
    """Unknown `/api/...` paths answer JSON 404, not HTML."""

    def prepare(self) -> None:
        self.write_json({"error": "not_found", "message": f"no route {self.request.path[:100]}"}, 404)


class WebAppHandler(StaticFileHandler):
    """The built dashboard. Its file names do not change between builds, so browsers must
    revalidate (cheap: ETag) or a new page could run an old script."""

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")


class NoDashboardHandler(RequestHandler):
    def get(self, path: str) -> None:
        self.set_status(404 if path else 200)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><meta charset=utf-8><title>Realtime</title>"
            "<p>The dashboard is not built. Run <code>make web</code> (needs Node.js 20), then reload.</p>"
            "<p>The API is at <a href=/api/openapi.json>/api/openapi.json</a>.</p>"
        )


def route_patterns() -> list[str]:
    """Every path pattern the app serves (the Kubernetes checks compare probes against it)."""
    return [pattern for pattern, _ in API_ROUTES] + ["/metrics", "/(.*)"]


def make_app(ctx: AppContext, **tornado_settings: Any) -> Application:
    """The Tornado application for one process."""
    settings = ctx.settings
    web_dir = settings.web_dir or DEFAULT_WEB_DIR
    routes: list[Any] = [(pattern, handler, {"ctx": ctx}) for pattern, handler in API_ROUTES]
    routes.append((r"/metrics", MetricsHandler, {"metrics": ctx.metrics}))
    routes.append((r"/api/.*", NotFoundHandler, {"ctx": ctx}))
    if (web_dir / "index.html").is_file():
        routes.append((r"/(.*)", WebAppHandler, {"path": str(web_dir), "default_filename": "index.html"}))
    else:
        routes.append((r"/(.*)", NoDashboardHandler))
    return Application(
        routes,
        websocket_ping_interval=0,  # the hub's heartbeat pings every connection from one timer
        log_function=request_logger(ctx.metrics),
        compress_response=False,
        xheaders=True,
        **tornado_settings,
    )
