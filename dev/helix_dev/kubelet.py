"""The node agent: what a kubelet does for the pods bound to one fake node, with local processes.

For each pod: its volumes become directories (ConfigMaps and Secrets written out as the kubelet
writes them, and written again when their source changes: at once after a change to the pod,
else every `REFRESH_SECONDS`; emptyDirs empty), its init containers run one after the other to
completion, then its container runs as a process on 127.0.0.1 with the node's device variables
under the pod's env (see `containers`); in an emulated network (`emulation`) every container
runs in the node's network namespace, behind the pod's relays, which start first. In-cluster
addresses in ConfigMaps become local ones, as in the container's arguments. The readiness probe
the pod declares decides Ready. A container that exits is restarted as `restartPolicy` says
(Always: in place, after a back-off, shortened here to seconds); with Never the pod goes Failed.
Status goes back through the API server, so the operator sees what it would see in a cluster. A
pod marked for deletion gets SIGTERM, SIGKILL after its grace period, and is then deleted for
good; eviction stops the pod and marks it Failed.
"""

import asyncio
import base64
import contextlib
import datetime
import logging
import os
import shutil
import signal
import ssl
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from helix_dev.client import Api, path_of, pod_path
from helix_dev.containers import probe_target, translate_container
from helix_dev.emulation import NodeHost
from helix_dev.network import LOOPBACK, PortBook, pod_owner
from helix_worker.errors import ServingError
from helix_worker.fleet.delayline import stop_relays
from helix_worker.fleet.netns import open_connection

log = logging.getLogger(__name__)
BACKOFF_SECONDS = (1.0, 2.0, 5.0, 10.0)  # the kubelet's is 10 s doubling to 5 min
PROBE_SECONDS = 0.25                      # faster than the pods' periodSeconds, to keep demos quick
REFRESH_SECONDS = 10.0                    # the kubelet's periodic sync of a pod is a minute
TERMINAL = ("Failed", "Succeeded")


