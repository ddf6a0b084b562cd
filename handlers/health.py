"""`/healthz` (the process answers) and `/readyz` (MongoDB answers and takes writes, change stream, not draining)."""

from __future__ import annotations

from handlers.base import BaseHandler


class LivenessHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadinessHandler(BaseHandler):
    async def get(self) -> None:
        ctx = self.ctx
        mongodb = await ctx.readiness.check()  # bounded; concurrent probes share one check
        checks = {
            "mongodb": mongodb.reachable,
            "writes": mongodb.writes,
            "changeStream": ctx.bus.running,
            "draining": ctx.lifecycle.draining,
        }
        ready = mongodb.reachable and mongodb.writes and ctx.bus.running and not ctx.lifecycle.draining
        self.write_json(
            {"status": "ready" if ready else "not ready", **checks, "connections": len(ctx.hub)},
            200 if ready else 503,
        )
