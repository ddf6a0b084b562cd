"""The route table: which handler answers which path, with its dependencies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tornado.web import Application, RequestHandler

from handlers.admin import ConnectionHandler, ConnectionsHandler, UserConnectionsHandler
from handlers.base import BaseHandler, SecurityHeaders
from handlers.dashboard import DashboardHandler, DashboardIndexHandler, NoDashboardHandler
from handlers.events import PublishHandler
from handlers.health import LivenessHandler, ReadinessHandler
from handlers.openapi import OpenApiHandler
from handlers.poll import PollHandler
from handlers.presence import PresenceHandler
from handlers.schedules import ScheduleHandler, SchedulesHandler
from handlers.sse import EventStreamEndpoint
from handlers.tasks import TaskExecutionHandler, TaskHandler, TasksHandler
from handlers.tickets import TicketHandler
from handlers.ws import WebSocketEndpoint
from metrics.handler import MetricsHandler
from metrics.logs import request_logger
from service.app.context import AppContext
from service.transports.poll import VerifiedTokens, poll_pacer

DEFAULT_WEB_DIR = Path(__file__).resolve().parent.parent / "web" / "dist"
ID = r"([^/]+)"

API_ROUTES: list[tuple[str, type[RequestHandler]]] = [
    (r"/ws", WebSocketEndpoint),
    (r"/events", EventStreamEndpoint),
    (r"/poll", PollHandler),
    (r"/api/tasks", TasksHandler),
    (rf"/api/tasks/{ID}", TaskHandler),
    (rf"/api/tasks/{ID}/execute", TaskExecutionHandler),
    (r"/api/schedules", SchedulesHandler),
    (rf"/api/schedules/{ID}", ScheduleHandler),
    (r"/api/events", PublishHandler),
    (r"/api/realtime/ticket", TicketHandler),
    (r"/api/presence", PresenceHandler),
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


def route_patterns() -> list[str]:
    """Every path pattern the app serves (the Kubernetes checks compare probes against it)."""
    return [pattern for pattern, _ in API_ROUTES] + ["/metrics", "/(.*)"]


def make_app(ctx: AppContext, **tornado_settings: Any) -> Application:
    """The Tornado application for one process."""
    settings = ctx.settings
    web_dir = settings.web_dir or DEFAULT_WEB_DIR
    tokens = VerifiedTokens()  # the pollers' verified tokens, one set per process
    pacer = poll_pacer()  # each user's polls answered at once, paced past a burst
    routes: list[Any] = [
        (pattern, handler, {"ctx": ctx, "tokens": tokens, "pacer": pacer} if handler is PollHandler else {"ctx": ctx})
        for pattern, handler in API_ROUTES
    ]
    routes.append((r"/metrics", MetricsHandler, {"metrics": ctx.metrics}))
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
        log_function=request_logger(ctx.metrics, (route[1].__name__ for route in routes)),
        compress_response=False,
        **tornado_settings,
    )
    app.add_transform(SecurityHeaders)
    return app
