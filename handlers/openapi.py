"""`GET /api/openapi.json`: the OpenAPI 3.1 document (`handlers.openapi_document`), passed in by the route table."""

from __future__ import annotations

from typing import Any

from handlers.base import BaseHandler
from service.app.context import AppContext


class OpenApiHandler(BaseHandler):
    def initialize(self, ctx: AppContext, document: dict[str, Any] | None = None) -> None:
        """`document` is required; optional only in signature, as Tornado's `initialize` overrides are."""
        if document is None:
            raise TypeError("OpenApiHandler needs the document: handlers.routes.make_app passes it")
        super().initialize(ctx)
        self.document = document

    def get(self) -> None:
        self.write_json(self.document)
