"""`/healthz` (the process answers and has not given up on its embedded database) and `/readyz`
(MongoDB answers and takes writes, change stream, not draining)."""

from __future__ import annotations

from handlers.base import BaseHandler


class LivenessHandler(BaseHandler):
    def get(self) -> None:
        # No MongoDB round trip: an outage of an external MongoDB must not get pods restarted
        # (that is /readyz's business); only a database this process gave up on fails it.
        broken = self.ctx.lifecycle.broken
        if broken is not None:
            self.write_json({"status": "broken", "reason": broken}, 503)
            return
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
