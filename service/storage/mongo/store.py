"""`MongoStore`, the one object the runtime builds: every collection's repository on one client.

Each repository is a module of its own (`client`, `events`, `tasks`, `schedules`, `tickets`,
`idempotency`, `presence`); `MongoStore` combines them, so one pool, one deadline and one
transaction serve them all. It implements the ports of `service.core.ports` (`ChangeFeed`,
`PresenceStore`, `StoreHealth`, `TicketStore`): fan-out and readiness are typed against those.
"""

from __future__ import annotations

from service.storage.mongo.client import Document, MongoBase, Session, pool_options, utcnow, write_concern_options
from service.storage.mongo.idempotency import KEY_TTL_SECONDS, MongoKeys
from service.storage.mongo.presence import MongoPresence
from service.storage.mongo.schedules import MongoSchedules
from service.storage.mongo.tasks import MongoTasks
from service.storage.mongo.tickets import MongoTickets
from service.storage.views import schedule_view, task_view


class MongoStore(MongoTasks, MongoSchedules, MongoTickets, MongoKeys, MongoPresence, MongoBase):
    """The service's only door to MongoDB."""


__all__ = [
    "KEY_TTL_SECONDS",
    "Document",
    "MongoStore",
    "Session",
    "pool_options",
    "schedule_view",
    "task_view",
    "utcnow",
    "write_concern_options",
]