class PodError(Exception):
    """The pod cannot run here; it goes Failed with this reason and message."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, ok: bool) -> dict[str, str]:
    return {"type": kind, "status": "True" if ok else "False"}


class PodRun:
    """One pod's processes, run by a task from volumes to the restarts of its container."""

    def __init__(self, agent: "NodeAgent", pod: Mapping[str, Any]) -> None:
        self.agent, self.pod = agent, pod
        metadata = pod["metadata"]
        self.name, self.uid = metadata["name"], metadata["uid"]
        self.dir = agent.workdir / f"{metadata['namespace']}.{self.name}.{self.uid[:6]}"
        self.spec = pod.get("spec") or {}
        self.process: asyncio.subprocess.Process | None = None
        self.phase, self.ready, self.initialized, self.restarts = "Pending", False, False, 0
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.reason: tuple[str, str] | None = None
        self.stopping = False
        self._reported: dict[str, Any] | None = None
        self._sources: dict[str, tuple[str, str, str]] = {}  # volume -> (plural, kind, name) of its ConfigMap or Secret
        self._refresh: asyncio.Task[None] | None = None
        self._relays: asyncio.Task[subprocess.Popen[bytes] | None] | None = None  # in an emulated network
        self.task = asyncio.create_task(self._run(), name=f"pod {self.name}")

    @property
    def main(self) -> Mapping[str, Any]:
        container: Mapping[str, Any] = self.spec["containers"][0]
        return container

    @property
    def log_path(self) -> Path:
        return self.dir / f"{self.main['name']}.log"

    @property
    def pid(self) -> int | None:
        """The running process (init or main container), if any."""
        process = self.process
        return process.pid if process is not None and process.returncode is None else None

    def status(self) -> dict[str, Any]:
        status: dict[str, Any] = {
            "phase": self.phase, "hostIP": LOOPBACK, "podIP": LOOPBACK,
            "conditions": [_condition("PodScheduled", True), _condition("Initialized", self.initialized),
                           _condition("ContainersReady", self.ready), _condition("Ready", self.ready)],
            "containerStatuses": [{"name": self.main["name"], "ready": self.ready, "restartCount": self.restarts,
                                   "state": self.state}],
        }
        if self.reason:
            status["reason"], status["message"] = self.reason
        return status

    async def report(self, *, final: bool = False) -> None:
        """Send the status if it changed; a pod being stopped reports only its `final` status."""
        status = self.status()
        if status != self._reported and (final or not self.stopping):
            self._reported = status
            await self.agent.api.patch(pod_path(self.pod, "status"), {"status": status})

    async def stop(self, grace: float, *, kill: bool = False) -> None:
        """SIGTERM (SIGKILL with `kill`), SIGKILL after `grace` seconds, and end the task."""
        self.stopping = True
        process = self.process
        if process is not None and process.returncode is None:
            _signal(process, signal.SIGKILL if kill else signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), grace)
            except TimeoutError:
                _signal(process, signal.SIGKILL)
                await process.wait()
        self.task.cancel()
        if self._refresh is not None:
            self._refresh.cancel()
        await asyncio.gather(self.task, *([self._refresh] if self._refresh else []), return_exceptions=True)
        if self._relays is not None:
            relays = (await asyncio.gather(self._relays, return_exceptions=True))[0]
            if isinstance(relays, subprocess.Popen):
                await asyncio.to_thread(stop_relays, relays)

    async def fail(self, reason: str, message: str) -> None:
        self.phase, self.ready, self.reason = "Failed", False, (reason, message)
        self.state = {"terminated": {"exitCode": 137, "reason": reason}}
        await self.report(final=True)

    async def _run(self) -> None:
        try:
            await self.report()
            volumes = await self._volumes()
            self._refresh = asyncio.create_task(self._refresh_volumes(), name=f"volumes of pod {self.name}")
            if self.agent.host is not None:
                await self._attach(self.agent.host)
            for container in self.spec.get("initContainers") or []:
                self.state = {"waiting": {"reason": "PodInitializing"}}
                await self.report()
                while (code := await self._run_container(container, volumes)) != 0:
                    if self.spec.get("restartPolicy", "Always") == "Never":
                        raise PodError("InitContainerFailed", f"init container {container['name']} exited {code}")
                    await self._backoff(f"Init:CrashLoopBackOff ({container['name']} exited {code})")
            self.initialized = True
            await self._serve(volumes)
        except PodError as err:
            self.phase, self.reason = "Failed", (err.reason, str(err))
            self.state = {"terminated": {"exitCode": 1, "reason": err.reason}}
            await self.report()
        except Exception:  # a bug here must show, not silently stall the pod
            log.exception("pod %s: the node agent failed", self.name)
            raise

    async def _attach(self, host: NodeHost) -> None:
        """Start the pod's relays in the emulated network: its ports on the node's address and on
        127.0.0.1 of this machine. Shielded, so that a pod stopped meanwhile still stops them."""
        ports = [self.agent.ports.port(pod_owner(self.pod), int(declared["containerPort"]))
                 for container in self.spec["containers"] for declared in container.get("ports") or []]
        self._relays = asyncio.create_task(asyncio.to_thread(host.start_relays, ports, self.dir))
        try:
            await asyncio.shield(self._relays)
        except ServingError as err:
            raise PodError("NetworkUnavailable", str(err)) from None

    async def _serve(self, volumes: Mapping[str, Path]) -> None:
        policy = self.spec.get("restartPolicy", "Always")
        while True:
            process = await self._start(self.main, volumes)
            self.phase, self.state = "Running", {"running": {"startedAt": _now()}}
            await self.report()
            probe = asyncio.create_task(self._probe())
            code = await process.wait()
            probe.cancel()
            self.ready = False
            if self.stopping:
                return
            log.info("pod %s: container %s exited with %d", self.name, self.main["name"], code)
            self.state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
            if policy == "Never" or (policy == "OnFailure" and code == 0):
                self.phase = "Succeeded" if code == 0 else "Failed"
                await self.report()
                return
            self.restarts += 1
            await self._backoff("CrashLoopBackOff")

    async def _backoff(self, reason: str) -> None:
        delay = BACKOFF_SECONDS[min(self.restarts, len(BACKOFF_SECONDS) - 1)]
        self.state = {"waiting": {"reason": reason}}
        await self.report()
        await asyncio.sleep(delay)

    async def _run_container(self, container: Mapping[str, Any], volumes: Mapping[str, Path]) -> int:
        return await (await self._start(container, volumes)).wait()

    async def _start(self, container: Mapping[str, Any], volumes: Mapping[str, Path]) -> asyncio.subprocess.Process:
        mounts = {m["mountPath"]: volumes[m["name"]] / m.get("subPath", "") for m in container.get("volumeMounts") or []
                  if m["name"] in volumes}
        command = translate_container(self.pod, container, mounts, self.agent.ports, self.agent.device_env)
        if not command.argv:
            raise PodError("CreateContainerError", f"container {container['name']} has no command")
        host = self.agent.host
        argv = command.argv if host is None else host.command(command.argv)
        with open(self.dir / f"{container['name']}.log", "ab") as output:
            output.write(f"--- {_now()} {' '.join(argv)}\n".encode())
            output.flush()
            try:
                self.process = await asyncio.create_subprocess_exec(
                    *argv, env=command.env, cwd=self.dir, stdin=asyncio.subprocess.DEVNULL, stdout=output,
                    stderr=asyncio.subprocess.STDOUT, start_new_session=True)
            except OSError as err:
                raise PodError("StartError", f"container {container['name']}: {err}") from None
        return self.process

    async def _probe(self) -> None:
        """Readiness from the pod's probe (none: ready once started); reported when it changes."""
        probe = self.main.get("readinessProbe")
        target = probe_target(self.pod, probe, self.agent.ports) if probe else None
        netns = self.agent.host.netns if self.agent.host is not None else None  # the node's: kubelets probe from it
        while True:
            self.ready = True if target is None else await _answers(*target, netns)
            await self.report()
            await asyncio.sleep(PROBE_SECONDS if not self.ready else 1.0)

    async def _volumes(self) -> dict[str, Path]:
        """Host directories of the pod's volumes; a missing ConfigMap or Secret is waited for, as kubelets do."""
        directories = {}
        for volume in self.spec.get("volumes") or []:
            directory = self.dir / "volumes" / volume["name"]
            directory.mkdir(parents=True, exist_ok=True)
            if "configMap" in volume:
                self._sources[volume["name"]] = ("configmaps", "ConfigMap", volume["configMap"]["name"])
            elif "secret" in volume:
                self._sources[volume["name"]] = ("secrets", "Secret", volume["secret"]["secretName"])
            elif "emptyDir" not in volume:
                raise PodError("UnsupportedVolume", f"volume {volume['name']}: only configMap, secret and emptyDir "
                                                    "volumes run on the local stand-in cluster")
            if volume["name"] in self._sources:
                plural, kind, name = self._sources[volume["name"]]
                project(directory, self._files(plural, await self._source(plural, kind, name)))
            directories[volume["name"]] = directory
        return directories

    def _files(self, plural: str, source: Mapping[str, Any]) -> dict[str, bytes]:
        if plural == "secrets":
            return {key: base64.b64decode(encoded) for key, encoded in (source.get("data") or {}).items()}
        return {key: self.agent.ports.translate(text).encode() for key, text in (source.get("data") or {}).items()}

    async def refresh_volumes(self) -> None:
        """Write each ConfigMap and Secret volume again if its source changed (a sync of the pod)."""
        namespace = self.pod["metadata"]["namespace"]
        for volume, (plural, _, name) in self._sources.items():
            found = await self.agent.api.get(path_of("v1", plural, namespace, name))
            if found is not None:
                project(self.dir / "volumes" / volume, self._files(plural, found))

    async def _refresh_volumes(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            await self.refresh_volumes()

    def changed(self, pod: Mapping[str, Any]) -> None:
        """The pod's labels or annotations changed: the kubelet syncs it, volumes included."""
        def marks(p: Mapping[str, Any]) -> tuple[Any, Any]:
            return p["metadata"].get("labels"), p["metadata"].get("annotations")

        if marks(pod) != marks(self.pod) and self._refresh is not None:
            self.pod = pod
            self._refresh.cancel()
            self._refresh = asyncio.create_task(self._refresh_now(), name=f"volumes of pod {self.name}")

    async def _refresh_now(self) -> None:
        await self.refresh_volumes()
        await self._refresh_volumes()

    async def _source(self, plural: str, kind: str, name: str) -> dict[str, Any]:
        """The object a volume is made from, once it exists."""
        namespace = self.pod["metadata"]["namespace"]
        while (found := await self.agent.api.get(path_of("v1", plural, namespace, name))) is None:
            self.state = {"waiting": {"reason": "ContainerCreating", "message": f"{kind} {name} not found"}}
            await self.report()
            await asyncio.sleep(PROBE_SECONDS)
        return found


def project(directory: Path, files: Mapping[str, bytes]) -> None:
    """Write `files` into a volume's `directory` as the kubelet does: into a fresh folder, then one
    atomic swap of the `..data` symlink, every file a link through `..data`; a reader sees the old
    set or the new one, never a mix. Nothing is written when the files are unchanged."""
    data = directory / "..data"
    if data.exists() and {p.name: p.read_bytes() for p in data.iterdir()} == dict(files):
        return
    old = data.resolve() if data.is_symlink() else None
    fresh = Path(tempfile.mkdtemp(prefix="..", dir=directory))
    for name, content in files.items():
        (fresh / name).write_bytes(content)
    scratch = directory / "..data_tmp"
    scratch.unlink(missing_ok=True)
    scratch.symlink_to(fresh.name)
    scratch.replace(data)
    for name in files:
        if not (directory / name).is_symlink():
            (directory / name).symlink_to(Path("..data") / name)
    for link in directory.iterdir():
        if link.is_symlink() and link.name != "..data" and link.name not in files:
            link.unlink()
    if old is not None and old != fresh:
        shutil.rmtree(old, ignore_errors=True)


def _signal(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, sig)


async def _answers(kind: str, port: int, path: str, tls: bool, namespace: str | None) -> bool:
    """Whether the probe passes; HTTPS without verifying the certificate, as kubelets probe. Dialled
    from the node's network `namespace` (None: this one's), as a kubelet probes from its node: not
    through the pod's portal, which would accept a connection the pod itself refuses."""
    context = None
    if tls:
        context = ssl.create_default_context()
        context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
    try:
        reader, writer = await asyncio.wait_for(
            open_connection(namespace, (LOOPBACK, port), ssl=context, server_hostname=LOOPBACK if tls else None), 1.0)
    except (OSError, TimeoutError):
        return False
    try:
        if kind == "tcpSocket":
            return True
        writer.write(f"GET {path} HTTP/1.0\r\nHost: {LOOPBACK}\r\n\r\n".encode())
        line = await asyncio.wait_for(reader.readline(), 1.0)
        parts = line.split()
        return len(parts) > 1 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError):
        return False
    finally:
        writer.close()


