"""Local processes of a fleet: start workers and a front end on 127.0.0.1, stop them cleanly.

Each child binds port 0 and reports its ports through a ready file; its output goes to a
log file in the work directory (shown when it fails). `stop` sends SIGTERM, waits, then
SIGKILLs stragglers, so no child outlives the fleet.

The fleet is a cluster of its own: it makes a throwaway CA in the work directory and gives
every child a certificate it signed (HELIX_TLS_*), so that all hops use mutual TLS, and
`member_tls` issues one for an in-process peer. Each worker is told the fleet's
endpoints file (`--endpoints`), where a worker's address goes once it is up: the only next
hops the stages dial.
A child may run in a network namespace of an emulated network (`netem`); it then listens
there and its peers dial the address given for it.
"""

import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helix_worker.errors import ServingError
from helix_worker.security.issuing import issue, new_ca, write_bundle
from helix_worker.security.tls import ClusterTLS
from helix_worker.transport.readyfile import wait_ready_file

LOOPBACK = "127.0.0.1"


@dataclass
class Child:
    name: str
    process: subprocess.Popen[bytes]
    ready_file: Path
    log_path: Path
    ports: dict[str, int] = field(default_factory=dict)
    worker: bool = False
    host: str = LOOPBACK  # the address peers dial: an emulated host's bridge address in its namespace

    @property
    def grpc_address(self) -> str:
        return f"{self.host}:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.ports['http']}"

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class LocalFleet:
    def __init__(self, workdir: Path, *, env: dict[str, str] | None = None) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.env = {**os.environ, **(env or {})}
        self.children: list[Child] = []
        self._ca = new_ca(f"helix fleet {self.workdir.name}")
        self.endpoints_path = self.workdir / "peers.json"
        self.endpoints_path.unlink(missing_ok=True)

    def __enter__(self) -> "LocalFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_worker(self, plan: Path, node: str, checkpoint: Path, *, port: int = 0,
                     env: dict[str, str] | None = None, netns: str | None = None, host: str = LOOPBACK,
                     peers: Path | None = None) -> Child:
        """Start a stage; `port` 0 binds any free port (a restarted stage reuses its old one). With
        `netns` it runs in that network namespace, where peers reach it at `host` (see `netem`).
        Its next hops are the fleet's endpoints of its plan's nodes, or those `peers` lists."""
        hops = ["--peers", str(peers)] if peers is not None else ["--endpoints", str(self.endpoints_path)]
        child = self._spawn(node, ["worker", "--plan", str(plan), "--node", node, "--model", str(checkpoint),
                                   "--port", str(port), "--http-port", "0", *hops], env, netns, host)
        child.worker = True
        return child

    def start_frontend(self, plan: Path, endpoints: Path, checkpoint: Path, *, model_name: str = "",
                       grpc_port: int = 0, http_port: int = 0, env: dict[str, str] | None = None,
                       netns: str | None = None, host: str = LOOPBACK) -> Child:
        args = ["frontend", "--plan", str(plan), "--endpoints", str(endpoints), "--model", str(checkpoint),
                "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        return self._spawn("frontend", args + (["--model-name", model_name] if model_name else []), env, netns, host)

    def wait(self, child: Child, timeout: float = 120.0) -> Child:
        """Block until the child reports its ports; its log tail is in the error if it dies."""
        try:
            child.ports = wait_ready_file(child.ready_file, child.process, timeout, child.name)
        except ServingError as err:
            raise ServingError(f"{err}\n--- {child.log_path} ---\n{child.log_tail()}") from None
        if child.worker:
            self._add_endpoint(child.name, child.grpc_address)
        return child

    def _add_endpoint(self, node: str, address: str) -> None:
        known = json.loads(self.endpoints_path.read_text()) if self.endpoints_path.exists() else {}
        scratch = self.endpoints_path.with_suffix(".tmp")
        scratch.write_text(json.dumps(known | {node: address}, indent=2))
        scratch.replace(self.endpoints_path)  # workers read it at any time: never half-written

    def member_tls(self, name: str, host: str = LOOPBACK) -> ClusterTLS:
        """A certificate of the fleet's CA for `name` (a child, or an in-process peer) reached at `host`."""
        ips = list(dict.fromkeys([LOOPBACK, host]))
        directory = write_bundle(self.workdir / "tls" / name, self._ca,
                                 issue(self._ca, name, dns_names=["localhost"], ips=ips))
        return ClusterTLS.from_dir(directory)

    def kill(self, child: Child) -> None:
        """SIGKILL one child (to emulate a crash) and reap it."""
        child.process.kill()
        child.process.wait(timeout=10)

    def stop(self, timeout: float = 10.0) -> None:
        alive = [c for c in self.children if c.process.poll() is None]
        for child in alive:
            child.process.send_signal(signal.SIGTERM)
        for child in alive:
            try:
                child.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait(timeout=timeout)
        self.children.clear()

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None, netns: str | None = None,
               host: str = LOOPBACK) -> Child:
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log_path = self.workdir / f"{name}.log"
        tls = self.member_tls(name, host)
        identity = {"HELIX_TLS_CERT": str(tls.cert), "HELIX_TLS_KEY": str(tls.key), "HELIX_TLS_CA": str(tls.ca)}
        command = [sys.executable, "-m", "helix_worker", *args, "--ready-file", str(ready)]
        with open(log_path, "wb") as log:
            process = subprocess.Popen((["ip", "netns", "exec", netns] if netns else []) + command,
                                       stdout=log, stderr=subprocess.STDOUT,
                                       env={**self.env, **identity, **(env or {})}, start_new_session=True)
        child = Child(name, process, ready, log_path, host=host)
        self.children.append(child)
        return child
