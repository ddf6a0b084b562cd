"""The HTTP server at the edge: how long a client may take to send a request, how many
connections one address may hold open without having sent a complete one, accepting that
survives running out of file descriptors (handlers/accept.py), and whose
`X-Forwarded-For` / `X-Real-Ip` / `X-Forwarded-Proto` are believed (TRUSTED_PROXIES only).

Besides Tornado's public server hooks (`add_sockets`, `stop`, `handle_stream`, `start_request`,
`on_close`) it uses two private names, reached through `service.transports.takeover` (the one
module that touches Tornado's internals, checked by tests/unit/transports/test_takeover.py).
"""

from __future__ import annotations

import logging
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from tornado import httputil, iostream, netutil
from tornado.http1connection import HTTP1ConnectionParameters, HTTP1ServerConnection
from tornado.httpserver import HTTPServer

from handlers.accept import Acceptor
from metrics.registry import Metrics
from service.transports.takeover import RequestContext, register_connection

log = logging.getLogger(__name__)

# A proxy keeps idle upstream connections for reuse (ingress-nginx: 60 s); closing them
# sooner races its next request, so trusted proxies get Tornado's former idle timeout.
PROXY_IDLE_SECONDS = 75.0


class EdgeServer(HTTPServer):
    """Tornado's HTTPServer, plus:

    - a request head must arrive within `head_timeout` seconds (also between keep-alive
      requests); its body within `body_timeout` seconds of the head;
    - at most `max_pending_per_address` connections per client address that have not yet
      sent a complete first request, head and body (slowloris, slow bodies); more are
      closed at accept;
    - accept errors (out of descriptors, buffers) back off instead of spinning: `Acceptor`;
    - forwarded-for headers applied only for peers `trusted` names (never for anyone else).
    """

    def initialize(  # type: ignore[override]
        self,
        request_callback: httputil.HTTPServerConnectionDelegate,
        *,
        trusted: Callable[[str], bool],
        head_timeout: float,
        body_timeout: float,
        max_pending_per_address: int,
        metrics: Metrics,
        **kwargs: Any,
    ) -> None:
        super().initialize(request_callback, idle_connection_timeout=head_timeout, body_timeout=body_timeout, **kwargs)
        if self.ssl_options is not None:
            raise ValueError("EdgeServer does not terminate TLS (a proxy in front of it does)")
        self.trusted = trusted
        self.max_pending_per_address = max_pending_per_address
        self.metrics = metrics
        self.acceptor = Acceptor(
            self._accepted,
            on_error=lambda reason: metrics.accept_errors.labels(reason).inc(),
            on_shed=lambda reason: metrics.connections_refused.labels(reason).inc(),
        )
        self.proxy_params = HTTP1ConnectionParameters(
            **{**vars(self.conn_params), "header_timeout": max(head_timeout, PROXY_IDLE_SECONDS)}
        )
        self.pending: Counter[str] = Counter()  # address -> connections without a complete first request
        self._pending_streams: dict[iostream.IOStream, str] = {}
        self.refused = 0

    def add_sockets(self, sockets: Iterable[socket.socket]) -> None:
        """Accept on these listening sockets through `Acceptor` (Tornado's loop would spin)."""
        for sock in sockets:
            self.acceptor.add(sock)

    def stop(self) -> None:
        self.acceptor.close()
        super().stop()  # holds none of the sockets, marks the server stopped

    def _accepted(self, connection: socket.socket, address: Any) -> None:
        size, chunk = self.max_buffer_size, self.read_chunk_size
        stream = iostream.IOStream(connection, max_buffer_size=size, read_chunk_size=chunk)
        self.handle_stream(stream, address)

    def handle_stream(self, stream: iostream.IOStream, address: tuple[Any, ...]) -> None:
        ip = str(address[0]) if isinstance(address, tuple) and address else ""
        trusted = self.trusted(ip)
        if not trusted:
            if self.pending[ip] >= self.max_pending_per_address:
                self.refused += 1
                self.metrics.connections_refused.labels("per_address").inc()
                log.debug("closed a connection from %s: %d already without a request", ip, self.pending[ip])
                stream.close()
                return
            self.pending[ip] += 1
            self._pending_streams[stream] = ip
        context = RequestContext(stream, address, self.protocol)
        conn = HTTP1ServerConnection(stream, self.proxy_params if trusted else self.conn_params, context)
        register_connection(self, conn)
        conn.start_serving(self)

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = super().start_request(server_conn, request_conn)
        stream = getattr(server_conn, "stream", None)
        context = getattr(request_conn, "context", None)
        trusted = isinstance(context, RequestContext) and self.trusted(context.remote_ip)
        return _EdgeDelegate(self, delegate, stream, context if trusted else None)

    def on_close(self, server_conn: object) -> None:
        super().on_close(server_conn)
        self.settle(getattr(server_conn, "stream", None))

    def settle(self, stream: iostream.IOStream | None) -> None:
        """The connection sent a complete request (or went away): no longer pending."""
        ip = self._pending_streams.pop(stream, None) if stream is not None else None
        if ip is not None:
            self.pending[ip] -= 1
            if self.pending[ip] <= 0:
                del self.pending[ip]


class _EdgeDelegate(httputil.HTTPMessageDelegate):
    """Marks the connection settled once its request is complete, body included; applies a
    trusted proxy's forwarded headers for this request only."""

    def __init__(
        self,
        server: EdgeServer,
        delegate: httputil.HTTPMessageDelegate,
        stream: iostream.IOStream | None,
        proxy_context: RequestContext | None,
    ) -> None:
        self.server = server
        self.delegate = delegate
        self.stream = stream
        self.context = proxy_context
        self.saved = (proxy_context.remote_ip, proxy_context.protocol) if proxy_context else None

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        if self.context is not None:
            apply_forwarded(self.context, headers, self.server.trusted)
        return self.delegate.headers_received(start_line, headers)

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        return self.delegate.data_received(chunk)

    def finish(self) -> None:
        self.server.settle(self.stream)
        self.delegate.finish()
        self._restore()

    def on_connection_close(self) -> None:
        self.delegate.on_connection_close()
        self._restore()

    def _restore(self) -> None:
        if self.context is not None and self.saved is not None:
            self.context.remote_ip, self.context.protocol = self.saved


def apply_forwarded(context: RequestContext, headers: httputil.HTTPHeaders, trusted: Callable[[str], bool]) -> None:
    """Take the client address and scheme from a trusted proxy's headers.

    The client is the right-most `X-Forwarded-For` hop that is not itself a trusted proxy
    (hops further left were written by whoever the client is, so they prove nothing).
    `X-Real-Ip` counts only without `X-Forwarded-For`: a proxy that appends to the one
    may pass the client's own copy of the other through unchanged.
    """
    hops = [h.strip() for h in headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    ip = context.remote_ip if hops else headers.get("X-Real-Ip", context.remote_ip).strip()
    for hop in reversed(hops):
        ip = hop
        if not trusted(hop):
            break
    if netutil.is_valid_ip(ip):
        context.remote_ip = ip
    proto = headers.get("X-Forwarded-Proto") or headers.get("X-Scheme")
    if proto:
        proto = proto.split(",")[-1].strip().lower()
        if proto in ("http", "https"):
            context.protocol = proto
