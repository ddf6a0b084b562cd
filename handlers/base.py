"""What every handler shares: dependencies, credentials, JSON bodies and JSON errors."""

from __future__ import annotations

import json
import logging
import time
from http.client import responses
from typing import Any

from tornado import httputil
from tornado.web import HTTPError, OutputTransform, RequestHandler, stream_request_body

from metrics.logs import RedactedLogging
from service.app.context import AppContext
from service.app.idempotency import HEADER, Answer, Change, KeyInUse, KeyReused, commit_once, fingerprint, parse_key
from service.core.errors import AuthError, BadMessage, Forbidden, NotFound, ServiceError, StoreFull, StoreUnavailable
from service.core.identity import Credentials, Principal
from service.core.schema import MAX_BODY_BYTES
from service.protocol.wire import loads

log = logging.getLogger(__name__)

SAFE_METHODS = ("GET", "HEAD", "OPTIONS")
# On every response (API, dashboard, errors, SSE heads): no MIME sniffing, no framing, no
# Referer carrying a URL out; pages that need more (the dashboard) set their own CSP.
SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}
DEFAULT_CSP = "default-src 'none'; frame-ancestors 'none'"


class SecurityHeaders(OutputTransform):
    """Applied by the Application to the head of every response of every handler: adds
    `SECURITY_HEADERS` and drops Tornado's `Server: TornadoServer/<version>`."""

    def transform_first_chunk(
        self, status_code: int, headers: httputil.HTTPHeaders, chunk: bytes, finishing: bool
    ) -> tuple[int, httputil.HTTPHeaders, bytes]:
        if "Server" in headers:
            del headers["Server"]
        for name, value in SECURITY_HEADERS.items():
            headers[name] = value
        if "Content-Security-Policy" not in headers:
            headers["Content-Security-Policy"] = DEFAULT_CSP
        return status_code, headers, chunk


def credentials_of(request: httputil.HTTPServerRequest) -> Credentials:
    """Every place a request may carry a token or ticket (auth.Authenticator picks one)."""

    def query(name: str) -> str | None:
        values = request.query_arguments.get(name)
        return values[-1].decode("utf-8", "replace") if values else None

    cookie = request.cookies.get("access_token")
    return Credentials(
        authorization=request.headers.get("Authorization"),
        cookie=cookie.value if cookie is not None else None,
        ticket=query("ticket"),
        token=query("token"),
    )


