"""`/healthz` (the process answers) and `/readyz` (MongoDB, change stream, not draining)."""

from __future__ import annotations

from handlers.base import BaseHandler


class LivenessHandler(BaseHandler):
    def get(self) -> None:
        self.write_json({"status": "ok"})


class ReadinessHandler(BaseHandler):
    async def get(self) -> None:
        ctx = self.ctx
        checks = {
            "mongodb": await ctx.store.ping(),
            "changeStream": ctx.bus.running,
            "draining": ctx.lifecycle.draining,
        }
        ready = checks["mongodb"] and checks["changeStream"] and not checks["draining"]
        self.write_json(
            {"status": "ready" if ready else "not ready", **checks, "connections": len(ctx.hub)},
            200 if ready else 503,
        )
