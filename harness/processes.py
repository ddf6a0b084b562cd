"""Service processes started by tests (`python -m service`), always stopped by pid."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from harness.clients import Condition, Service, wait_bound
from service.core.config import Settings
from service.storage.mongo.embedded import free_port

ROOT = Path(__file__).resolve().parent.parent
SECRET = "scaling-test-secret-0123456789-0123456789-abcdef"


def shared_env(mongo_uri: str) -> dict[str, str]:
    return {
        "MONGODB_URI": mongo_uri,
        "MONGODB_DB": f"scale_{uuid.uuid4().hex[:10]}",
        "JWT_SECRET": SECRET,
        "DEV_MODE": "0",
        "ALLOWED_ORIGINS": "*",
    }


def as_service(process: ServiceProcess) -> Service:
    """Test helpers (clients, tokens) for a service running in another process."""

    class Remote:
        port = process.port

    return Service(server=Remote(), settings=Settings(jwt_secret=SECRET, jwt_algorithms=("HS256",)))


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it has stopped running all the same.
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ", 1)[1][0] != "Z"
    except OSError:
        return False


def children_of(pid: int) -> list[int]:
    """Direct child pids (from /proc), whichever thread started them (the embedded MongoDB's
    watchdog restarts it from its own thread)."""
    children: list[int] = []
    for task in sorted(Path(f"/proc/{pid}/task").glob("*")):
        try:
            children += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return children


def wait_until(condition: Condition, seconds: float, what: str) -> None:
    deadline = time.monotonic() + wait_bound(seconds)
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


class ServiceProcess:
    """`python -m service` in a child process with its own environment and log file."""

    def __init__(
        self,
        data_dir: Path,
        env: dict[str, str] | None = None,
        port: int | None = None,
        *,
        code: Path = ROOT,
        open_files: int | None = None,
    ) -> None:
        self.code = code  # the checkout whose service runs (bench/ compares against older ones)
        self.open_files = open_files  # the child's RLIMIT_NOFILE (soft), as `ulimit -n` would set it
        self.port = port or free_port()
        self.data_dir = data_dir
        self.log_path = data_dir / f"service-{self.port}.log"
        self.env = {
            **{k: v for k, v in os.environ.items() if not k.startswith(("JWT_", "MONGODB_", "WORKERS", "PROMETHEUS_"))},
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "DATA_DIR": str(data_dir),
            "DRAIN_SECONDS": "0",
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, *, wait: bool = True) -> ServiceProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=self.code,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=None if self.open_files is None else self._limit_open_files,
        )
        log.close()
        if wait:
            self.wait_ready()
        return self

    def _limit_open_files(self) -> None:
        """In the child, before exec: lower the soft open-file limit (lowering needs no privilege)."""
        assert self.open_files is not None  # only installed when set
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (self.open_files, hard))

    def cpu_seconds(self) -> float:
        """User plus system CPU time the process has used so far (from /proc)."""
        fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(") ", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def open_descriptors(self) -> int:
        """How many file descriptors the process holds now (from /proc)."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/readyz", timeout=1) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def wait_ready(self, seconds: float = 60) -> None:
        def up() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"service exited with {self.process.returncode}:\n{self.output()}")
            return self.ready()

        wait_until(up, seconds, f"service on port {self.port}")

    def output(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, seconds: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(wait_bound(seconds))

    def stop(self) -> int | None:
        """SIGTERM and wait; SIGKILL the whole group if it hangs."""
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.signal(signal.SIGTERM)
        try:
            return self.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


@contextmanager
def running(data_dir: Path, env: dict[str, str] | None = None, port: int | None = None) -> Iterator[ServiceProcess]:
    service = ServiceProcess(data_dir, env, port).start()
    try:
        yield service
    finally:
        service.stop()


def prometheus_binary() -> str:
    """Debian's `prometheus` server (`make system-deps` installs it)."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None)
    if found is None:
        raise FileNotFoundError("prometheus not found: install the Debian package `prometheus` (make system-deps)")
    return found


class PrometheusProcess:
    """A Prometheus server on a free loopback port scraping one target every second; stopped by pid."""

    def __init__(self, workdir: Path, target: str, rule_files: tuple[Path, ...] = ()) -> None:
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / "prometheus.log"
        config = {
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(path) for path in rule_files],
            "scrape_configs": [{"job_name": "realtime", "static_configs": [{"targets": [target]}]}],
        }
        self.config_path = workdir / "prometheus.yml"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(json.dumps(config))  # JSON is YAML
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [
                    prometheus_binary(),
                    f"--config.file={self.config_path}",
                    f"--storage.tsdb.path={self.workdir / 'data'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                    "--log.level=warn",
                ],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def stop(self) -> None:
        """SIGTERM by pid and wait; SIGKILL if it does not stop."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(wait_bound(30))
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
