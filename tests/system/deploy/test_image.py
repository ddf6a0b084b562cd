"""The container image, built and run as Kubernetes would run it (`make test-image`).

hadolint, kustomize and the schemas only read files. What shows at run time alone is checked
here: a file missing from the image, a write to the read-only root filesystem, the non-root
user unable to use DATA_DIR, the entrypoint, the HEALTHCHECK, `WORKERS=0` under a CPU limit,
the embedded MongoDB inside the container, and the drain on SIGTERM.

The image is built by scripts/image.sh (docker or podman; local Debian bases when no registry
answers). Each run reads the pod from `kubectl kustomize k8s/base` and starts the container
with its settings: the ConfigMap's environment, the container port, the merged
securityContext (uid/gid, read-only root, no privilege escalation, no capabilities), every
emptyDir mount, the resource limits (as --cpus and --memory) and the probes' paths and port.
The test plays kubelet: it polls the probes, runs the preStop command, sends SIGTERM and
allows terminationGracePeriodSeconds for the exit.

Figures (image size, build time, start-to-ready, SIGTERM-to-exit) are written to
test-artifacts/image.json and printed; nothing asserts on them.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from harness.clients import Service
from harness.processes import SECRET, as_service, running, shared_env, wait_until
from service.core.config import usable_cpus
from service.storage.mongo.embedded import free_port
from tests.system.deploy.test_k8s import one, realtime_container, realtime_pod, render

ROOT = Path(__file__).resolve().parents[3]
ARTIFACT = ROOT / "test-artifacts" / "image.json"
# Where a container reaches the host's loopback: podman's slirp4netns with allow_host_loopback.
PODMAN_HOST_LOOPBACK = "10.0.2.2"
# Paths the engine itself creates or mounts in every container (hosts, resolv.conf, hostname).
ENGINE_PATHS = {"/etc", "/etc/hosts", "/etc/hostname", "/etc/resolv.conf", "/run", "/run/.containerenv"}
BUILD_SECONDS = 1200  # a cold build makes the Debian bases and downloads every wheel

pytestmark = pytest.mark.timeout(BUILD_SECONDS + 300)

figures: dict[str, Any] = {}


def record(**values: Any) -> None:
    """Keep a figure for test-artifacts/image.json and print it (no assertion on it)."""
    figures.update(values)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, indent=2) + "\n")
    for name, value in values.items():
        print(f"image: {name} = {value}")


# --- the engine -----------------------------------------------------------------------------


def detect_engine() -> str | None:
    result = subprocess.run(
        [str(ROOT / "scripts" / "image.sh"), "--engine"], capture_output=True, text=True, timeout=60, check=False
    )
    return result.stdout.strip() or None


class Engine:
    """docker or podman, with the flags this kind of host needs."""

    def __init__(self, name: str) -> None:
        self.name = name
        # crun fails on hybrid cgroup v1 hosts; podman would raise rlimits to values refused here.
        self.global_args = ["--runtime", "runc"] if name == "podman" and shutil.which("runc") else []
        self.run_args = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"] if name == "podman" else []

    def __call__(self, *args: str, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.name, *self.global_args, *args], capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{self.name} {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
        return result

    def inspect_image(self, tag: str) -> dict[str, Any]:
        [data] = json.loads(self("image", "inspect", tag).stdout)
        return data  # type: ignore[no-any-return]

    def healthcheck_test(self, tag: str) -> list[str]:
        data = self.inspect_image(tag)
        check = data.get("Healthcheck") or data.get("Config", {}).get("Healthcheck") or {}
        return list(check.get("Test", []))


@pytest.fixture(scope="module")
def engine() -> Engine:
    name = detect_engine()
    if name is None:
        message = "image test: neither docker (with a daemon) nor podman can run here: SKIPPED, not passed"
        print(message)
        pytest.skip(message)
    return Engine(name)


@pytest.fixture(scope="module")
def image(engine: Engine) -> Iterator[str]:
    """The image, built by scripts/image.sh under a tag of its own; removed afterwards.

    Its parent layers stay (`--no-prune`): they are the build cache the next build reuses.
    """
    tag = f"localhost/realtime-test:{uuid.uuid4().hex[:10]}"
    started = time.monotonic()
    result = subprocess.run(
        [str(ROOT / "scripts" / "image.sh"), tag],
        capture_output=True,
        text=True,
        timeout=BUILD_SECONDS,
        check=False,
        env={**os.environ, "ENGINE": engine.name},
    )
    assert result.returncode == 0, f"image build failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    record(engine=engine.name, build_seconds=round(time.monotonic() - started, 1))
    try:
        yield tag
    finally:
        engine("rmi", "--no-prune", tag, check=False)


# --- the pod, from k8s/base -----------------------------------------------------------------


def mebibytes(quantity: str) -> int:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi)", quantity)
    assert match, f"unsupported quantity {quantity}"
    return max(1, int(int(match.group(1)) * units[match.group(2)]))


def cpus(quantity: str) -> float:
    return int(quantity[:-1]) / 1000 if quantity.endswith("m") else float(quantity)


class Pod:
    """The Deployment's pod template as `run` arguments."""

    def __init__(self) -> None:
        self.docs = render("base")
        self.template = realtime_pod(self.docs)
        self.spec = self.template["spec"]
        self.container = realtime_container(self.docs)
        ports = {port["name"]: port["containerPort"] for port in self.container["ports"]}
        [self.port] = ports.values()
        self.ports = ports

    @property
    def security(self) -> dict[str, Any]:
        """The pod's securityContext overlaid with the container's."""
        return {**self.spec.get("securityContext", {}), **self.container.get("securityContext", {})}

    def probe(self, kind: str) -> tuple[str, int]:
        """A probe's HTTP path and container port."""
        get = self.container[kind]["httpGet"]
        port = get["port"]
        return get["path"], self.ports[port] if isinstance(port, str) else int(port)

    def env(self, secret: dict[str, str]) -> dict[str, str]:
        """envFrom (the rendered ConfigMap; `secret` for the Secret, created out of band), then env."""
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            if "configMapRef" in source:
                env.update(one(self.docs, "ConfigMap", source["configMapRef"]["name"])["data"])
            else:
                env.update(secret)
        for var in self.container.get("env", []):
            assert "value" in var, f"{var['name']}: valueFrom is not reproduced by this test"
            env[var["name"]] = var["value"]
        return env

    def mounts(self) -> list[tuple[str, dict[str, Any]]]:
        volumes = {volume["name"]: volume for volume in self.spec.get("volumes", [])}
        return [(mount["mountPath"], volumes[mount["name"]]) for mount in self.container.get("volumeMounts", [])]

    def run_args(self, engine: Engine) -> list[str]:
        """Security context, volumes and limits as `docker|podman run` flags."""
        sc = self.security
        assert sc["runAsNonRoot"] and sc["runAsUser"] != 0
        args = ["--user", f"{sc['runAsUser']}:{sc['runAsGroup']}"]
        if "fsGroup" in sc:
            args += ["--group-add", str(sc["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args += ["--read-only"]
            if engine.name == "podman":
                args += ["--read-only-tmpfs=false"]  # podman would add writable /tmp, /var/tmp, /run
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for capability in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", capability]
        assert sc.get("seccompProfile", {}).get("type") == "RuntimeDefault"  # the engine's default profile
        for path, volume in self.mounts():
            assert "emptyDir" in volume, f"{path}: only emptyDir volumes are reproduced"
            # An emptyDir is a fresh, world-writable directory; a size-limited tmpfs stands in.
            options = [f"type=tmpfs,destination={path},tmpfs-mode=1777"]
            if "sizeLimit" in volume["emptyDir"]:
                options.append(f"tmpfs-size={mebibytes(volume['emptyDir']['sizeLimit'])}m")
            args += ["--mount", ",".join(options)]
        limits = self.container.get("resources", {}).get("limits", {})
        if "cpu" in limits:
            args += ["--cpus", str(cpus(str(limits["cpu"])))]
        if "memory" in limits:
            args += ["--memory", f"{mebibytes(limits['memory'])}m"]
        return args


@pytest.fixture(scope="module")
def pod() -> Pod:
    return Pod()


# --- a running container ----------------------------------------------------------------------


class Container:
    """One container of the image: started, probed like kubelet, signalled, inspected, removed."""

    def __init__(self, engine: Engine, image: str, args: list[str], env: dict[str, str], port: int) -> None:
        self.engine, self.image, self.args, self.env = engine, image, args, env
        self.name = f"realtime-test-{uuid.uuid4().hex[:10]}"
        self.container_port = port
        self.host_port = free_port()
        self.started = 0.0

    @property
    def port(self) -> int:
        """The host port the container port is published on (what test clients connect to)."""
        return self.host_port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}"

    def start(self, network: list[str]) -> None:
        env_args = [arg for name, value in self.env.items() for arg in ("-e", f"{name}={value}")]
        if "--network" in network and network[network.index("--network") + 1] == "host":
            self.host_port = self.container_port
            publish = []
        else:
            publish = ["-p", f"127.0.0.1:{self.host_port}:{self.container_port}"]
        self.started = time.monotonic()
        self.engine(
            "run", "-d", "--name", self.name, *self.engine.run_args, *network, *publish, *self.args, *env_args,
            self.image,
        )  # fmt: skip

    def state(self) -> dict[str, Any]:
        [data] = json.loads(self.engine("inspect", self.name).stdout)
        return data["State"]  # type: ignore[no-any-return]

    def get(self, path: str, timeout: float = 2) -> tuple[int, bytes]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()
        except OSError:
            return 0, b""

    def wait_ready(self, path: str, seconds: float = 90) -> float:
        """Poll the readiness path until 200 (failing fast if the container exits); seconds taken."""

        def ready() -> bool:
            if not self.state()["Running"]:
                raise AssertionError(f"container exited ({self.state()['ExitCode']}):\n{self.logs()}")
            return self.get(path)[0] == 200

        wait_until(ready, seconds, f"{path} on {self.name}")
        return time.monotonic() - self.started

    def logs(self) -> str:
        result = self.engine("logs", self.name, check=False)
        return result.stdout + result.stderr

    def exec(self, *command: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return self.engine("exec", self.name, *command, timeout=timeout, check=False)

    def healthcheck(self) -> subprocess.CompletedProcess[str]:
        """The image's HEALTHCHECK, as the engine runs it."""
        if self.engine.name == "podman":
            return self.engine("healthcheck", "run", self.name, check=False)
        test = self.engine.healthcheck_test(self.image)
        assert test and test[0] == "CMD", test
        return self.exec(*test[1:])

    def wait_exit(self, seconds: float) -> int:
        """The exit code, waiting at most `seconds` (kubelet's SIGKILL would follow)."""
        result = self.engine("wait", self.name, timeout=seconds)
        return int(result.stdout.strip().splitlines()[-1])

    def written_outside(self, allowed: list[str]) -> list[str]:
        """Paths the container changed in its root filesystem, other than `allowed` and the engine's own."""
        changed = []
        for line in self.engine("diff", self.name).stdout.splitlines():
            path = line.split(maxsplit=1)[1]
            inside = any(path == root or path.startswith(root.rstrip("/") + "/") for root in allowed)
            if not inside and path not in ENGINE_PATHS:
                changed.append(line)
        return changed

    def remove(self) -> None:
        self.engine("rm", "-f", self.name, check=False)


def json_log_lines(text: str) -> list[dict[str, Any]]:
    """Every line of the container's output, parsed as JSON (fails on any other line)."""
    lines = [line for line in text.splitlines() if line.strip()]
    parsed = []
    for line in lines:
        try:
            parsed.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a log line is not JSON (LOG_FORMAT=json): {line!r}") from None
    return parsed


async def stream_and_drain(pod: Pod, container: Container, service: Service, label: str) -> None:
    """Probes, a task event to a WebSocket and an SSE client, /metrics, HEALTHCHECK, then the drain."""
    health_path, health_port = pod.probe("livenessProbe")
    ready_path, ready_port = pod.probe("readinessProbe")
    assert health_port == ready_port == container.container_port
    assert container.get(health_path)[0] == 200
    assert container.get(ready_path)[0] == 200

    token = service.token(sub=7)
    ws = await service.websocket({"token": token})
    await ws.recv_type("connected", seconds=10)
    sse = await service.sse({"token": token})
    assert sse.status == 200
    await sse.next_of("connected", seconds=10)
    title = f"مهمة من الحاوية ({label})"
    response = await service.request("POST", "/api/tasks", {"title": title, "taskType": "daily"}, token=token)
    assert response.code == 201, response.body
    task = json.loads(response.body)
    received = await ws.recv_type("task_created", seconds=10)
    assert (received["taskId"], received["title"]) == (task["id"], title)
    streamed = await sse.next_of("task_created", seconds=10)
    assert streamed.id == received["id"] and streamed.json() == received

    status, body = await asyncio.to_thread(container.get, "/metrics")
    assert status == 200
    text = body.decode()
    assert 'realtime_connections{transport="websocket"} 1.0' in text
    assert 'realtime_connections{transport="sse"} 1.0' in text

    check = await asyncio.to_thread(container.healthcheck)
    assert check.returncode == 0, f"HEALTHCHECK failed: {check.stdout}{check.stderr}"

    usage = await asyncio.to_thread(container.exec, "du", "-sk", "/tmp")
    stats = container.engine("stats", "--no-stream", "--format", "{{.MemUsage}}", container.name, check=False)
    record(
        **{
            f"{label}_tmp_kib": int(usage.stdout.split()[0]) if usage.returncode == 0 else None,
            f"{label}_memory": stats.stdout.strip() or None,
        }
    )

    # kubectl delete pod: preStop runs to completion, then SIGTERM; the grace period covers both.
    grace = float(pod.spec["terminationGracePeriodSeconds"])
    deleted = time.monotonic()
    pre_stop = pod.container["lifecycle"]["preStop"]["exec"]["command"]
    done = await asyncio.to_thread(container.exec, *pre_stop, timeout=grace)
    assert done.returncode == 0, f"preStop {pre_stop} failed in the image: {done.stdout}{done.stderr}"
    container.engine("kill", "--signal", "TERM", container.name)
    signalled = time.monotonic()
    left = grace - (signalled - deleted)
    await asyncio.to_thread(wait_until, lambda: container.get(ready_path)[0] == 503, 10, "readiness to turn 503")
    assert await ws.closed(seconds=left) == (1012, "service restart")
    await sse.until_end(seconds=left)
    code = await asyncio.to_thread(container.wait_exit, grace - (time.monotonic() - deleted))
    record(**{f"{label}_sigterm_to_exit_seconds": round(time.monotonic() - signalled, 2)})
    assert code == 0, container.logs()


def run_pod(engine: Engine, image: str, pod: Pod, env: dict[str, str], network: list[str]) -> Container:
    container = Container(engine, image, pod.run_args(engine), env, pod.port)
    container.start(network)
    return container


def check_written_paths(pod: Pod, container: Container) -> None:
    mounts = [path for path, _ in pod.mounts()]
    assert container.written_outside(mounts) == []


@pytest.mark.gen_test(timeout=BUILD_SECONDS + 300)
async def test_pod_with_embedded_mongodb_serves_streams_and_drains(engine: Engine, image: str, pod: Pod) -> None:
    """The pod without MONGODB_URI (embedded MongoDB, WORKERS=0 under the CPU limit) serves and drains."""
    env = {**pod.env({"JWT_SECRET": SECRET}), "WORKERS": "0"}
    container = await asyncio.to_thread(run_pod, engine, image, pod, env, [])
    try:
        ready = await asyncio.to_thread(container.wait_ready, pod.probe("readinessProbe")[0])
        record(embedded_start_to_ready_seconds=round(ready, 2))
        await stream_and_drain(pod, container, as_service(container), "embedded")  # type: ignore[arg-type]
        logs = json_log_lines(container.logs())
        [listening] = [line for line in logs if line.get("message") == "listening"]
        limit = cpus(str(pod.container["resources"]["limits"]["cpu"]))
        assert listening["workers"] == max(1, int(limit))  # WORKERS=0 follows the CPU limit
        assert listening["mongodb"].startswith("embedded MongoDB") and env["DATA_DIR"] in listening["mongodb"]
        check_written_paths(pod, container)
    finally:
        await asyncio.to_thread(container.remove)


@pytest.mark.gen_test(timeout=BUILD_SECONDS + 300)
async def test_pod_with_external_mongodb_serves_streams_and_drains(
    engine: Engine, image: str, pod: Pod, mongo_uri: str
) -> None:
    """The pod exactly as the Deployment says, MONGODB_URI naming a SecantusDB outside the container."""
    if engine.name == "podman":
        network = ["--network", "slirp4netns:allow_host_loopback=true"]
        uri = mongo_uri.replace("127.0.0.1", PODMAN_HOST_LOOPBACK)
    else:
        network, uri = ["--network", "host"], mongo_uri
    env = pod.env({"JWT_SECRET": SECRET, "MONGODB_URI": uri})
    container = await asyncio.to_thread(run_pod, engine, image, pod, env, network)
    try:
        ready = await asyncio.to_thread(container.wait_ready, pod.probe("readinessProbe")[0])
        record(external_start_to_ready_seconds=round(ready, 2))
        await stream_and_drain(pod, container, as_service(container), "external")  # type: ignore[arg-type]
        [listening] = [line for line in json_log_lines(container.logs()) if line.get("message") == "listening"]
        assert listening["mongodb"] == "MONGODB_URI"
        assert listening["workers"] == int(env["WORKERS"])
        check_written_paths(pod, container)
    finally:
        await asyncio.to_thread(container.remove)


# One CPU: a single process; two (where the host has them): the WORKERS supervisor.
DEFAULT_RUN_CPUS = sorted({1, min(2, usable_cpus())})


@pytest.mark.parametrize("cpu_limit", DEFAULT_RUN_CPUS)
def test_image_runs_with_its_own_defaults_read_only(engine: Engine, image: str, cpu_limit: int) -> None:
    """`run --read-only --tmpfs /tmp --cpus N` and JWT_SECRET only: N workers as uid 10001, exit 0 on SIGTERM."""
    args = ["--read-only", "--tmpfs", "/tmp", "--cpus", str(cpu_limit)]
    if engine.name == "podman":
        args.append("--read-only-tmpfs=false")
    container = Container(engine, image, args, {"JWT_SECRET": SECRET}, port=5001)
    try:
        container.start([])
        container.wait_ready("/readyz")
        assert container.exec("id", "-u").stdout.strip() == "10001"
        assert container.get("/metrics")[0] == 200
        engine("kill", "--signal", "TERM", container.name)
        signalled = time.monotonic()
        assert container.wait_exit(45) == 0, container.logs()
        record(**{f"defaults_{cpu_limit}cpu_sigterm_to_exit_seconds": round(time.monotonic() - signalled, 2)})
        [listening] = [line for line in json_log_lines(container.logs()) if line.get("message") == "listening"]
        assert listening["workers"] == cpu_limit  # the image's WORKERS=0 under the limit
        assert container.written_outside(["/tmp"]) == []
    finally:
        container.remove()


def test_image_reports_its_size(engine: Engine, image: str) -> None:
    """The image runs as a numeric non-root user, has a HEALTHCHECK, and its size is recorded."""
    data = engine.inspect_image(image)
    user = data.get("User") or data.get("Config", {}).get("User", "")
    assert user.split(":")[0].isdigit() and user.split(":")[0] != "0"
    assert engine.healthcheck_test(image), "the image has no HEALTHCHECK (podman needs --format docker)"
    record(image_size_mb=round(int(data["Size"]) / 1e6, 1))


# --- WORKERS=0 under a cgroup CPU limit (no engine needed) ------------------------------------


def test_usable_cpus_follows_a_cgroup_v2_quota(tmp_path: Path) -> None:
    """cpu.max `150000 100000` (1.5 CPUs) allows one worker; `max` is no limit."""
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert usable_cpus(tmp_path) == usable_cpus(tmp_path / "absent")


def test_usable_cpus_follows_a_cgroup_v1_quota(tmp_path: Path) -> None:
    """cfs_quota_us/cfs_period_us of 1 CPU allows one worker; -1 is no limit."""
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert usable_cpus(tmp_path) == usable_cpus(tmp_path / "absent") >= 1


def test_single_process_creates_the_metrics_dir_and_drops_a_previous_runs_files(tmp_path: Path, mongo_uri: str) -> None:
    """WORKERS=1 with PROMETHEUS_MULTIPROC_DIR not there yet starts; a restart drops the old pid's files."""
    metrics_dir = tmp_path / "tmp" / "prometheus"
    env = {**shared_env(mongo_uri), "WORKERS": "1", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    with running(tmp_path / "first", env) as first:
        old_pid = first.pid
        assert any(path.name.endswith(f"_{old_pid}.db") for path in metrics_dir.iterdir())
    with running(tmp_path / "second", env) as second:
        names = [path.name for path in metrics_dir.iterdir()]
        assert any(name.endswith(f"_{second.pid}.db") for name in names)
        assert not any(name.endswith(f"_{old_pid}.db") for name in names)
