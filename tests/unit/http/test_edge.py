"""handlers.edge's pure parts, without sockets or a loop: the head/body timeouts it gives
Tornado (longer heads for trusted proxies' idle connections), the per-address cap on
connections without a complete first request and its bookkeeping, which peers' forwarded
headers are applied (for one request, then undone), and `apply_forwarded`'s choice of
client address and scheme. Tornado's per-connection server is replaced by a recorder; the
private Tornado names edge.py uses are checked in tests/unit/transports/test_takeover.py."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Iterator
from typing import Any, cast

import pytest
from tornado import httputil, iostream
from tornado.httpserver import _HTTPRequestContext

from handlers import edge
from handlers.edge import PROXY_IDLE_SECONDS, EdgeServer, apply_forwarded
from metrics.registry import Metrics

PROXIES = frozenset({"10.0.0.1", "10.0.0.2"})


def trusted(address: str) -> bool:
    return address in PROXIES


class FakeSocket:
    family = socket.AF_INET


class FakeStream:
    """The parts of an IOStream the edge touches: its socket's family, and `close`."""

    def __init__(self) -> None:
        self.socket: FakeSocket | None = FakeSocket()
        self.closed = False

    def close(self) -> None:
        self.closed = True


def stream() -> iostream.IOStream:
    return cast(iostream.IOStream, FakeStream())


def context(peer: str = "10.0.0.1") -> _HTTPRequestContext:
    return _HTTPRequestContext(stream(), (peer, 40000), "http")


class Served:
    """Stands in for Tornado's HTTP1ServerConnection: records what it was built with."""

    def __init__(self, stream: iostream.IOStream, params: Any, context: Any) -> None:
        self.stream, self.params, self.context = stream, params, context
        self.serving: Any = None

    def start_serving(self, delegate: Any) -> None:
        self.serving = delegate


class Recorded(httputil.HTTPMessageDelegate):
    """The application's delegate: records the calls it gets, and the address at each."""

    def __init__(self, request_conn: httputil.HTTPConnection) -> None:
        self.context = cast(_HTTPRequestContext, getattr(request_conn, "context", None))
        self.calls: list[tuple[str, str, str]] = []

    def _note(self, name: str) -> None:
        self.calls.append((name, self.context.remote_ip, self.context.protocol))

    def headers_received(
        self,
        start_line: httputil.RequestStartLine | httputil.ResponseStartLine,
        headers: httputil.HTTPHeaders,
    ) -> Awaitable[None] | None:
        self._note("headers_received")
        return None

    def data_received(self, chunk: bytes) -> Awaitable[None] | None:
        self._note("data_received")
        return None

    def finish(self) -> None:
        self._note("finish")

    def on_connection_close(self) -> None:
        self._note("on_connection_close")


class RecordingApp(httputil.HTTPServerConnectionDelegate):
    def __init__(self) -> None:
        self.started: list[Recorded] = []

    def start_request(self, server_conn: object, request_conn: httputil.HTTPConnection) -> httputil.HTTPMessageDelegate:
        delegate = Recorded(request_conn)
        self.started.append(delegate)
        return delegate


class RequestConnection(httputil.HTTPConnection):
    def __init__(self, context: _HTTPRequestContext) -> None:
        self.context = context


def make_server(*, head: float = 5.0, body: float = 30.0, cap: int = 2, metrics: Metrics | None = None) -> EdgeServer:
    return EdgeServer(
        RecordingApp(),
        trusted=trusted,
        head_timeout=head,
        body_timeout=body,
        max_pending_per_address=cap,
        metrics=metrics or Metrics(),
        max_body_size=1024,
    )


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[EdgeServer]:
    monkeypatch.setattr(edge, "HTTP1ServerConnection", Served)
    made = make_server()
    yield made
    made.stop()  # closes the acceptor's spare descriptor


def served(server: EdgeServer) -> list[Served]:
    return cast(list[Served], list(server._connections))


# -- timeouts ------------------------------------------------------------------------------------


def test_the_head_and_body_timeouts_reach_tornado() -> None:
    """Head within `head_timeout` (also between keep-alive requests), body within `body_timeout`."""
    server = make_server(head=5.0, body=30.0)
    try:
        assert server.conn_params.header_timeout == 5.0 and server.conn_params.body_timeout == 30.0
        assert server.conn_params.max_body_size == 1024
    finally:
        server.stop()


