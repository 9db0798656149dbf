"""Propagation delay for an emulated fleet (the kernel here has no netem): TCP relays that hold
every chunk for its path's one-way latency.

Each relay listens in one namespace and forwards to an address in another (or the same) one.
A chunk read at time t is written out at t + delay; reading goes on meanwhile, so the relay adds
latency without limiting throughput (a queue of deadlines, not a sleep per chunk), up to a bound
on the bytes held, past which it stops reading (back-pressure, as a full TCP window would). The
delay of each direction is looked up by the connecting peer's address, so one relay in front of
a worker delays each upstream by the latency of its own path. A relay with a `target_file` takes
its target port from that file for each new connection, so that `helix up` can move its public
ports to a new front end (connections already open stay with the old one).
`python -m helix_worker.fleet.delayline SPEC READY` runs the relays of a spec file and writes
their bound ports to READY; `start_relays` starts that process.
"""

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from helix_worker.errors import ServingError
from helix_worker.fleet.netns import entered, open_connection
from helix_worker.transport.readyfile import wait_ready_file, write_ready_file

CHUNK = 64 * 1024
_PR_SET_PDEATHSIG = 1
HELD_CHUNKS = 512  # at most ~32 MiB in flight per direction: above any path's bandwidth-delay product here


@dataclass(frozen=True)
class Relay:
    """Listen on `listen` in namespace `listen_ns` and forward to `target` in `target_ns` (None: this
    process's namespace); `delays` maps a peer address to its (to target, back to peer) seconds;
    `target_file`, when set, names the target's port instead (`retarget`), read for each connection."""

    listen: tuple[str, int]
    target: tuple[str, int]
    listen_ns: str | None = None
    target_ns: str | None = None
    delays: dict[str, tuple[float, float]] = field(default_factory=dict)
    target_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"listen": list(self.listen), "target": list(self.target), "listen_ns": self.listen_ns,
                "target_ns": self.target_ns, "delays": {peer: list(d) for peer, d in self.delays.items()},
                "target_file": self.target_file}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Relay":
        return cls((data["listen"][0], int(data["listen"][1])), (data["target"][0], int(data["target"][1])),
                   data["listen_ns"], data["target_ns"],
                   {peer: (float(d[0]), float(d[1])) for peer, d in data["delays"].items()}, data.get("target_file"))

    def current_target(self) -> tuple[str, int]:
        if self.target_file is None:
            return self.target
        return self.target[0], int(json.loads(Path(self.target_file).read_text())["port"])


def retarget(target_file: Path, port: int) -> None:
    """Send the new connections of the relays reading `target_file` to `port` (written whole, never half)."""
    scratch = target_file.with_suffix(".tmp")
    scratch.write_text(json.dumps({"port": port}))
    scratch.replace(target_file)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds after it was read; EOF likewise."""
    loop = asyncio.get_running_loop()
    held: asyncio.Queue[tuple[float, bytes | None]] = asyncio.Queue(HELD_CHUNKS)  # None: the peer reset

    async def read() -> None:
        while True:
            try:
                data: bytes | None = await reader.read(CHUNK)
            except OSError:
                data = None
            await held.put((loop.time() + delay, data))
            if not data:
                return

    async def write() -> None:
        while True:
            due, data = await held.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if data is None:
                writer.transport.abort()
                return
            if not data:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    reading = asyncio.create_task(read())
    try:
        await write()
    finally:
        reading.cancel()


async def serve(relay: Relay) -> asyncio.Server:
    """Start one relay; its server (the bound port is in `sockets`)."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")[0]
        forward, back = relay.delays.get(peer, (0.0, 0.0))
        try:
            target_reader, target_writer = await open_connection(relay.target_ns, relay.current_target(), limit=CHUNK)
        except OSError:
            writer.close()
            return
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pumps = [asyncio.create_task(_pump(reader, target_writer, forward)),
                 asyncio.create_task(_pump(target_reader, writer, back))]
        try:
            await asyncio.gather(*pumps)
        except (OSError, asyncio.CancelledError):  # a peer reset, or the relays stopping: close both ends
            pass
        finally:
            for task in pumps:
                task.cancel()
            for end in (writer, target_writer):
                end.close()

    with entered(relay.listen_ns):
        listener = socket.create_server(relay.listen, reuse_port=False)
    listener.setblocking(False)
    return await asyncio.start_server(handle, sock=listener, limit=CHUNK)


async def serve_all(relays: list[Relay], ready: Path) -> None:
    """Run every relay until SIGTERM; write their bound ports to `ready` once all listen."""
    servers = [await serve(relay) for relay in relays]
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    write_ready_file(ready, {"ports": [s.sockets[0].getsockname()[1] for s in servers], "pid": os.getpid()})
    await stop.wait()
    for server in servers:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), 1.0)


def start_relays(relays: Sequence[Relay], workdir: Path, timeout: float = 30.0) -> tuple[subprocess.Popen[bytes],
                                                                                   list[int]]:
    """Run `relays` in one child process (which dies with this one): the process and their bound ports."""
    spec, ready = workdir / "relays.json", workdir / "relays.ready.json"
    spec.write_text(json.dumps([relay.to_json() for relay in relays], indent=2))
    ready.unlink(missing_ok=True)
    log_path = workdir / "relays.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen([sys.executable, "-m", "helix_worker.fleet.delayline", str(spec), str(ready)],
                                   stdout=log, stderr=subprocess.STDOUT)
    try:
        ports: list[int] = wait_ready_file(ready, process, timeout, "the delay relays")["ports"]
    except ServingError as err:
        stop_relays(process)
        raise ServingError(f"{err}\n--- {log_path} ---\n{log_path.read_text(errors='replace')[-2000:]}") from None
    return process, ports


def stop_relays(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _die_with_parent() -> None:
    """The relays outlive no crashed launcher: SIGTERM when it dies (Linux's PR_SET_PDEATHSIG)."""
    if ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM) != 0 or os.getppid() == 1:
        raise SystemExit("the launcher of the delay relays is gone")


def main(argv: list[str]) -> None:
    spec, ready = Path(argv[0]), Path(argv[1])
    _die_with_parent()
    asyncio.run(serve_all([Relay.from_json(item) for item in json.loads(spec.read_text())], ready))


if __name__ == "__main__":
    main(sys.argv[1:])
