"""Ray on this machine or on a cluster: the embedded in-process default, connecting by address, and
`ray start` head/worker nodes on 127.0.0.1 for tests.

Why this module exists (measured pitfalls, see ENVIRONMENT.md):
- A local `ray.init` silently creates an auth token that later breaks `ray job submit`:
  `RAY_AUTH_MODE=disabled` is set before Ray starts.
- Without `RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0` Ray listens on the external interface even with
  `--node-ip-address 127.0.0.1`; everything here binds 127.0.0.1 and the dashboard is off or on 127.0.0.1.
- `ray.init(address=...)` to a dead address retries for a long time; we probe the GCS port first and fail
  in seconds with a message naming the address.
- `ray stop` kills every Ray process on the machine, including other sessions' clusters. A
  `LocalRayCluster` gives each node its own temp dir and ports and stops exactly the processes it started.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from ..ports import free_ports

RAY_ENV_DEFAULTS = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
    "RAY_USAGE_STATS_ENABLED": "0",
}
LOCALHOST = "127.0.0.1"


def apply_ray_env() -> None:
    """Set the environment defaults Ray must see before it starts (an explicit user value wins)."""
    for key, value in RAY_ENV_DEFAULTS.items():
        os.environ.setdefault(key, value)


@dataclass
class RayConfig:
    """Where evaluation/jobs run. `address=None` starts (or reuses) the embedded in-process Ray."""

    address: str | None = None  # "127.0.0.1:6379", "ray://host:10001", or "auto"; None = embedded
    num_cpus: int = 2  # embedded Ray only: CPUs it may schedule
    include_dashboard: bool = False  # embedded Ray only; when on, bound to 127.0.0.1
    dashboard_port: int = 8265
    connect_timeout_s: float = 10.0  # how long an address may take to answer before a clear error
    object_store_memory: int | None = None  # bytes; None = Ray's default
    namespace: str | None = None

    def __post_init__(self) -> None:
        if self.num_cpus < 1:
            raise ValueError(f"ray.num_cpus must be >= 1, got {self.num_cpus}")
        if self.connect_timeout_s <= 0:
            raise ValueError(f"ray.connect_timeout_s must be > 0, got {self.connect_timeout_s}")
        if not 0 < self.dashboard_port < 65536:
            raise ValueError(f"ray.dashboard_port must be a TCP port, got {self.dashboard_port}")
        if self.address is not None and not self.address.strip():
            raise ValueError("ray.address is empty; use None for the embedded local Ray")


def _split_host_port(address: str) -> tuple[str, int] | None:
    """`ray://h:p`, `http://h:p` or `h:p` → (h, p); None when the address has no explicit port ("auto")."""
    bare = address.split("://", 1)[-1].rstrip("/")
    if ":" not in bare:
        return None
    host, port = bare.rsplit(":", 1)
    try:
        return host, int(port)
    except ValueError as err:
        raise ValueError(f"Ray address {address!r}: port {port!r} is not a number") from err


def check_reachable(address: str, timeout_s: float) -> None:
    """Raise ConnectionError naming `address` unless its TCP port accepts a connection within `timeout_s`."""
    hp = _split_host_port(address)
    if hp is None:
        return
    deadline = time.monotonic() + timeout_s
    last: OSError | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(hp, timeout=max(0.1, min(1.0, deadline - time.monotonic()))):
                return
        except OSError as err:
            last = err
            time.sleep(0.2)
    raise ConnectionError(
        f"Ray address {address!r} is unreachable after {timeout_s:.0f}s ({last}); "
        "is a Ray head running there? Start one with `ray start --head` or use the embedded default."
    )


def init_ray(cfg: RayConfig | None = None) -> str:
    """Start or reuse Ray per `cfg`; returns the GCS address of the session this process is attached to.

    An already-initialised Ray in this process is reused (tests share one session per module).
    """
    apply_ray_env()  # before `import ray`: Ray reads RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER at import time
    import ray

    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return ray.get_runtime_context().gcs_address
    # Inside `ray job submit` the job supervisor exports RAY_ADDRESS: join that cluster, do not start one.
    address = cfg.address if cfg.address is not None else os.environ.get("RAY_ADDRESS") or None
    if address is not None:
        check_reachable(address, cfg.connect_timeout_s)
        ray.init(address=address, namespace=cfg.namespace, log_to_driver=True)
    else:
        ray.init(
            num_cpus=cfg.num_cpus,
            include_dashboard=cfg.include_dashboard,
            dashboard_host=LOCALHOST,
            dashboard_port=cfg.dashboard_port if cfg.include_dashboard else None,
            object_store_memory=cfg.object_store_memory,
            namespace=cfg.namespace,
            _node_ip_address=LOCALHOST,
        )
    return ray.get_runtime_context().gcs_address


def shutdown_ray() -> None:
    """Disconnect this process from Ray, stopping the embedded Ray if this process started it; a no-op when
    Ray was never initialised (and Ray itself is then not even imported)."""
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()


@contextlib.contextmanager
def ray_session(cfg: RayConfig | None = None) -> Iterator[str]:
    """`init_ray(cfg)` for the duration of a `with` block; yields the GCS address. Ray is shut down on exit
    only when this block started it, so a caller inside an existing session (a test's, a Ray job's) keeps it."""
    apply_ray_env()
    import ray

    started = not ray.is_initialized()
    address = init_ray(cfg)
    try:
        yield address
    finally:
        if started:
            shutdown_ray()


# `ray start --address` (a worker node) in Ray 2.60 either aborts ("multi-node clusters are not supported")
# when RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, or, when it is 1, rewrites 127.0.0.1 — in both the head address and
# --node-ip-address — to the machine's external IP, which a loopback-only head does not listen on. This
# launcher runs the real `ray` CLI with the multi-node switch on and the localhost rewrite off, so a worker
# joins a 127.0.0.1 head and itself binds 127.0.0.1 only (nothing is exposed on the network).
_LOOPBACK_WORKER_START = """
import sys
from ray._private import ray_constants, services
ray_constants.ENABLE_RAY_CLUSTER = True
services.resolve_ip_for_localhost = lambda host: host
from ray.scripts.scripts import main
sys.argv[0] = "ray"
sys.exit(main())
"""


def _ray_cli() -> str:
    """The `ray` executable of this interpreter's environment (the venv's, not whatever is on PATH)."""
    cand = Path(sys.executable).with_name("ray")
    return str(cand) if cand.exists() else (shutil.which("ray") or "ray")


@dataclass
class LocalRayCluster:
    """A head (+ optional worker nodes) started with `ray start` on 127.0.0.1, each with its own ports and
    temp dir, stopped by process id — never with a machine-wide `ray stop`.

    Use as a context manager; `address` is the GCS address, `dashboard_url` serves `ray job submit` (the
    dashboard always runs here, bound to 127.0.0.1: jobs and node polling need it).
    """

    num_workers: int = 0
    cpus_per_node: int = 1
    object_store_memory: int = 100 * 1024 * 1024
    start_timeout_s: float = 90.0
    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="frray-", dir="/tmp")))
    gcs_port: int = 0
    dashboard_port: int = 0
    _procs: list[subprocess.Popen] = field(default_factory=list, repr=False)
    _names: list[str] = field(default_factory=list, repr=False)
    _used_ports: set[int] = field(default_factory=set, repr=False)

    def __post_init__(self) -> None:
        if self.num_workers < 0 or self.cpus_per_node < 1:
            raise ValueError(f"num_workers={self.num_workers} cpus_per_node={self.cpus_per_node} invalid")

    @property
    def address(self) -> str:
        return f"{LOCALHOST}:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{LOCALHOST}:{self.dashboard_port}"

    def _ports(self, n: int) -> list[int]:
        """`n` free ports distinct from each other and from every port this cluster has handed out."""
        ports = free_ports(n, exclude=self._used_ports)
        self._used_ports.update(ports)
        return ports

    def _node_args(self) -> list[str]:
        """Every port a node opens, picked free, so parallel sessions on this machine never collide."""
        nm, om, metrics, env_agent, agent_http, agent_grpc = self._ports(6)
        return [
            "--node-ip-address", LOCALHOST, "--num-cpus", str(self.cpus_per_node),
            "--object-store-memory", str(self.object_store_memory),
            "--node-manager-port", str(nm), "--object-manager-port", str(om),
            "--metrics-export-port", str(metrics), "--runtime-env-agent-port", str(env_agent),
            "--dashboard-agent-listen-port", str(agent_http), "--dashboard-agent-grpc-port", str(agent_grpc),
            "--disable-usage-stats", "--block",
        ]  # fmt: skip

    def _spawn(self, args: list[str], name: str, loopback_worker: bool = False) -> None:
        env = {**os.environ, **RAY_ENV_DEFAULTS}
        cmd = [sys.executable, "-c", _LOOPBACK_WORKER_START] if loopback_worker else [_ray_cli()]
        log = open(self.root / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the node
        # Own session: a signal to this group reaches `ray start --block` and the daemons it forks.
        proc = subprocess.Popen(
            [*cmd, "start", *args], stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        self._procs.append(proc)
        self._names.append(name)

    def start(self) -> LocalRayCluster:
        apply_ray_env()
        self._used_ports.update(p for p in (self.gcs_port, self.dashboard_port) if p)
        gcs, dashboard, client = self._ports(3)
        self.gcs_port = self.gcs_port or gcs
        self.dashboard_port = self.dashboard_port or dashboard
        head = [
            "--head", "--port", str(self.gcs_port), "--temp-dir", str(self.root / "ray"),
            "--ray-client-server-port", str(client),
            "--include-dashboard", "true",  # `ray job submit` and the state API (node polling) need it
            "--dashboard-host", LOCALHOST, "--dashboard-port", str(self.dashboard_port),
        ]  # fmt: skip
        self._spawn(head + self._node_args(), "head")
        check_reachable(self.address, self.start_timeout_s)
        for i in range(self.num_workers):
            self._spawn(["--address", self.address, *self._node_args()], f"worker{i}", loopback_worker=True)
        self.wait_for_nodes(1 + self.num_workers)
        self.wait_for_jobs()
        return self

    def wait_for_jobs(self) -> None:
        """Block until the head runs a job: a no-op job submitted and finished. Right after the nodes are
        alive the head can still refuse jobs ("No available agent to submit job") while the dashboard
        agents register; a test or user submitting then would fail for no reason of theirs."""
        from ray.job_submission import JobStatus, JobSubmissionClient

        deadline, refused = time.monotonic() + self.start_timeout_s, ""
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                client = JobSubmissionClient(self.dashboard_url)
                job = client.submit_job(entrypoint="true")
            except (RuntimeError, ConnectionError) as err:  # refused or not up yet: try again
                refused = str(err)
                time.sleep(1.0)
                continue
            while not (status := client.get_job_status(job)).is_terminal():
                if time.monotonic() > deadline:
                    break
                time.sleep(0.5)
            if status == JobStatus.SUCCEEDED:
                return
            raise RuntimeError(f"local Ray cluster {self.dashboard_url}: a no-op job ended {status}: "
                               f"{client.get_job_logs(job)[-1500:]}")  # fmt: skip
        raise TimeoutError(f"local Ray cluster {self.dashboard_url}: no job accepted after "
                           f"{self.start_timeout_s}s (last refusal: {refused[-300:]})")  # fmt: skip

    def wait_for_nodes(self, n: int) -> None:
        """Block until `n` nodes are alive (the state API, served by the head's dashboard)."""
        from ray.util.state import list_nodes

        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            self._raise_if_exited()
            try:
                alive = [x for x in list_nodes(address=self.address) if x.state == "ALIVE"]
                if len(alive) >= n:
                    return
            except Exception:  # noqa: BLE001 - the dashboard/GCS may still be coming up
                pass
            time.sleep(0.5)
        raise TimeoutError(
            f"local Ray cluster at {self.address}: fewer than {n} nodes after {self.start_timeout_s}s"
        )

    def _raise_if_exited(self) -> None:
        for proc, name in zip(self._procs, self._names, strict=True):
            if proc.poll() is not None:
                tail = (self.root / f"{name}.log").read_text(errors="replace")[-1500:]
                raise RuntimeError(f"`ray start` ({name}) exited with {proc.returncode}:\n{tail}")

    def _owned_pids(self) -> set[int]:
        """Processes we started: our `ray start` sessions plus any process naming our temp dir."""
        marker = str(self.root)
        pids = set()
        for proc in psutil.process_iter(["pid", "cmdline"]):
            try:
                cmd = " ".join(proc.info["cmdline"] or [])
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            if marker in cmd:
                pids.add(proc.info["pid"])
        for popen in self._procs:
            try:
                parent = psutil.Process(popen.pid)
                pids.add(parent.pid)
                pids.update(c.pid for c in parent.children(recursive=True))
            except psutil.NoSuchProcess:
                pass
        return pids

    def stop(self, timeout_s: float = 5.0) -> None:
        """Terminate exactly the processes of this cluster (by pid), then remove its temp dir."""
        pids = self._owned_pids()
        for popen in self._procs:
            try:
                os.killpg(popen.pid, signal.SIGTERM)
            except (ProcessLookupError, PermissionError):
                pass
        procs = [p for p in (self._proc_or_none(pid) for pid in pids) if p is not None]
        for p in procs:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(procs, timeout=timeout_s)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for popen in self._procs:
            popen.wait(timeout=timeout_s)
        self._procs.clear()
        self._names.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    @staticmethod
    def _proc_or_none(pid: int) -> psutil.Process | None:
        try:
            return psutil.Process(pid)
        except psutil.NoSuchProcess:
            return None

    def __enter__(self) -> LocalRayCluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()
