"""The route table: every path the service serves, its handler, and the OpenAPI operations it
documents. The Tornado application (`handlers.routes.make_app`), the OpenAPI document's paths
(`handlers.openapi_document`), the access log's handler names and the probe list are built
from it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tornado.web import RequestHandler

from handlers.admin import ConnectionHandler, ConnectionsHandler, UserConnectionsHandler
from handlers.base import BaseHandler
from handlers.events import PublishHandler
from handlers.health import LivenessHandler, ReadinessHandler
from handlers.openapi import OpenApiHandler
from handlers.poll_endpoint import PollHandler
from handlers.presence import PresenceHandler
from handlers.schedules import ScheduleHandler, SchedulesHandler
from handlers.sse_endpoint import EventStreamEndpoint
from handlers.tasks import TaskExecutionHandler, TaskHandler, TasksHandler
from handlers.tickets import TicketHandler
from handlers.ws_endpoint import WebSocketEndpoint
from metrics.handler import MetricsHandler
from service.core.schema import TransportName


@dataclass(frozen=True)
class Route:
    """One path. `path` is written as OpenAPI writes it (`/api/tasks/{id}`); Tornado gets `pattern`."""

    path: str
    handler: type[RequestHandler]
    operations: dict[str, str] = field(default_factory=dict)  # method → operationId (handlers.openapi_document)
    quiet: bool = False  # probes and scrapes, every few seconds: their successes log at DEBUG

    @property
    def pattern(self) -> str:
        """The Tornado pattern: each `{name}` is one path segment, passed to the handler."""
        return re.sub(r"\{[^}]+\}", "([^/]+)", self.path)

    @property
    def stream(self) -> bool:
        """Whether the handler hands its socket to a transport (its request time is its whole life)."""
        label = getattr(self.handler, "transport_label", None)
        return issubclass(self.handler, BaseHandler) and label in tuple(TransportName)


# In the OpenAPI document's order; no two patterns match the same path.
ROUTES: tuple[Route, ...] = (
    Route("/api/tasks", TasksHandler, {"get": "listTasks", "post": "createTask"}),
    Route("/api/tasks/{id}", TaskHandler, {"get": "getTask", "patch": "updateTask", "delete": "deleteTask"}),
    Route("/api/tasks/{id}/execute", TaskExecutionHandler, {"post": "executeTask"}),
    Route("/api/schedules", SchedulesHandler, {"get": "listSchedules", "post": "createSchedule"}),
    Route(
        "/api/schedules/{id}",
        ScheduleHandler,
        {"get": "getSchedule", "patch": "updateSchedule", "delete": "deleteSchedule"},
    ),
    Route("/api/events", PublishHandler, {"post": "publishEvent"}),
    Route("/api/realtime/ticket", TicketHandler, {"post": "createTicket"}),
    Route("/api/presence", PresenceHandler, {"get": "listPresence"}),
    Route("/api/openapi.json", OpenApiHandler, {"get": "getOpenApi"}),
    Route("/api/connections", ConnectionsHandler, {"get": "listConnections"}),
    Route("/api/connections/{id}", ConnectionHandler, {"delete": "closeConnection"}),
    Route("/api/users/{userId}/connections", UserConnectionsHandler, {"delete": "closeUserConnections"}),
    Route("/events", EventStreamEndpoint, {"get": "streamEvents"}),
    Route("/poll", PollHandler, {"get": "poll"}),
    Route("/ws", WebSocketEndpoint, {"get": "websocket"}),
    Route("/healthz", LivenessHandler, quiet=True),
    Route("/readyz", ReadinessHandler, quiet=True),
    Route("/metrics", MetricsHandler, quiet=True),
)
