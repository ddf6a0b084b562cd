"""Prometheus metrics: an injected registry object and the `/metrics` handler."""