def test_trusted_proxies_keep_idle_connections_for_the_proxy_idle_time() -> None:
    """A proxy's idle upstream connection is not cut at the head timeout; all else is the same."""
    server = make_server(head=5.0)
    try:
        assert server.proxy_params.header_timeout == PROXY_IDLE_SECONDS
        assert {**vars(server.proxy_params), "header_timeout": 5.0} == vars(server.conn_params)
    finally:
        server.stop()
    longer = make_server(head=PROXY_IDLE_SECONDS + 10)
    try:
        assert longer.proxy_params.header_timeout == PROXY_IDLE_SECONDS + 10
    finally:
        longer.stop()


def test_tls_is_refused() -> None:
    with pytest.raises(ValueError, match="does not terminate TLS"):
        EdgeServer(
            RecordingApp(),
            trusted=trusted,
            head_timeout=5.0,
            body_timeout=30.0,
            max_pending_per_address=2,
            metrics=Metrics(),
            ssl_options=ssl.create_default_context(ssl.Purpose.CLIENT_AUTH),
        )


# -- the per-address cap ----------------------------------------------------------------------


def test_connections_without_a_request_are_capped_per_address(server: EdgeServer) -> None:
    """The third from one address is closed at once and counted; another address is not affected."""
    first, second, third, other = stream(), stream(), stream(), stream()
    for s in (first, second, third):
        server.handle_stream(s, ("198.51.100.7", 5000))
    server.handle_stream(other, ("198.51.100.8", 5000))
    assert cast(FakeStream, third).closed and not cast(FakeStream, first).closed
    assert server.refused == 1 and server.pending == {"198.51.100.7": 2, "198.51.100.8": 1}
    assert server.metrics.sample("realtime_connections_refused_total", reason="per_address") == 1
    assert [s.stream for s in served(server)].count(third) == 0 and len(served(server)) == 3


def test_a_complete_request_frees_the_addresses_place(server: EdgeServer) -> None:
    """`settle` (a request complete, or the connection gone) gives the place back, once."""
    first, second = stream(), stream()
    server.handle_stream(first, ("198.51.100.7", 5000))
    server.handle_stream(second, ("198.51.100.7", 5001))
    server.settle(first)
    server.settle(first)  # a second settle of the same stream changes nothing
    server.settle(None)
    assert server.pending == {"198.51.100.7": 1}
    third = stream()
    server.handle_stream(third, ("198.51.100.7", 5002))
    assert not cast(FakeStream, third).closed and server.pending == {"198.51.100.7": 2}
    server.settle(second)
    server.settle(third)
    assert server.pending == {}  # no zero entries left behind


def test_a_closed_connection_is_settled(server: EdgeServer) -> None:
    first = stream()
    server.handle_stream(first, ("198.51.100.7", 5000))
    [conn] = served(server)
    server.on_close(conn)
    assert server.pending == {} and server._connections == set()


def test_trusted_proxies_are_not_capped_and_get_the_proxy_parameters(server: EdgeServer) -> None:
    """A proxy multiplexes many clients: its connections are never pending, never refused."""
    for port in range(5):
        server.handle_stream(stream(), ("10.0.0.1", port))
    server.handle_stream(stream(), ("198.51.100.7", 1))
    assert server.pending == {"198.51.100.7": 1} and server.refused == 0
    by_peer = {s.context.remote_ip: s.params for s in served(server)}
    assert by_peer["10.0.0.1"] is server.proxy_params and by_peer["198.51.100.7"] is server.conn_params
    assert all(s.serving is server for s in served(server))


# -- forwarded headers, per request ------------------------------------------------------------

FORWARDED = httputil.HTTPHeaders({"X-Forwarded-For": "203.0.113.5", "X-Forwarded-Proto": "https"})
START = httputil.RequestStartLine("GET", "/", "HTTP/1.1")


