"""The transport layer: from the socket Tornado hands over to the bytes each client gets.

`takeover` (the only module that touches Tornado internals), `session` (what WebSocket and
SSE share: bounded writes, replay and greeting), `clock` (token expiry), `frames` (RFC 6455
and permessage-deflate, pure), `protocol` (the WebSocket state machine, sans I/O), `ws` and
`sse` (one session per client), and `poll` (long-polling: a resume and a wait per request,
no session between requests).
"""
