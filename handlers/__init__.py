"""Tornado request handlers: transports, REST API, health and docs."""
