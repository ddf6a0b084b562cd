"""The transport layer: from the socket Tornado hands over to the bytes each client gets.

`takeover` (the one module that touches Tornado internals, for itself and `handlers.edge`),
`session` (what WebSocket and SSE share: bounded writes, replay and greeting), `clock` (token
expiry), `ws` and `sse` (one session per client; the WebSocket rules themselves are
`service.protocol`'s sans-I/O `frames` and `websocket`), and `poll` (long-polling: a resume and
a wait per request, no session between requests).
"""
