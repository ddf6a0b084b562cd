"""`GET /api/openapi.json`: the OpenAPI 3.1 document that `handlers.openapi_document` generates."""

from __future__ import annotations

from handlers.base import BaseHandler
from handlers.openapi_document import openapi_document


class OpenApiHandler(BaseHandler):
    def get(self) -> None:
        self.write_json(openapi_document())
