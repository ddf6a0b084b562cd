"""Realtime task events service: one ordered event stream over WebSocket and SSE."""

__version__ = "0.1.0"