class NodeAgent:
    """The kubelet of one fake node: runs, reports, stops and finally deletes its pods."""

    def __init__(self, node: str, api: Api, ports: PortBook, workdir: Path, device_env: Mapping[str, str],
                 host: NodeHost | None = None) -> None:
        """`host`: where the node's pods run in an emulated network (None: on 127.0.0.1)."""
        self.node, self.api, self.ports, self.host = node, api, ports, host
        self.workdir = workdir / node
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.device_env = dict(device_env)
        self.runs: dict[str, PodRun] = {}
        self._stopping: dict[str, asyncio.Task[None]] = {}

    @property
    def pids(self) -> list[int]:
        return [pid for run in self.runs.values() if (pid := run.pid) is not None]

    async def sync(self, pods: list[dict[str, Any]]) -> None:
        """Start new pods bound here, stop those marked for deletion or gone."""
        seen = set()
        for pod in pods:
            metadata = pod["metadata"]
            uid = metadata["uid"]
            seen.add(uid)
            if metadata.get("deletionTimestamp"):
                if uid not in self._stopping:
                    grace = metadata.get("deletionGracePeriodSeconds", 30)
                    self._stopping[uid] = asyncio.create_task(self._terminate(uid, pod, grace))
            elif uid not in self.runs and (pod.get("status") or {}).get("phase") not in TERMINAL:
                self.runs[uid] = PodRun(self, pod)
            elif uid in self.runs:
                self.runs[uid].changed(pod)
        for uid in set(self.runs) - seen - set(self._stopping):  # deleted outright (force, or its node lost)
            grace = self.runs[uid].spec.get("terminationGracePeriodSeconds", 30)
            self._stopping[uid] = asyncio.create_task(self._terminate(uid, None, grace))

    def find(self, name: str) -> PodRun | None:
        return next((run for run in self.runs.values() if run.name == name), None)

    async def evict(self, name: str, message: str = "evicted by the node agent") -> None:
        """Stop the pod's processes and mark it Failed (reason Evicted), as node-pressure eviction does."""
        run = self.find(name)
        if run is not None:
            await run.stop(grace=5)
            await run.fail("Evicted", message)

    async def shutdown(self, *, kill: bool = False, grace: float = 10.0) -> None:
        """Stop every pod (the machine goes away with `kill`, or the stand-in cluster ends)."""
        await asyncio.gather(*(run.stop(grace, kill=kill) for run in self.runs.values()), return_exceptions=True)
        await asyncio.gather(*self._stopping.values(), return_exceptions=True)
        self.runs.clear()

    async def _terminate(self, uid: str, pod: Mapping[str, Any] | None, grace: float) -> None:
        run = self.runs.get(uid)
        try:
            if run is not None:
                await run.stop(grace)
            if pod is not None:
                await self.api.delete(pod_path(pod), grace_seconds=0)
        finally:
            self.runs.pop(uid, None)
            self._stopping.pop(uid, None)
