"""Behind a proxy that buffers streams, the dashboard still goes live, over long-polling.

The proxy is Debian's nginx configured as restrictive corporate proxies behave: HTTP/1.0 to
the upstream, no `Upgrade`/`Connection` passed (so no WebSocket), responses buffered with the
service's `X-Accel-Buffering: no` ignored (so SSE never arrives).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Page, expect

from harness.clients import wait_bound
from harness.processes import ServiceProcess, as_service, running, shared_env, wait_until
from service.storage.mongo.embedded import free_port
from tests.browser import STATUS_LOG_SCRIPT, chromium, create_task, ms, require_dashboard, screenshot, write_artifact

NGINX = "/usr/sbin/nginx"
ME = {"sub": 1, "name": "محمد حسن"}
OTHER = {"sub": 2, "name": "سارة"}

NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_http_version 1.0;
            proxy_set_header Host $http_host;
            proxy_set_header Upgrade "";
            proxy_set_header Connection "";
            proxy_buffering on;
            proxy_ignore_headers X-Accel-Buffering;
            proxy_read_timeout 60s;
        }}
    }}
}}
"""


class NginxProcess:
    """nginx in the foreground with its own prefix, config and logs in a temp directory."""

    def __init__(self, prefix: Path, upstream: int) -> None:
        self.prefix = prefix
        self.port = free_port()
        prefix.mkdir(parents=True, exist_ok=True)
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(NGINX_CONF.format(prefix=prefix, port=self.port, upstream=upstream), encoding="utf-8")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> NginxProcess:
        self.process = subprocess.Popen(
            [NGINX, "-p", str(self.prefix), "-c", str(self.conf), "-e", str(self.prefix / "error.log")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ready, 20, f"nginx on port {self.port}")
        return self

    def ready(self) -> bool:
        assert self.process is not None
        assert self.process.poll() is None, (self.prefix / "error.log").read_text(errors="replace")
        try:
            with urllib.request.urlopen(self.url + "/healthz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                self.process.wait(wait_bound(10))
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def service(tmp_path: Path, mongo_uri: str) -> Iterator[ServiceProcess]:
    env = {**shared_env(mongo_uri), "POLL_TIMEOUT_SECONDS": "25"}
    with running(tmp_path / "service", env) as process:
        yield process


@pytest.fixture
def proxy(tmp_path: Path, service: ServiceProcess) -> Iterator[NginxProcess]:
    assert Path(NGINX).is_file(), f"{NGINX} is missing: run `make system-deps` (apt-get install nginx-light)"
    nginx = NginxProcess(tmp_path / "nginx", service.port).start()
    yield nginx
    nginx.stop()


def token(process: ServiceProcess, user: dict[str, Any]) -> str:
    return as_service(process).token(sub=user["sub"], name=user["name"])


def test_the_proxy_holds_a_server_sent_event_stream_back(service: ServiceProcess, proxy: NginxProcess) -> None:
    """The setting is hostile as intended: through it, an SSE stream yields not a byte, not even its head."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=wait_bound(5)) as sock:
        head = f"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token(service, ME)}\r\n\r\n"
        sock.sendall(head.encode())
        sock.settimeout(2.0)  # `connected` is written at once upstream; 2 s is plenty to pass a byte
        with pytest.raises(TimeoutError):
            sock.recv(1)


def test_a_poll_through_the_proxy_answers_complete_json(service: ServiceProcess, proxy: NginxProcess) -> None:
    """`/poll` passes the buffering proxy: `connected` at once, with `no-store`."""
    request = urllib.request.Request(proxy.url + "/poll", headers={"Authorization": f"Bearer {token(service, ME)}"})
    with urllib.request.urlopen(request, timeout=wait_bound(10)) as response:
        assert response.headers["Cache-Control"] == "no-store"
        body = json.loads(response.read())
    assert body["messages"][0]["type"] == "connected" and body["messages"][0]["transport"] == "poll"


@pytest.mark.timeout(120)
def test_dashboard_behind_the_buffering_proxy_goes_live_over_long_polling(
    tmp_path: Path, service: ServiceProcess, proxy: NginxProcess
) -> None:
    """WebSocket refused, SSE silent: the page reaches connected via long-polling and a task another
    user creates shows without a reload."""
    require_dashboard()
    with chromium(tmp_path / "profile") as context:
        page: Page = context.pages[0] if context.pages else context.new_page()
        page.add_init_script(STATUS_LOG_SCRIPT)
        started = time.time()
        page.goto(f"{proxy.url}/?token={token(service, ME)}")
        status = page.locator("[role=status]")
        expect(status).to_have_attribute("data-status", "connected", timeout=ms(30))
        expect(status).to_have_attribute("data-transport", "poll")
        expect(status).to_contain_text("long-polling")
        log = page.evaluate("window.__statusLog")
        connected_at = next(entry["at"] for entry in log if entry["status"] == "connected") / 1000
        navigation_start = page.evaluate("performance.timeOrigin") / 1000

        requested = time.time()
        task = create_task(proxy.url, token(service, OTHER), "مهمة عبر الوكيل")
        row = page.locator(f'[data-task-id="{task["id"]}"]')
        expect(row).to_contain_text("مهمة عبر الوكيل", timeout=ms(5))
        shown = time.time()
        screenshot(page, "dashboard-behind-buffering-proxy")
        write_artifact(
            "poll-proxy.json",
            {
                "seconds_to_connected_from_navigation": round(connected_at - navigation_start, 3),
                "seconds_to_connected_from_goto": round(connected_at - started, 3),
                "task_seconds_from_create_request_to_shown": round(shown - requested, 3),
                "status_log": log,
            },
        )
