"""One-time tickets: a browser trades its token for one, so the token stays out of URLs
(the ticket rules themselves live with the other credentials in `service.app.auth`)."""

from __future__ import annotations

from typing import Any

from service.app.auth import Authenticator
from service.core.identity import Principal
from service.core.schema import TICKET_SECONDS


async def issue(auth: Authenticator, user: Principal) -> dict[str, Any]:
    """A ticket for `user` and its lifetime in seconds, as `POST /api/realtime/ticket` answers."""
    return {"ticket": await auth.issue_ticket(user), "expiresIn": TICKET_SECONDS}
