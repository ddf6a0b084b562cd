"""What the tests and the benchmarks share: service and Prometheus processes started and
stopped by pid, real WebSocket/SSE clients, and attack corpora. Never imported by the service.
"""