def test_a_trusted_peers_headers_apply_for_its_request_then_are_undone(server: EdgeServer) -> None:
    peer_stream = stream()
    request_context = context("10.0.0.1")
    delegate = server.start_request(Served(peer_stream, None, request_context), RequestConnection(request_context))
    delegate.headers_received(START, FORWARDED)
    delegate.data_received(b"body")
    delegate.finish()
    [app] = cast(RecordingApp, server.request_callback).started
    assert app.calls == [
        ("headers_received", "203.0.113.5", "https"),
        ("data_received", "203.0.113.5", "https"),
        ("finish", "203.0.113.5", "https"),
    ]
    assert (request_context.remote_ip, request_context.protocol) == (
        "10.0.0.1",
        "http",
    )  # the next request starts clean


def test_a_closed_connection_undoes_the_forwarded_address(server: EdgeServer) -> None:
    request_context = context("10.0.0.1")
    delegate = server.start_request(Served(stream(), None, request_context), RequestConnection(request_context))
    delegate.headers_received(START, FORWARDED)
    delegate.on_connection_close()
    assert request_context.remote_ip == "10.0.0.1"


def test_an_untrusted_peers_forwarded_headers_are_ignored(server: EdgeServer) -> None:
    request_context = context("198.51.100.7")
    delegate = server.start_request(Served(stream(), None, request_context), RequestConnection(request_context))
    delegate.headers_received(START, FORWARDED)
    [app] = cast(RecordingApp, server.request_callback).started
    assert app.calls == [("headers_received", "198.51.100.7", "http")]


def test_finishing_a_request_settles_its_connection(server: EdgeServer) -> None:
    peer_stream = stream()
    server.handle_stream(peer_stream, ("198.51.100.7", 5000))
    [conn] = served(server)
    delegate = server.start_request(conn, RequestConnection(conn.context))
    assert server.pending == {"198.51.100.7": 1}
    delegate.finish()
    assert server.pending == {}


# -- apply_forwarded ---------------------------------------------------------------------------


def forwarded(headers: dict[str, str], peer: str = "10.0.0.1") -> tuple[str, str]:
    request_context = context(peer)
    apply_forwarded(request_context, httputil.HTTPHeaders(headers), trusted)
    return request_context.remote_ip, request_context.protocol


@pytest.mark.parametrize(
    ("headers", "address"),
    [
        ({"X-Forwarded-For": "203.0.113.5"}, "203.0.113.5"),
        # The right-most hop that is not a trusted proxy: what the client wrote on the left is not believed.
        ({"X-Forwarded-For": "192.0.2.66, 203.0.113.5, 10.0.0.2"}, "203.0.113.5"),
        ({"X-Forwarded-For": " 203.0.113.5 ,, 10.0.0.2 "}, "203.0.113.5"),
        ({"X-Forwarded-For": "10.0.0.2, 10.0.0.1"}, "10.0.0.2"),  # all proxies: the left-most
        ({"X-Forwarded-For": "2001:db8::5"}, "2001:db8::5"),
        ({"X-Real-Ip": "203.0.113.9"}, "203.0.113.9"),
        # X-Real-Ip counts only without X-Forwarded-For (the client may have sent its own).
        ({"X-Forwarded-For": "203.0.113.5", "X-Real-Ip": "192.0.2.66"}, "203.0.113.5"),
        ({"X-Forwarded-For": "not-an-address"}, "10.0.0.1"),
        ({"X-Real-Ip": "999.1.1.1"}, "10.0.0.1"),
        ({"X-Forwarded-For": ""}, "10.0.0.1"),
        ({}, "10.0.0.1"),
    ],
)
def test_the_client_address_is_the_first_untrusted_hop_from_the_right(headers: dict[str, str], address: str) -> None:
    assert forwarded(headers)[0] == address


@pytest.mark.parametrize(
    ("headers", "protocol"),
    [
        ({"X-Forwarded-Proto": "https"}, "https"),
        ({"X-Forwarded-Proto": "http, HTTPS"}, "https"),  # the last proxy's, lower-cased
        ({"X-Scheme": "https"}, "https"),
        ({"X-Forwarded-Proto": "http", "X-Scheme": "https"}, "http"),  # X-Forwarded-Proto first
        ({"X-Forwarded-Proto": "wss"}, "http"),  # not a scheme this server speaks: unchanged
        ({}, "http"),
    ],
)
def test_the_scheme_comes_from_the_last_forwarded_proto(headers: dict[str, str], protocol: str) -> None:
    assert forwarded(headers)[1] == protocol