class BaseHandler(RedactedLogging):
    """JSON in, JSON out, errors as `{"error": ..., ...}` with the right status."""

    ctx: AppContext
    transport_label = "http"  # the auth-failure metric's `transport` for plain HTTP

    def initialize(self, ctx: AppContext) -> None:
        self.ctx = ctx
        self.set_cors_headers()

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.set_header("X-Content-Type-Options", "nosniff")
        self.set_header("Cache-Control", "no-store")
        # Tornado calls this from __init__, before `initialize` gives us the settings; it
        # calls it again when an error resets the headers, and then they are needed.
        if hasattr(self, "ctx"):
            self.set_cors_headers()

    def origin_allowed(self, origin: str | None) -> bool:
        """Whether a browser `Origin` may use this request: listed, or the request's own
        scheme, host and port (`https://host` is not the origin of `http://host`)."""
        request = self.request
        return self.ctx.settings.origin_allowed(origin, request.host, request.protocol)

    def set_cors_headers(self) -> None:
        """Let an allowed browser origin read the response."""
        origin = self.request.headers.get("Origin")
        if origin and self.origin_allowed(origin):
            self.set_header("Access-Control-Allow-Origin", origin)
            self.set_header("Access-Control-Allow-Credentials", "true")
            self.set_header("Vary", "Origin")

    def options(self, *args: str) -> None:
        """CORS preflight."""
        self.set_header("Access-Control-Allow-Methods", "GET, POST, PATCH, DELETE, OPTIONS")
        self.set_header("Access-Control-Allow-Headers", "Authorization, Content-Type, Last-Event-ID, Idempotency-Key")
        self.set_header("Access-Control-Max-Age", "600")
        self.set_status(204)

    async def principal(self, role: str = "user") -> Principal:
        """Authenticate the request and check a role.

        Raises:
            AuthError: 401; Forbidden: 403.
        """
        credentials = credentials_of(self.request)
        try:
            principal = await self.ctx.auth.authenticate(credentials)
        except AuthError as exc:
            self.ctx.metrics.auth_failures.labels(self.transport_label, exc.reason).inc()
            raise
        if credentials.authorization is None and credentials.cookie and self.request.method not in SAFE_METHODS:
            # A cookie rides along on any site's form post: only allowed origins may change things with it.
            origin = self.request.headers.get("Origin")
            if origin is not None and not self.origin_allowed(origin):
                raise Forbidden("cross-origin request authenticated by cookie")
        if not principal.has_role(role):
            raise Forbidden(f"requires role {role!r}")
        return principal

    def write_json(self, payload: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(json.dumps(payload, ensure_ascii=False, separators=(",", ":")))

    def reject(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        """Answer with an error and extra headers (`send_error` would reset the headers)."""
        for name, value in (headers or {}).items():
            self.set_header(name, value)
        self.write_json({"error": _error_name(status), "message": message}, status)

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        body: dict[str, Any]
        if isinstance(exc, Forbidden):
            status_code, body = 403, {"error": "forbidden", "reason": exc.reason}
        elif isinstance(exc, AuthError):
            status_code, body = 401, {"error": "unauthorized", "reason": exc.reason}
            self.set_header("WWW-Authenticate", 'Bearer realm="realtime"')
        elif isinstance(exc, BadMessage):
            status_code, body = 400, {"error": "invalid", "message": exc.message, "fields": exc.fields}
        elif isinstance(exc, NotFound):
            status_code, body = 404, {"error": "not_found", "message": f"no {exc}"}
        elif isinstance(exc, StoreUnavailable):
            full = isinstance(exc, StoreFull) or self.ctx.disk_full()
            reason = "database disk full" if full else "database unavailable, retry later"
            status_code, body = 503, {"error": "unavailable", "reason": reason}
            self.set_header("Retry-After", "5" if full else "2")
        elif isinstance(exc, HTTPError) and exc.log_message and status_code < 500:
            body = {"error": _error_name(status_code), "message": exc.log_message}
        else:
            body = {"error": _error_name(status_code)}
        if status_code == 405:
            self.set_header("Allow", ", ".join(self.allowed_methods()))
        self.set_status(status_code)
        self.set_header("Content-Type", "application/json; charset=utf-8")
        self.finish(json.dumps(body, ensure_ascii=False))

    @classmethod
    def allowed_methods(cls) -> list[str]:
        """The methods this handler implements (the `Allow` header of a 405)."""
        return [m for m in cls.SUPPORTED_METHODS if getattr(cls, m.lower()) is not getattr(RequestHandler, m.lower())]

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, StoreUnavailable):
            log.warning("%s %s: %s", self.request.method, self.request.path, value)
        elif not isinstance(value, ServiceError):  # expected client errors are not logged as errors
            super().log_exception(typ, value, tb)


@stream_request_body
class ApiHandler(BaseHandler):
    """A REST handler: bodies are read with a 1 MiB cap, answered 413 beyond it."""

    def prepare(self) -> None:
        self._body = bytearray()
        self._too_large = False
        length = self.request.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY_BYTES:
            self._too_large = True
            raise HTTPError(413, "request body over 1 MiB")

    def data_received(self, chunk: bytes) -> None:
        if self._too_large or len(self._body) + len(chunk) > MAX_BODY_BYTES:
            self._too_large = True
            self._body.clear()
            return
        self._body.extend(chunk)

    async def commit(self, user: Principal, change: Change, *, single_write: bool = False) -> None:
        """Run a use case's change (which writes its one event) in one unit of work, once per
        `Idempotency-Key`, and send its answer (the first one again for a retried request),
        within MONGODB_TIMEOUT_MS. `single_write`: see `commit_once`."""
        deadline = time.monotonic() + self.ctx.unit_of_work.timeout_seconds
        key = parse_key(self.request.headers.get(HEADER))
        same = fingerprint(self.request.method or "", self.request.path, bytes(self._body))
        lifecycle = self.ctx.lifecycle
        if lifecycle.stopping:  # nothing claimed or changed: the retry goes to another process
            self.set_header("Connection", "close")
            self.reject(503, "this process is stopping; retry", {"Retry-After": "1"})
            return
        try:
            with lifecycle.write():
                answer = await commit_once(
                    self.ctx.unit_of_work,
                    change,
                    key=key,
                    user_id=user.user_id,
                    fingerprint=same,
                    deadline=deadline,
                    single_write=single_write,
                )
        except KeyInUse as exc:
            self.reject(409, str(exc), {"Retry-After": "1"})
            return
        except KeyReused as exc:
            self.reject(422, str(exc))
            return
        self.send_answer(answer)

    def send_answer(self, answer: Answer) -> None:
        self.set_status(answer.status)
        if answer.location:
            self.set_header("Location", answer.location)
        if answer.replayed:
            self.set_header("Idempotent-Replayed", "true")
        self.finish(answer.body)

    def json_body(self) -> dict[str, Any]:
        """The request body as a JSON object.

        Raises:
            HTTPError: 413 over the cap, 415 for a declared charset other than UTF-8;
                BadMessage: not UTF-8, a lone surrogate (naming the field), not a JSON object.
        """
        if self._too_large:
            raise HTTPError(413, "request body over 1 MiB")
        charset = declared_charset(self.request.headers.get("Content-Type", ""))
        if charset is not None and charset not in ("utf-8", "utf8"):
            raise HTTPError(415, f"request bodies are UTF-8 JSON; charset={charset[:32]} is not accepted")
        try:
            body = loads(bytes(self._body) or b"null")
        except ValueError as exc:
            raise BadMessage("body is not valid JSON", {"body": str(exc)[:200]}) from None
        if not isinstance(body, dict):
            raise BadMessage("body must be a JSON object", {"body": "must be a JSON object"})
        return body


def declared_charset(content_type: str) -> str | None:
    """The `charset` parameter of a Content-Type, lowercased and unquoted, or None."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').lower()
    return None


def _error_name(status: int) -> str:
    """`Service Unavailable` → `service_unavailable`."""
    return responses.get(status, "error").lower().replace(" ", "_")


def path_id(raw: str) -> int:
    """An integer id from the URL; anything else names nothing (404)."""
    if not (raw.isascii() and raw.isdigit()) or len(raw) > 15:
        raise NotFound(f"resource {raw[:32]!r}")
    return int(raw)
