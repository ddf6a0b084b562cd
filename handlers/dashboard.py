"""The dashboard's files: a page that may talk only to its own origin or the one
DASHBOARD_SERVICE_URL names (CSP `connect-src`, and a `<meta>` the page reads), and a
static file handler that answers 4xx, never 500, for any path a client can send.
"""

from __future__ import annotations

import html
from pathlib import Path
from urllib.parse import urlsplit

from tornado.web import HTTPError, StaticFileHandler

from metrics.logs import RedactedLogging
from service.core.config import Settings

SERVICE_URL_META = "realtime-service-url"


def service_origins(url: str | None) -> list[str]:
    """The origins (http and ws forms) a configured service URL is reached at."""
    if not url:
        return []
    parts = urlsplit(url)
    secure = parts.scheme in ("https", "wss")
    host = parts.netloc
    return [f"{'https' if secure else 'http'}://{host}", f"{'wss' if secure else 'ws'}://{host}"]


def dashboard_csp(settings: Settings) -> str:
    """Scripts, styles and connections from this origin (and the configured service) only."""
    connect = " ".join(["'self'", *service_origins(settings.dashboard_service_url)])
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src {connect}; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    )


def index_page(web_dir: Path, settings: Settings) -> bytes:
    """index.html, with the configured service URL in a `<meta>` when there is one."""
    page = (web_dir / "index.html").read_text(encoding="utf-8")
    if settings.dashboard_service_url:
        meta = f'<meta name="{SERVICE_URL_META}" content="{html.escape(settings.dashboard_service_url)}" />'
        page = page.replace("<head>", f"<head>\n    {meta}", 1)
    return page.encode("utf-8")


class DashboardHandler(RedactedLogging, StaticFileHandler):
    """The built dashboard. Its file names do not change between builds, so browsers must
    revalidate (cheap: ETag) or a new page could run an old script."""

    def initialize(self, path: str, settings: Settings, default_filename: str | None = None) -> None:  # type: ignore[override]
        super().initialize(path, default_filename)
        self.service_settings = settings

    def set_extra_headers(self, path: str) -> None:
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", dashboard_csp(self.service_settings))

    def validate_absolute_path(self, root: str, absolute_path: str) -> str | None:
        # A NUL (`%00`) or a name the OS refuses raised ValueError/OSError: a 500 with a traceback.
        if "\x00" in absolute_path:
            raise HTTPError(400, "bad path")
        try:
            return super().validate_absolute_path(root, absolute_path)
        except (ValueError, OSError):
            raise HTTPError(404) from None


class DashboardIndexHandler(RedactedLogging):
    """`/` and `/index.html`: the page, rendered with the service configuration."""

    def initialize(self, web_dir: Path, settings: Settings) -> None:
        self.web_dir = web_dir
        self.service_settings = settings

    def get(self) -> None:
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Cache-Control", "no-cache")
        self.set_header("Content-Security-Policy", dashboard_csp(self.service_settings))
        self.finish(index_page(self.web_dir, self.service_settings))

    head = get


class NoDashboardHandler(RedactedLogging):
    def initialize(self, settings: Settings) -> None:
        self.service_settings = settings

    def get(self, path: str) -> None:
        self.set_status(404 if path else 200)
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.set_header("Content-Security-Policy", dashboard_csp(self.service_settings))
        self.finish(
            "<!doctype html><meta charset=utf-8><title>Realtime</title>"
            "<p>The dashboard is not built. Run <code>make web</code> (needs Node.js 20), then reload.</p>"
            "<p>The API is at <a href=/api/openapi.json>/api/openapi.json</a>.</p>"
        )
