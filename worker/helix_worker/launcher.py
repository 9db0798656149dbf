"""Local processes of a fleet: start workers and a front end on 127.0.0.1, stop them cleanly.

Each child binds port 0 and reports its ports through a ready file; its output goes to a
log file in the work directory (shown when it fails). `stop` sends SIGTERM, waits, then
SIGKILLs stragglers, so no child outlives the fleet.
"""

import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from helix_worker.errors import ServingError
from helix_worker.readyfile import wait_ready_file


@dataclass
class Child:
    name: str
    process: subprocess.Popen
    ready_file: Path
    log_path: Path
    ports: dict = field(default_factory=dict)

    @property
    def grpc_address(self) -> str:
        return f"127.0.0.1:{self.ports['grpc']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['http']}"

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

    def __enter__(self) -> "LocalFleet":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start_worker(self, plan: Path, node: str, checkpoint: Path, *, port: int = 0,
                     env: dict[str, str] | None = None) -> Child:
        """Start a stage; `port` 0 binds any free port (a restarted stage reuses its old one)."""
        return self._spawn(node, ["worker", "--plan", str(plan), "--node", node, "--model", str(checkpoint),
                                  "--port", str(port), "--http-port", "0"], env)

    def start_frontend(self, plan: Path, endpoints: Path, checkpoint: Path, *, model_name: str = "",
                       grpc_port: int = 0, http_port: int = 0, env: dict[str, str] | None = None) -> Child:
        args = ["frontend", "--plan", str(plan), "--endpoints", str(endpoints), "--model", str(checkpoint),
                "--grpc-port", str(grpc_port), "--http-port", str(http_port)]
        return self._spawn("frontend", args + (["--model-name", model_name] if model_name else []), env)

    def wait(self, child: Child, timeout: float = 120.0) -> Child:
        """Block until the child reports its ports; its log tail is in the error if it dies."""
        try:
            child.ports = wait_ready_file(child.ready_file, child.process, timeout, child.name)
        except ServingError as err:
            raise ServingError(f"{err}\n--- {child.log_path} ---\n{child.log_tail()}") from None
        return child

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

    def _spawn(self, name: str, args: list[str], env: dict[str, str] | None) -> Child:
        ready = self.workdir / f"{name}.ready.json"
        ready.unlink(missing_ok=True)
        log_path = self.workdir / f"{name}.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen([sys.executable, "-m", "helix_worker", *args, "--ready-file", str(ready)],
                                       stdout=log, stderr=subprocess.STDOUT, env={**self.env, **(env or {})},
                                       start_new_session=True)
        child = Child(name, process, ready, log_path)
        self.children.append(child)
        return child
